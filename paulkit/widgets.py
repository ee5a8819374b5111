"""The patch explorer: what PAUL's patches look at, and why two people are matched.

Two layers:

- *Explorer data*, pure functions of tensors that unit tests check by hand:
  :func:`patch_neighbours` (the nearest patches in the patch memory, PEDAL's neighbours),
  :func:`patch_similarity` and :func:`match_contributions` (the P x P patch-to-patch matrix
  between a query and a gallery image and each patch's share of their similarity),
  :func:`patch_activation_maps` and :func:`rank1_correct`; :func:`explorer_data` runs a model
  once over the query, gallery and training images and keeps what the views need.
- :class:`PatchExplorer`, the ipywidgets front end: one ``matplotlib.figure.Figure`` per view
  (drawn by the ``paulkit.viz.plot_*`` functions, which update a figure's artists in place),
  shown as PNG bytes in an ``ipywidgets.Image`` carrying the CSS class ``paulkit-view``. Its
  callbacks (:meth:`PatchExplorer.set_query`, ``set_patch``, ``set_model``, ``set_gallery``,
  ``set_filter``) are plain methods: tests call them without a browser.

Paper: docs/paper.md "Network: PatchNet" (patches), "PEDAL" (the memory's neighbours),
"Evaluation" (the descriptor). Taught in: notebooks/08_patch_explorer.ipynb.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import html
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from paulkit import data as D
from paulkit import evaluation, models, utils, viz

__all__ = [
    "Neighbours",
    "patch_neighbours",
    "patch_similarity",
    "match_contributions",
    "patch_activation_maps",
    "patch_features",
    "rank1_correct",
    "ExplorerData",
    "explorer_data",
    "PatchExplorer",
]


# --------------------------------------------------------------------------- explorer data


class Neighbours(NamedTuple):
    """Each query patch's nearest memory slots (:func:`patch_neighbours`).

    Shape:
        indices, distances, similarities: (P, K); row p belongs to patch p.
    """

    indices: torch.Tensor
    distances: torch.Tensor
    similarities: torch.Tensor


def _check_feats(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be one image's patch features (P, D), got {shape}")


def patch_neighbours(
    patch_feats: torch.Tensor,
    bank: torch.Tensor,
    k: int = 5,
    exclude: int | Sequence[int] | None = None,
) -> Neighbours:
    """For each patch of one image, the K nearest slots of that patch in the patch memory.

    Nearest as PEDAL measures it: the squared Euclidean distance
    ``d_j = ||f_p - M[j, p]||^2`` to slot j of the same patch p (docs/paper.md "PEDAL"), so these
    are the patches PEDAL pulls ``f_p`` towards. Ties go to the lower slot index. The cosine
    similarity of each neighbour is returned too (memory slots are moving averages and not
    exactly of unit norm, so the two orders can differ slightly; the distance decides).

    Args:
        patch_feats: the image's P patch features.
        bank: the patch memory (``PatchMemory.bank``), or patch features of N images.
        k: neighbours per patch.
        exclude: slot(s) to leave out, e.g. the image's own slot when it is a training image
            ("other images" in PEDAL).

    Returns:
        :class:`Neighbours` ``(indices, distances, similarities)``.

    Shape:
        patch_feats (P, D); bank (N, P, D) -> each output (P, K).

    Taught in: notebooks/08_patch_explorer.ipynb.
    """
    _check_feats(patch_feats, "patch_feats")
    if not isinstance(bank, torch.Tensor) or bank.dim() != 3 or bank.shape[1:] != patch_feats.shape:
        got = tuple(bank.shape) if isinstance(bank, torch.Tensor) else type(bank).__name__
        raise ValueError(
            f"bank must be (N, P, D) = (N, {patch_feats.shape[0]}, {patch_feats.shape[1]}) "
            f"to match patch_feats, got {got}"
        )
    excluded = [] if exclude is None else [exclude] if isinstance(exclude, int) else list(exclude)
    n = bank.shape[0]
    if any(not 0 <= i < n for i in excluded):
        raise ValueError(f"exclude must hold slot indices in 0..{n - 1}, got {excluded}")
    available = n - len(set(excluded))
    if not 1 <= k <= available:
        raise ValueError(f"k must be in 1..{available} (the slots left to choose from), got {k}")
    f = patch_feats.float()
    m = bank.to(f.device, torch.float32).transpose(0, 1)  # (P, N, D)
    d = (f.pow(2).sum(-1, keepdim=True) - 2 * torch.einsum("pd,pnd->pn", f, m)) + m.pow(2).sum(-1)
    d = d.clamp_min(0.0)
    if excluded:
        d[:, excluded] = float("inf")
    order = torch.sort(d, dim=1, stable=True).indices[:, :k]
    dist = d.gather(1, order)
    picked = m.gather(1, order[..., None].expand(-1, -1, m.shape[-1]))  # (P, K, D)
    sims = F.cosine_similarity(f[:, None, :], picked, dim=-1)
    return Neighbours(order, dist, sims)


def patch_similarity(query_feats: torch.Tensor, gallery_feats: torch.Tensor) -> torch.Tensor:
    """The patch-to-patch cosine similarity matrix of two images.

    Entry (i, j) compares the query's patch i with the gallery image's patch j. The retrieval
    descriptor (docs/paper.md "Evaluation") only ever compares patch i with patch i: its cosine
    similarity is the mean of this matrix's diagonal (:func:`match_contributions`); the
    off-diagonal entries show whether another patch would have matched better (misaligned
    patches).

    Shape:
        query_feats (P, D), gallery_feats (P, D) -> (P, P).

    Taught in: notebooks/08_patch_explorer.ipynb.
    """
    _check_feats(query_feats, "query_feats")
    _check_feats(gallery_feats, "gallery_feats")
    if query_feats.shape != gallery_feats.shape:
        raise ValueError(
            f"query_feats {tuple(query_feats.shape)} and gallery_feats "
            f"{tuple(gallery_feats.shape)} must have the same (P, D): use one model's features"
        )
    q = F.normalize(query_feats.float(), dim=-1)
    g = F.normalize(gallery_feats.float(), dim=-1)
    return q @ g.T


def match_contributions(query_feats: torch.Tensor, gallery_feats: torch.Tensor) -> torch.Tensor:
    """Each patch's share of the descriptors' cosine similarity: ``sim(i, i) / P``.

    The descriptor concatenates P unit-norm patch features, so its norm is sqrt(P) and the
    cosine similarity of two descriptors is the sum of these shares; the cosine distance
    ranked by :func:`paulkit.evaluation.compute_distmat` is ``1 - sum``. The largest shares
    are the patches that drove the match.

    Shape:
        query_feats (P, D), gallery_feats (P, D) -> (P,).

    Taught in: notebooks/08_patch_explorer.ipynb.
    """
    s = patch_similarity(query_feats, gallery_feats)
    return torch.diagonal(s) / s.shape[0]


@torch.no_grad()
def patch_activation_maps(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch activation heat maps over the backbone's feature map.

    For patch p and feature cell (r, c): the cell's weight in the patch's average-pooled
    feature (its bilinear sampling weight, :func:`paulkit.models.patch_pool_weights`) times
    the L2 norm over channels of the backbone map at that cell. It is zero outside the patch
    and shows which cells the patch reads and how strongly they fire; the pooled patch
    feature is the sum over cells of weight x feature vector.

    Args:
        model: a :class:`paulkit.models.PatchNet` (``feature_map`` and ``patch_generator``);
            run in eval mode (its mode is restored).
        x: normalised images, as the network is fed.

    Returns:
        ``(heat, thetas)``.

    Shape:
        x (B, 3, H, W) -> heat (B, P, h, w), thetas (B, P, 2, 3).

    Taught in: notebooks/08_patch_explorer.ipynb.
    """
    was_training = model.training
    model.eval()
    try:
        fmap = model.feature_map(x).float()
        thetas = model.patch_generator(fmap).float()
    finally:
        model.train(was_training)
    h, w = fmap.shape[-2:]
    weights = models.patch_pool_weights(thetas, h, w)
    return weights * fmap.norm(dim=1, keepdim=True), thetas


@torch.no_grad()
def patch_features(
    model: nn.Module,
    records: Sequence[D.ImageRecord],
    height: int,
    width: int,
    device: str | torch.device | None = None,
    batch_size: int = 128,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch features and thetas of every image (test transform, eval mode, no gradients).

    Returns:
        ``(patch_feats, thetas)`` on the CPU, in ``records`` order.

    Shape:
        -> patch_feats (N, P, D), thetas (N, P, 2, 3).
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    loader = DataLoader(
        D.ImageDataset(records, D.transforms.test_transform(height, width)),
        batch_size=batch_size,
        shuffle=False,
    )
    feats, thetas = [], []
    was_training = model.training
    model.eval()
    try:
        from tqdm.auto import tqdm

        for img, *_ in tqdm(loader, desc="patch features", disable=not progress, leave=False):
            out = model(img.to(dev))
            feats.append(out.patch_feats.float().cpu())
            thetas.append(out.thetas.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(thetas)


def rank1_correct(
    distmat: torch.Tensor,
    q_pids: torch.Tensor,
    g_pids: torch.Tensor,
    q_camids: torch.Tensor,
    g_camids: torch.Tensor,
) -> torch.Tensor:
    """Whether each query's first valid gallery item shows its person (rank-1 right).

    Valid as the evaluator counts it: same-identity same-camera items and junk (pid -1) are
    skipped; ties go to the lower gallery index (as :func:`paulkit.evaluation.rank_gallery`).
    A query without any valid item counts as wrong.

    Shape:
        distmat (Q, G); q_pids, q_camids (Q,); g_pids, g_camids (G,) -> (Q,) bool.
    """
    d = torch.as_tensor(distmat).float().clone()
    qp, qc = torch.as_tensor(q_pids).long(), torch.as_tensor(q_camids).long()
    gp, gc = torch.as_tensor(g_pids).long(), torch.as_tensor(g_camids).long()
    if d.shape != (len(qp), len(gp)) or len(qc) != len(qp) or len(gc) != len(gp):
        raise ValueError(
            f"distmat {tuple(d.shape)} must be (Q, G) = ({len(qp)}, {len(gp)}), with "
            "q_camids/g_camids as long as q_pids/g_pids"
        )
    invalid = ((qp[:, None] == gp[None]) & (qc[:, None] == gc[None])) | (gp[None] == -1)
    d[invalid] = float("inf")
    best = d.argmin(1)  # the first minimum: the lower index wins ties
    has_valid = (~invalid).any(1)
    return (gp[best] == qp) & has_valid


@dataclasses.dataclass
class ExplorerData:
    """One model's view of a target data set: what the explorer shows, computed once.

    The query and gallery passes run when it is built; the training images are read only
    when a view needs them: a model without a patch memory gets its bank from one pass over
    them on first use, and an adapted model (whose memory is the bank) computes the thetas of
    only the neighbours it shows.

    Attributes:
        name: the model's name in the explorer (e.g. "direct transfer", "PAUL").
        model: the network (used again for heat maps and training images on demand).
        query, gallery, train: the records.
        height, width: the network's input size.
        feature_size: (h, w) of the backbone's map.
        query_feats, gallery_feats: (Q, P, D), (G, P, D) patch features.
        query_thetas, gallery_thetas: (Q, P, 2, 3), (G, P, 2, 3).
        distmat: (Q, G) cosine distances of the descriptors.
        rank1: (Q,) bool, rank-1 right per query.
        bank: (N, P, D) the patch memory, or None until :meth:`memory_bank` computes the
            training images' patch features (what :func:`paulkit.train.init_memories` would
            fill a memory with).
        bank_source: ``"patch memory"`` or ``"patch features"``.
        train_thetas: (N, P, 2, 3) when the training pass ran, else None.
    """

    name: str
    model: nn.Module
    query: list[D.ImageRecord]
    gallery: list[D.ImageRecord]
    train: list[D.ImageRecord]
    height: int
    width: int
    feature_size: tuple[int, int]
    query_feats: torch.Tensor
    query_thetas: torch.Tensor
    gallery_feats: torch.Tensor
    gallery_thetas: torch.Tensor
    distmat: torch.Tensor
    rank1: torch.Tensor
    bank: torch.Tensor | None = None
    bank_source: str = "patch features"
    train_thetas: torch.Tensor | None = None
    batch_size: int = 128
    _heat: dict[int, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    _thetas: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict, repr=False)
    _cache: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def _features(self, records: Sequence[D.ImageRecord]) -> tuple[torch.Tensor, torch.Tensor]:
        return patch_features(
            self.model, records, self.height, self.width, batch_size=self.batch_size
        )

    def memory_bank(self) -> torch.Tensor:
        """The (N, P, D) bank the neighbours come from (computed on first use)."""
        if self.bank is None:
            self.bank, self.train_thetas = self._features(self.train)
            self.bank_source = "patch features"
        return self.bank

    def thetas_of_train(self, indices: Sequence[int]) -> torch.Tensor:
        """The (K, P, 2, 3) thetas of training images ``indices``."""
        idx = [int(i) for i in indices]
        if self.train_thetas is not None:
            return self.train_thetas[idx]
        missing = sorted({i for i in idx if i not in self._thetas})
        if missing:
            _, th = self._features([self.train[i] for i in missing])
            self._thetas.update(zip(missing, th))
        return torch.stack([self._thetas[i] for i in idx])

    def heat(self, q: int) -> np.ndarray:
        """Query ``q``'s (P, h, w) activation maps (:func:`patch_activation_maps`), cached."""
        if q not in self._heat:
            tf = D.transforms.test_transform(self.height, self.width)
            x = tf(D.load_image(self.query[q].path))[None]
            dev = next(self.model.parameters()).device
            heat, _ = patch_activation_maps(self.model, x.to(dev))
            self._heat[q] = heat[0].cpu().numpy()
        return self._heat[q]

    def ranking(self, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All valid gallery items of query ``q`` in rank order: (indices, distances, matches)."""
        rec = self.query[q]
        if "labels" not in self._cache:
            self._cache["labels"] = (
                torch.tensor([r.pid for r in self.gallery]),
                torch.tensor([r.camid for r in self.gallery]),
            )
        g_pids, g_camids = self._cache["labels"]
        return evaluation.rank_gallery(
            self.distmat[q], rec.pid, rec.camid, g_pids, g_camids, k=len(self.gallery)
        )


def explorer_data(
    model: nn.Module,
    query: Sequence[D.ImageRecord],
    gallery: Sequence[D.ImageRecord],
    train: Sequence[D.ImageRecord],
    height: int,
    width: int,
    device: str | torch.device | None = None,
    name: str = "model",
    bank: torch.Tensor | None = None,
    batch_size: int = 128,
    progress: bool = False,
) -> ExplorerData:
    """Run ``model`` over the query and gallery images for the explorer.

    Args:
        model: a PatchNet. An adapted model's ``patch_memory`` (set by
            :func:`paulkit.train.adapt` and :func:`paulkit.train.load_model`) is used as the
            bank when it has one slot per training image; otherwise the bank is the training
            images' patch features, computed when first needed.
        query, gallery, train: the target's records (``train`` in the memory's order:
            ``paulkit.train.target_train(cfg, target)``).
        height, width: the network's input size (``cfg.data.height``, ``cfg.data.width``).
        device: where the model runs; None: where its parameters are.
        name: the model's name in the explorer.
        bank: the (N, P, D) patch memory to search, overriding the model's.
        batch_size, progress: for the feature passes.

    Taught in: notebooks/08_patch_explorer.ipynb.
    """
    for arg, recs in (("query", query), ("gallery", gallery), ("train", train)):
        if len(recs) == 0:
            raise ValueError(f"{arg} is empty; pass the target's {arg} records")
    dev = utils.select_device(device) if device is not None else next(model.parameters()).device
    model = model.to(dev)
    run = functools.partial(
        patch_features,
        model,
        height=height,
        width=width,
        device=dev,
        batch_size=batch_size,
        progress=progress,
    )
    qf, qt = run(list(query))
    gf, gt = run(list(gallery))
    with torch.no_grad():
        was_training = model.training
        model.eval()
        fmap = model.feature_map(torch.zeros(1, 3, height, width, device=dev))
        model.train(was_training)
    want = (len(train), *qf.shape[1:])
    if bank is None:
        memory = getattr(model, "patch_memory", None)
        if memory is not None and tuple(memory.bank.shape) == want:
            bank = memory.bank
    elif tuple(bank.shape) != want:
        raise ValueError(
            f"bank must be (N, P, D) = {want} (one slot per training image), "
            f"got {tuple(bank.shape)}"
        )
    distmat = evaluation.compute_distmat(qf.flatten(1), gf.flatten(1), metric="cosine").cpu()
    rank1 = rank1_correct(
        distmat,
        torch.tensor([r.pid for r in query]),
        torch.tensor([r.pid for r in gallery]),
        torch.tensor([r.camid for r in query]),
        torch.tensor([r.camid for r in gallery]),
    )
    return ExplorerData(
        name=name,
        model=model,
        query=list(query),
        gallery=list(gallery),
        train=list(train),
        height=height,
        width=width,
        feature_size=(int(fmap.shape[-2]), int(fmap.shape[-1])),
        query_feats=qf,
        query_thetas=qt,
        gallery_feats=gf,
        gallery_thetas=gt,
        distmat=distmat,
        rank1=rank1,
        bank=None if bank is None else bank.detach().float().cpu(),
        bank_source="patch features" if bank is None else "patch memory",
        batch_size=batch_size,
    )


@functools.lru_cache(maxsize=1024)
def _display_image(path: str, height: int, width: int) -> np.ndarray:
    # The image as the network sees it (resized to its input aspect), uint8 (H, W, 3).
    img = D.load_image(path).resize((width, height), resample=2)  # 2: bilinear
    return np.asarray(img, dtype=np.uint8)


# --------------------------------------------------------------------------- the widget


VIEWS = ("patches", "neighbours", "ranking", "match")


class PatchExplorer:
    """Interactive explorer of one or more models' patches on a target data set.

    Views (each one ``matplotlib.figure.Figure``, shown as PNG in an ``ipywidgets.Image``
    with CSS classes ``paulkit-view`` and ``paulkit-<view>``):

    - ``patches``: the query with its P patch boxes and each patch's activation heat map;
    - ``neighbours``: the selected patch's nearest patches in the patch memory;
    - ``ranking``: the query's top-K gallery images (green: same person);
    - ``match``: the P x P patch similarity matrix with the chosen gallery image, and each
      patch's share of the similarity.

    Controls: a query slider (over all queries, or the subset a filter picks, e.g. the
    queries one model gets right and the other wrong), the model, the patch, the gallery
    image. The callbacks are plain methods; a change redraws only the views it affects, by
    updating their artists in place. Errors inside a control's callback are shown in the
    status line (class ``paulkit-status``) instead of being lost in the kernel's log.

    Args:
        data: one :class:`ExplorerData`, or several by name (the same data set each).
        top_k: gallery images in the ranked list.
        num_neighbours: memory neighbours shown per patch.
        query: the query (index into the query set) shown first.
        patch: the patch shown first (0-based).
        model: the model shown first (default: the first in ``data``).

    Taught in: notebooks/08_patch_explorer.ipynb.
    """

    def __init__(
        self,
        data: ExplorerData | Mapping[str, ExplorerData],
        top_k: int = 8,
        num_neighbours: int = 6,
        query: int = 0,
        patch: int = 0,
        model: str | None = None,
    ) -> None:
        import ipywidgets as W
        from ipywidgets.widgets.widget import _instances

        before = set(_instances)
        self.data: dict[str, ExplorerData] = (
            {data.name: data} if isinstance(data, ExplorerData) else dict(data)
        )
        if not self.data:
            raise ValueError("data is empty; pass at least one ExplorerData")
        first = next(iter(self.data.values()))
        for d in self.data.values():
            if (len(d.query), len(d.gallery), len(d.train)) != (
                len(first.query),
                len(first.gallery),
                len(first.train),
            ) or d.query_feats.shape[1] != first.query_feats.shape[1]:
                raise ValueError(
                    "every ExplorerData must cover the same query/gallery/train records with "
                    "the same number of patches; build them from one data set"
                )
        if top_k < 1 or num_neighbours < 1:
            raise ValueError(
                f"top_k and num_neighbours must be >= 1, got {top_k}, {num_neighbours}"
            )
        self.num_patches = int(first.query_feats.shape[1])
        self.top_k = min(top_k, len(first.gallery))
        self.num_neighbours = min(num_neighbours, len(first.train))
        self.model_name = model if model is not None else next(iter(self.data))
        if self.model_name not in self.data:
            raise ValueError(f"model must be one of {', '.join(self.data)}, got {model!r}")
        self.filters = self._filters()
        self.filter = "all"
        self.subset = self.filters["all"][1]
        self.query = 0
        self.patch = 0
        self.rank_pos = 0
        self._ranking: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._quiet_depth = 0
        self.figures: dict[str, Any] = {}
        self.render_count = dict.fromkeys(VIEWS, 0)

        # At the figure's own size: a VBox would otherwise stretch (and blur) the images.
        self.images = {
            v: W.Image(format="png", layout=W.Layout(align_self="flex-start")) for v in VIEWS
        }
        for v, im in self.images.items():
            im.add_class("paulkit-view")
            im.add_class(f"paulkit-{v}")
        self.status = W.HTML()
        self.status.add_class("paulkit-status")
        self.query_slider = W.IntSlider(
            min=0,
            max=len(self.subset) - 1,
            description="query",
            continuous_update=False,
            layout=W.Layout(width="420px"),
        )
        self.query_slider.add_class("paulkit-query")
        self.filter_dropdown = W.Dropdown(
            options=[(label, key) for key, (label, _) in self.filters.items()],
            value="all",
            description="show",
            layout=W.Layout(width="360px"),
        )
        self.filter_dropdown.add_class("paulkit-filter")
        self.model_buttons = W.ToggleButtons(
            options=list(self.data), value=self.model_name, description="model"
        )
        self.model_buttons.add_class("paulkit-model")
        self.model_buttons.layout.display = None if len(self.data) > 1 else "none"
        self.patch_buttons = W.ToggleButtons(
            options=[(str(p + 1), p) for p in range(self.num_patches)],
            value=0,
            description="patch",
            style={"button_width": "36px"},
        )
        self.patch_buttons.add_class("paulkit-patch")
        self.gallery_dropdown = W.Dropdown(description="gallery", layout=W.Layout(width="420px"))
        self.gallery_dropdown.add_class("paulkit-gallery")

        self.query_slider.observe(self._on("set_position"), names="value")
        self.filter_dropdown.observe(self._on("set_filter"), names="value")
        self.model_buttons.observe(self._on("set_model"), names="value")
        self.patch_buttons.observe(self._on("set_patch"), names="value")
        self.gallery_dropdown.observe(self._on("set_gallery"), names="value")

        self.widget = W.VBox(
            [
                self.status,
                W.HBox([self.query_slider, self.filter_dropdown]),
                self.model_buttons,
                self.patch_buttons,
                self.images["patches"],
                self.images["neighbours"],
                self.gallery_dropdown,
                self.images["ranking"],
                self.images["match"],
            ]
        )
        self.widget.add_class("paulkit-explorer")
        self._owned = [w for key, w in list(_instances.items()) if key not in before]
        self.patch = self._check_patch(patch)
        with self._quiet():
            self.patch_buttons.value = self.patch
        self.set_query(query)

    # ----------------------------------------------------------------- construction helpers

    @classmethod
    def from_models(
        cls,
        models_by_name: Mapping[str, nn.Module],
        cfg: Any,
        device: str | torch.device | None = None,
        progress: bool = False,
        **kwargs: Any,
    ) -> PatchExplorer:
        """Build the explorer for ``cfg``'s target data set from named models.

        E.g. ``{"direct transfer": train.adaptation_model(pretrained, cfg), "PAUL": adapted}``.
        """
        from paulkit import train

        target = train.target_dataset(cfg)
        records = train.target_train(cfg, target)
        data = {
            name: explorer_data(
                m,
                target.query,
                target.gallery,
                records,
                cfg.data.height,
                cfg.data.width,
                device=device,
                name=name,
                progress=progress,
            )
            for name, m in models_by_name.items()
        }
        return cls(data, **kwargs)

    def _filters(self) -> dict[str, tuple[str, np.ndarray]]:
        names = list(self.data)
        r = [self.data[n].rank1.numpy() for n in names]
        q = len(r[0])
        out = {"all": (f"all queries ({q})", np.arange(q))}
        if len(names) == 1:
            cand = {
                "right": ("rank-1 right ({})", r[0]),
                "wrong": ("rank-1 wrong ({})", ~r[0]),
            }
        else:
            a, b = names[0], names[1]
            ra, rb = r[0], r[1]
            cand = {
                "b-only": (f"{b} right, {a} wrong ({{}})", rb & ~ra),
                "a-only": (f"{a} right, {b} wrong ({{}})", ra & ~rb),
                "both-wrong": ("both wrong ({})", ~ra & ~rb),
                "both-right": ("both right ({})", ra & rb),
            }
        for key, (label, mask) in cand.items():
            idx = np.flatnonzero(mask)
            if len(idx):
                out[key] = (label.format(len(idx)), idx)
        return out

    # ----------------------------------------------------------------- callbacks

    @property
    def current(self) -> ExplorerData:
        """The selected model's data."""
        return self.data[self.model_name]

    def set_query(self, index: int) -> None:
        """Show query ``index`` (into the whole query set); leaves a filter that excludes it."""
        q = int(index)
        if not 0 <= q < len(self.current.query):
            raise ValueError(f"index must be in 0..{len(self.current.query) - 1}, got {index}")
        if q not in self.subset:
            self._apply_filter("all")
        self.query = q
        with self._quiet():
            self.query_slider.value = int(np.flatnonzero(self.subset == q)[0])
        self._new_query()

    def set_position(self, pos: int) -> None:
        """Show the query at slider position ``pos`` of the current filter's subset."""
        pos = int(pos)
        if not 0 <= pos < len(self.subset):
            raise ValueError(f"pos must be in 0..{len(self.subset) - 1}, got {pos}")
        self.query = int(self.subset[pos])
        with self._quiet():
            self.query_slider.value = pos
        self._new_query()

    def set_filter(self, key: str) -> None:
        """Restrict the query slider to a subset (see ``self.filters``) and show its first."""
        if key not in self.filters:
            raise ValueError(f"key must be one of {', '.join(self.filters)}, got {key!r}")
        self._apply_filter(key)
        self.set_position(0)

    def set_model(self, name: str) -> None:
        """Show the model ``name`` (one of the explorer's models)."""
        if name not in self.data:
            raise ValueError(f"name must be one of {', '.join(self.data)}, got {name!r}")
        self.model_name = name
        with self._quiet():
            self.model_buttons.value = name
        self._new_query()

    def set_patch(self, patch: int) -> None:
        """Select patch ``patch`` (0-based): its box, neighbours and matrix row are shown."""
        self.patch = self._check_patch(patch)
        with self._quiet():
            self.patch_buttons.value = self.patch
        self._update_status()
        self._render("patches", "neighbours", "match")

    def set_gallery(self, rank_pos: int) -> None:
        """Compare the query with the gallery image at valid rank ``rank_pos`` (0-based)."""
        idx, _, _ = self._rank()
        pos = int(rank_pos)
        if not 0 <= pos < len(idx):
            raise ValueError(f"rank_pos must be in 0..{len(idx) - 1}, got {rank_pos}")
        self.rank_pos = pos
        with self._quiet():
            self.gallery_dropdown.value = pos
        self._render("ranking", "match")

    # ----------------------------------------------------------------- internals

    def _check_patch(self, patch: int) -> int:
        p = int(patch)
        if not 0 <= p < self.num_patches:
            raise ValueError(f"patch must be in 0..{self.num_patches - 1}, got {patch}")
        return p

    def _apply_filter(self, key: str) -> None:
        self.filter = key
        self.subset = self.filters[key][1]
        with self._quiet():
            self.filter_dropdown.value = key
            self.query_slider.value = 0
            self.query_slider.max = len(self.subset) - 1

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        # Control values set by a callback must not fire their own callbacks again.
        self._quiet_depth += 1
        try:
            yield
        finally:
            self._quiet_depth -= 1

    def _on(self, method: str) -> Callable[[dict], None]:
        def handler(change: dict) -> None:
            if self._quiet_depth:
                return
            try:
                getattr(self, method)(change["new"])
            except Exception:
                self.status.value = (
                    '<pre class="paulkit-error" style="color:#b00">'
                    f"{html.escape(traceback.format_exc())}</pre>"
                )

        return handler

    def _rank(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._ranking is None:
            self._ranking = self.current.ranking(self.query)
        return self._ranking

    def _new_query(self) -> None:
        self._ranking = None
        idx, _, match = self._rank()
        gal = self.current.gallery
        options = []
        for pos in range(min(self.top_k, len(idx))):
            g = gal[idx[pos]]
            mark = "\u2713" if match[pos] else "\u2717"
            options.append((f"rank {pos + 1}: pid {g.pid}, camid {g.camid} {mark}", pos))
        true = np.flatnonzero(match)
        if len(true) and true[0] >= self.top_k:
            g = gal[idx[true[0]]]
            options.append(
                (f"first true match, rank {true[0] + 1}: pid {g.pid} \u2713", int(true[0]))
            )
        self.rank_pos = 0
        with self._quiet():
            self.gallery_dropdown.options = options
            self.gallery_dropdown.value = 0
        self._update_status()
        self._render(*VIEWS)

    def _update_status(self) -> None:
        rec = self.current.query[self.query]
        right = " \u00b7 ".join(
            f"{name}: rank-1 {'right' if bool(d.rank1[self.query]) else 'wrong'}"
            for name, d in self.data.items()
        )
        pos = int(self.query_slider.value)
        self.status.value = (
            f"<b>query {self.query}</b> ({pos + 1} of {len(self.subset)} shown): "
            f"pid {rec.pid}, camid {rec.camid} \u00b7 {right} \u00b7 patch {self.patch + 1}"
        )

    def _img(self, rec: D.ImageRecord) -> np.ndarray:
        d = self.current
        h = max(128, d.height)
        w = max(1, round(h * d.width / d.height))
        return _display_image(rec.path, h, w)

    def _draw(self, view: str, fig: Any) -> Any:
        d, q, p = self.current, self.query, self.patch
        qimg = self._img(d.query[q])
        rec = d.query[q]
        if view == "patches":
            return viz.plot_patch_heatmaps(
                qimg,
                d.query_thetas[q],
                d.heat(q),
                highlight=p,
                title=f"{d.name}: query {q} (pid {rec.pid}, camid {rec.camid})",
                fig=fig,
            )
        if view == "neighbours":
            nb = patch_neighbours(d.query_feats[q], d.memory_bank(), k=self.num_neighbours)
            idx = nb.indices[p].tolist()
            return viz.plot_patch_neighbours(
                qimg,
                d.query_thetas[q],
                [self._img(d.train[i]) for i in idx],
                d.thetas_of_train(idx),
                nb.similarities[p].numpy(),
                patch=p,
                map_size=d.feature_size,
                labels=[f"#{i} \u00b7 camid {d.train[i].camid}" for i in idx],
                title=f"{d.name}: nearest patches in the {d.bank_source} "
                f"({len(d.train)} training images, no labels)",
                fig=fig,
            )
        idx, dist, match = self._rank()
        k = min(self.top_k, len(idx))
        if view == "ranking":
            return viz.plot_ranking(
                qimg,
                [self._img(d.gallery[i]) for i in idx[:k]],
                dist[:k],
                match[:k],
                selected=self.rank_pos if self.rank_pos < k else None,
                query_title=f"query {q}\npid {rec.pid}, camid {rec.camid}",
                labels=[f"pid {d.gallery[i].pid}" for i in idx[:k]],
                title=f"{d.name}: top {k} of {len(idx)} valid gallery images (cosine distance)",
                fig=fig,
            )
        g = int(idx[self.rank_pos])
        sim = patch_similarity(d.query_feats[q], d.gallery_feats[g])
        share = float(torch.diagonal(sim).sum()) / len(sim)
        grec = d.gallery[g]
        return viz.plot_patch_match(
            qimg,
            self._img(grec),
            d.query_thetas[q],
            d.gallery_thetas[g],
            sim,
            map_size=d.feature_size,
            highlight=p,
            title=f"{d.name}: query {q} vs rank {self.rank_pos + 1} (pid {grec.pid}, "
            f"{'same' if grec.pid == rec.pid else 'other'} person): similarity {share:.3f}",
            fig=fig,
        )

    def _render(self, *views: str) -> None:
        for v in views:
            self.figures[v] = self._draw(v, self.figures.get(v))
            self.images[v].value = viz.figure_png(self.figures[v])
            self.render_count[v] += 1

    # ----------------------------------------------------------------- display

    def png(self, view: str) -> bytes:
        """The PNG bytes the view shows now."""
        if view not in self.images:
            raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
        return bytes(self.images[view].value)

    def show_static(self, format: str = "jpeg") -> None:
        """Display every view as a plain image: it survives HTML export and nbval.

        Args:
            format: ``"jpeg"`` (default: a fraction of the PNG's size for photographs, which
                keeps committed notebooks small) or ``"png"``.
        """
        import io

        from IPython.display import Image, Markdown, display

        if format not in ("jpeg", "png"):
            raise ValueError(f"format must be 'jpeg' or 'png', got {format!r}")
        for v in VIEWS:
            if format == "png":
                data = self.png(v)
            else:
                buf = io.BytesIO()
                fig = self.figures[v]
                fig.savefig(buf, format="jpeg", dpi=fig.dpi, pil_kwargs={"quality": 85})
                data = buf.getvalue()
            display(Markdown(f"**{v}**"), Image(data=data, format=format))

    def close(self) -> None:
        """Close every widget this explorer made (layouts and styles too) and release the
        figures; call it before building a new explorer in the same kernel."""
        for f in self.figures.values():
            f.clear()
        self.figures.clear()
        for w in self._owned:
            w.close()
        self._owned = []

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):  # what a viewer without a kernel shows instead
            names = ", ".join(self.data)
            bundle["text/plain"] = (
                f"PatchExplorer ({names}): run the notebook in Jupyter to use it; "
                "explorer.show_static() draws its views as images."
            )
        return bundle
