"""The patch explorer's ipywidgets wiring: :class:`PatchExplorer`.

One ``matplotlib.figure.Figure`` per view (drawn by :mod:`paulkit.explorer.figures`, which
updates a figure's artists in place), shown as PNG bytes in an ``ipywidgets.Image`` carrying
the CSS class ``paulkit-view``. Its callbacks (:meth:`PatchExplorer.set_query`, ``set_patch``,
``set_model``, ``set_gallery``, ``set_filter``) are plain methods: tests call them without a
browser. It keeps a reference to every widget it makes, so :meth:`PatchExplorer.close`
releases exactly those.

Taught in: notebooks/08_patch_explorer.ipynb.
"""

from __future__ import annotations

import contextlib
import functools
import html
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from paulkit import data as D
from paulkit.explorer import figures
from paulkit.explorer.data import ExplorerData, explorer_data, patch_neighbours, patch_similarity

__all__ = ["VIEWS", "PatchExplorer"]


@functools.lru_cache(maxsize=1024)
def _display_image(path: str, height: int, width: int) -> np.ndarray:
    # The image as the network sees it (resized to its input aspect), uint8 (H, W, 3).
    img = D.load_image(path).resize((width, height), resample=2)  # 2: bilinear
    return np.asarray(img, dtype=np.uint8)


VIEWS = ("patches", "neighbours", "ranking", "match")


def _with_parts(controls: Sequence[Any]) -> list[Any]:
    """The widgets and the Layout and Style widgets each holds (widgets of their own)."""
    import ipywidgets as W

    out = []
    for w in controls:
        out.append(w)
        out.extend(
            part
            for part in (getattr(w, "layout", None), getattr(w, "style", None))
            if isinstance(part, W.Widget)
        )
    return out


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

        row = W.HBox([self.query_slider, self.filter_dropdown])
        self.widget = W.VBox(
            [
                self.status,
                row,
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
        # Every widget made above, with the Layout and Style widgets each one made: what
        # close() releases (ipywidgets keeps a widget alive until it is closed).
        controls = [
            *self.images.values(),
            self.status,
            self.query_slider,
            self.filter_dropdown,
            self.model_buttons,
            self.patch_buttons,
            self.gallery_dropdown,
            row,
            self.widget,
        ]
        self._owned = _with_parts(controls)
        self.patch = self._check_patch(patch)
        with self._quiet():
            self.patch_buttons.value = self.patch
        self.set_query(query)

    # ----------------------------------------------------------------- construction helpers

    @classmethod
    def from_models(
        cls,
        models_by_name: Mapping[str, nn.Module],
        query: Sequence[D.ImageRecord],
        gallery: Sequence[D.ImageRecord],
        train: Sequence[D.ImageRecord],
        height: int,
        width: int,
        device: str | torch.device | None = None,
        progress: bool = False,
        **kwargs: Any,
    ) -> PatchExplorer:
        """Build the explorer for one target data set from named models.

        The caller reads the data set and builds the models, e.g.
        ``{"direct transfer": train.adaptation_model(pretrained, cfg), "PAUL": adapted}``
        with ``target = train.target_dataset(cfg)``, ``train=train.target_train(cfg, target)``
        (the patch memory's order) and ``cfg.data.height``, ``cfg.data.width``; the
        arguments are those of :func:`paulkit.explorer.explorer_data`, ``kwargs`` those of
        :class:`PatchExplorer`.
        """
        data = {
            name: explorer_data(
                m,
                query,
                gallery,
                train,
                height,
                width,
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
            return figures.plot_patch_heatmaps(
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
            return figures.plot_patch_neighbours(
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
            return figures.plot_ranking(
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
        return figures.plot_patch_match(
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
            self.images[v].value = figures.figure_png(self.figures[v])
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
