"""The patch explorer's data: the tensors its views show, as pure functions of tensors.

:func:`patch_neighbours` (the nearest patches in the patch memory, PEDAL's neighbours),
:func:`patch_similarity` and :func:`match_contributions` (the P x P patch-to-patch matrix
between a query and a gallery image and each patch's share of their similarity),
:func:`patch_activation_maps`, :func:`patch_features` and :func:`rank1_correct`; unit tests
check them by hand. :func:`explorer_data` runs a model once over the query, gallery and
training images it is given and keeps what the views need (:class:`ExplorerData`).

Nothing here trains or reads a configuration: the models and records come in as arguments.

Paper: docs/paper.md "Network: PatchNet" (patches), "PEDAL" (the memory's neighbours),
"Evaluation" (the descriptor). Taught in: notebooks/08_patch_explorer.ipynb.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from paulkit import data as D
from paulkit import evaluation, models, runtime

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
]


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
    dev = runtime.select_device(device) if device is not None else next(model.parameters()).device
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
