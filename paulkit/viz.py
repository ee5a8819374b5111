"""Plots for the notebooks. Every function returns a matplotlib Figure and never calls
``plt.show()``. The patch explorer's figures are in ``paulkit.explorer.figures``.

Importing this module (``import paulkit`` does) sets the series' figure style once, for a
projector: readable font sizes (:data:`FIGURE_STYLE`) and, inside a Jupyter kernel, inline
figures as SVG (vector: sharp at any size, and smaller than a PNG for plots). Figures of
photographs are made as :class:`PhotoFigure` and shown as JPEG instead, since an SVG or PNG
of photos is several times larger; that keeps the committed notebooks small.

Taught in: notebooks/02_patchnet.ipynb (patches), notebooks/07_evaluation.ipynb (ranked
lists, CMC curves, training histories), and the notebooks that use each plot.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Polygon
from matplotlib.ticker import MaxNLocator
from PIL import Image

from paulkit import evaluation

__all__ = [
    "FIGURE_STYLE",
    "PhotoFigure",
    "use_figure_style",
    "to_rgb",
    "patch_corners",
    "plot_patches",
    "select_queries",
    "plot_ranked_lists",
    "plot_cmc",
    "plot_history",
    "plot_results",
]

#: Figure defaults for the whole series: sizes readable from the back of a room at the
#: notebooks' 6-10 inch wide figures; SVG text stays text (small files, selectable).
FIGURE_STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 12,
    "svg.fonttype": "none",
    "svg.hashsalt": "paulkit",
}
SMALL = 9  # the smallest text a figure here uses (image captions in dense grids)


class PhotoFigure(Figure):
    """A figure made of photographs (image grids, ranked lists): shown inline as a JPEG
    (quality 75, PIL's default) at the figure's dpi, which is at least the photos' own resolution in this
    series' figures. Use it as ``Figure`` or ``plt.subplots(..., FigureClass=viz.PhotoFigure)``."""


def _photo_jpeg(fig: Figure):
    from IPython.core.pylabtools import print_figure

    data = print_figure(fig, fmt="jpeg", pil_kwargs={"quality": 75})
    return None if data is None else base64.b64encode(data).decode("ascii")


def use_figure_style(inline_format: str = "svg") -> None:
    """Apply :data:`FIGURE_STYLE` and, inside a Jupyter kernel, show :class:`PhotoFigure` as
    JPEG and, where a notebook has not chosen its inline format itself, other figures as
    ``inline_format`` ("svg", or "retina" for a PNG at twice the pixels). Called once on import."""
    mpl.rcParams.update(FIGURE_STYLE)
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import InlineBackend
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return
    backend = InlineBackend.instance()
    if set(backend.figure_formats) == {"png"}:  # leave a notebook's own choice (e.g. jpeg)
        backend.figure_formats = {inline_format}
    formatters = shell.display_formatter.formatters
    for mime in ("image/png", "image/svg+xml", "application/pdf"):
        formatters[mime].for_type(PhotoFigure, lambda fig: None)
    formatters["image/jpeg"].for_type(PhotoFigure, _photo_jpeg)


use_figure_style()

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
_IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def to_rgb(image) -> np.ndarray:
    """An image ready for ``imshow``: (H, W, 3) floats in 0..1.

    Accepts a (3, H, W) ImageNet-normalised tensor (undoes the normalisation) or an
    (H, W, 3) array (uint8 or 0..1).
    """
    if isinstance(image, torch.Tensor):
        arr = image.detach().float().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] == 3:
            arr = arr.transpose(1, 2, 0) * _IMAGENET_STD + _IMAGENET_MEAN
        return np.clip(arr, 0.0, 1.0)
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr, 0.0, 1.0)


_to_rgb = to_rgb  # the name other plots here use


def patch_corners(
    thetas: torch.Tensor,
    image_size: tuple[int, int],
    map_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Where each patch samples, as the four corners of its region in image coordinates.

    The corners of the output grid ((-1, -1), (1, -1), (1, 1), (-1, 1)) are mapped through
    theta into the feature map (``align_corners=True``: -1 and 1 are the centres of the
    first and last cells), then into ``imshow`` coordinates of the image.

    Args:
        thetas: affine matrices, as :class:`paulkit.models.PatchNetOutput` ``.thetas``.
        image_size: (H, W) of the image drawn.
        map_size: (h, w) of the feature map sampled; None: the image's own size.

    Shape:
        - thetas: (..., 2, 3)
        - output: (..., 4, 2) as (x, y) pairs
    """
    height, width = image_size
    h, w = map_size if map_size is not None else image_size
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])
    g = torch.einsum("ck,...jk->...cj", corners, thetas.detach().float().cpu())
    cell_x = (g[..., 0] + 1) / 2 * (w - 1)
    cell_y = (g[..., 1] + 1) / 2 * (h - 1)
    x = (cell_x + 0.5) * (width / w) - 0.5
    y = (cell_y + 0.5) * (height / h) - 0.5
    return torch.stack([x, y], dim=-1)


def plot_patches(
    images,
    thetas: torch.Tensor,
    map_size: tuple[int, int] | None = None,
    titles: list[str] | None = None,
    fill: bool = True,
    size: float = 1.6,
) -> Figure:
    """Images side by side with the region each patch samples drawn over them.

    Args:
        images: (B, 3, H, W) ImageNet-normalised tensor, or a list of images.
        thetas: (B, P, 2, 3) (or (P, 2, 3) for one image).
        map_size: the feature map's (h, w), to place the regions exactly.
        titles: one title per image.
        fill: shade the regions (else outlines only).
        size: inches per panel's width.
    """
    if isinstance(images, torch.Tensor) and images.dim() == 3:
        images = images.unsqueeze(0)
    if thetas.dim() == 3:
        thetas = thetas.unsqueeze(0)
    imgs = [to_rgb(im) for im in images]
    if len(imgs) != thetas.shape[0]:
        raise ValueError(f"thetas has {thetas.shape[0]} images' patches for {len(imgs)} images")
    height, width = imgs[0].shape[:2]
    n, p = len(imgs), thetas.shape[1]
    fig = PhotoFigure(figsize=(size * n, size * height / width))
    axes = fig.subplots(1, n, squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(p)]
    corners = patch_corners(thetas, (height, width), map_size).numpy()
    for i, (ax, img) in enumerate(zip(axes, imgs)):
        ax.imshow(img)
        for j in range(p):
            ax.add_patch(
                Polygon(
                    corners[i, j],
                    closed=True,
                    facecolor=colors[j] if fill else "none",
                    alpha=0.35 if fill else 1.0,
                    edgecolor=colors[j],
                    linewidth=1.2,
                )
            )
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[i], fontsize=SMALL)
    fig.tight_layout(pad=0.2)
    return fig


# --------------------------------------------------------------------------- retrieval

MATCH, MISS, QUERY = "#1a9850", "#d73027", "#4575b4"  # green, red, blue borders
_MODE_TITLES = {
    "best": "best queries (highest AP)",
    "worst": "worst queries (lowest AP)",
    "random": "random queries",
}


def _load_image(item: Any) -> np.ndarray:
    """A path or PIL image (read as RGB), else whatever :func:`to_rgb` takes."""
    if isinstance(item, (str, Path)):
        with Image.open(item) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(item, Image.Image):
        return np.asarray(item.convert("RGB"))
    return to_rgb(item)


def _frame(ax, color: str, width: float = 3.0) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(width)


def select_queries(
    result: evaluation.RankResult, num: int = 4, mode: str = "worst", seed: int = 0
) -> np.ndarray:
    """Indices of ``num`` valid queries: lowest AP (``"worst"``), highest AP (``"best"``) or
    drawn at random (``"random"``, reproducible with ``seed``). Ties keep query order."""
    if mode not in _MODE_TITLES:
        raise ValueError(f"mode must be one of {sorted(_MODE_TITLES)}, got {mode!r}")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    valid = np.flatnonzero(result.valid)
    ap = result.ap[valid]
    if mode == "worst":
        chosen = valid[np.argsort(ap, kind="stable")]
    elif mode == "best":
        chosen = valid[np.argsort(-ap, kind="stable")]
    else:
        chosen = np.sort(np.random.default_rng(seed).permutation(valid)[:num])
    return chosen[:num]


def plot_ranked_lists(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    q_images: Sequence[Any],
    g_images: Sequence[Any],
    k: int = 8,
    num_queries: int = 4,
    mode: str = "worst",
    seed: int = 0,
    result: evaluation.RankResult | None = None,
    queries: Sequence[int] | None = None,
    title: str | None = None,
) -> Figure:
    """Each row: a query (blue), then its top-k valid gallery images as the evaluator ranks
    them, framed green (same identity) or red (another identity), with their distances.

    Args:
        distmat, q_pids, g_pids, q_camids, g_camids: as for ``paulkit.evaluation.evaluate``.
        q_images, g_images: per query/gallery image, a path, PIL image, HWC array or CHW
            tensor (e.g. the ``paths`` returned by ``extract_features``).
        k: gallery images per row.
        num_queries: rows.
        mode: ``"worst"`` (lowest AP; the title says so), ``"best"`` or ``"random"``.
        seed: for ``"random"``.
        result: a precomputed ``evaluate`` result (computed here otherwise).
        queries: explicit query indices (overrides ``mode``).
        title: prefix of the figure title, e.g. the model's name.

    Returns:
        The figure. Same-identity same-camera and junk gallery images are left out, exactly as
        the evaluator leaves them out, so the list shown is the list that was scored.

    Shape:
        distmat (Q, G); labels (Q,) and (G,); len(q_images) == Q, len(g_images) == G.

    Taught in: notebooks/07_evaluation.ipynb.
    """
    d = evaluation._tensor(distmat, "distmat").cpu()
    if d.ndim != 2 or len(q_images) != d.shape[0] or len(g_images) != d.shape[1]:
        raise ValueError(
            f"q_images ({len(q_images)}) and g_images ({len(g_images)}) must match distmat's "
            f"shape {tuple(d.shape)}"
        )
    if result is None:
        result = evaluation.evaluate(d, q_pids, g_pids, q_camids, g_camids, max_rank=k)
    if queries is None:
        queries = select_queries(result, num_queries, mode, seed)
        heading = _MODE_TITLES[mode]
    else:
        queries = np.asarray(queries, dtype=np.int64)
        heading = "chosen queries"
    q_pids, q_camids = np.asarray(q_pids), np.asarray(q_camids)
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    rows = len(queries)
    fig = PhotoFigure(figsize=(min(9.0, 0.8 * (k + 1) + 0.4), 1.95 * rows + 0.6))
    axes = fig.subplots(rows, k + 1, squeeze=False)
    for row, q in zip(axes, queries):
        ap = result.ap[q]
        row[0].imshow(_load_image(q_images[q]), interpolation="nearest")
        _frame(row[0], QUERY, 3.5)
        ap_text = "AP n/a" if np.isnan(ap) else f"AP {ap:.3f}"
        row[0].set_title(f"q{q} pid {q_pids[q]} c{q_camids[q]}\n{ap_text}", fontsize=SMALL)
        idx, dist, match = evaluation.rank_gallery(
            d[q], q_pids[q], q_camids[q], g_pids, g_camids, k
        )
        for j, ax in enumerate(row[1:]):
            if j >= len(idx):
                ax.set_axis_off()
                continue
            ax.imshow(_load_image(g_images[idx[j]]), interpolation="nearest")
            _frame(ax, MATCH if match[j] else MISS)
            ax.set_title(f"#{j + 1}\n{dist[j]:.3f}", fontsize=SMALL)
    name = f"{title}: " if title else ""
    fig.suptitle(f"{name}{heading}; green = same identity, red = other")
    fig.subplots_adjust(
        left=0.02, right=0.98, bottom=0.02, top=1 - 0.75 / fig.get_figheight(), hspace=0.45
    )
    return fig


def _cmc_values(curve: Any) -> np.ndarray:
    if isinstance(curve, evaluation.RankResult):
        return np.asarray(curve.cmc, dtype=np.float64)
    return np.asarray(curve, dtype=np.float64).reshape(-1)


def plot_cmc(
    curves: Mapping[str, Any],
    max_rank: int = 20,
    figsize: tuple[float, float] = (6.0, 3.8),
    title: str = "CMC (first match)",
) -> Figure:
    """CMC curves of several models on one plot, rank-1 in each legend entry.

    Args:
        curves: name -> ``RankResult`` or a CMC array (fractions in [0, 1]).
        max_rank: ranks shown (1..max_rank).

    Shape:
        each CMC (R,) with R >= 1; only the first ``max_rank`` entries are drawn.

    Taught in: notebooks/07_evaluation.ipynb.
    """
    if not curves:
        raise ValueError("curves is empty: pass {name: RankResult or CMC array}")
    fig = Figure(figsize=figsize)
    ax = fig.subplots()
    for name, curve in curves.items():
        cmc = _cmc_values(curve)[:max_rank]
        ranks = np.arange(1, len(cmc) + 1)
        ax.plot(ranks, 100 * cmc, marker="o", ms=3, label=f"{name} (rank-1 {100 * cmc[0]:.1f}%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rank k")
    ax.set_ylabel("matched within top k (%)")
    ax.set_ylim(0, 101)
    ax.set_xlim(0.5, max_rank + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title)
    fig.tight_layout()
    return fig


_NOT_LOSSES = {"epoch", "eval", "lr", "images_per_s", "acc", "time"}


def _numeric_list(value: Any, length: int) -> bool:
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != length or not length:
        return False
    return all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value)


def plot_history(
    history: Mapping[str, Any],
    loss_keys: Sequence[str] | None = None,
    figsize: tuple[float, float] = (9.0, 3.4),
) -> Figure:
    """Training curves: losses per epoch (left), retrieval accuracy per evaluation (right).

    Expected keys (all optional; what is missing is left out):

    - ``"epoch"``: epoch numbers (default ``1..n``);
    - ``"loss"``: the total loss per epoch (drawn thick);
    - per-loss lists of the same length, e.g. ``"pedal"``, ``"ipfl"``, ``"ce"``, ``"triplet"``
      (every numeric per-epoch list except ``epoch``, ``lr``, ``images_per_s``, ``acc``,
      ``time``; or exactly ``loss_keys``);
    - ``"eval"``: a list of ``{"epoch": e, "mAP": m, "rank1": r, ...}`` (fractions or
      percentages), as ``paulkit.train`` records them.

    Shape:
        every per-epoch list has length ``len(history["epoch"])``.

    Taught in: notebooks/07_evaluation.ipynb.
    """
    if not isinstance(history, Mapping):
        raise ValueError(f"history must be a dict of lists, got {type(history).__name__}")
    lists = {k: v for k, v in history.items() if isinstance(v, (list, tuple, np.ndarray))}
    n = (
        len(history["epoch"])
        if "epoch" in lists
        else max((len(v) for k, v in lists.items() if k != "eval"), default=0)
    )
    epochs = list(history["epoch"]) if "epoch" in lists else list(range(1, n + 1))
    keys = [k for k in lists if k not in _NOT_LOSSES] if loss_keys is None else list(loss_keys)
    keys = [k for k in keys if k in lists and _numeric_list(lists[k], n)]
    keys.sort(key=lambda k: k != "loss")  # total first
    evals = [e for e in history.get("eval") or [] if isinstance(e, Mapping) and "epoch" in e]
    metrics = [m for m in ("mAP", "rank1") if any(m in e for e in evals)]
    panels = int(bool(keys)) + int(bool(metrics))
    if not panels:
        raise ValueError(
            "history has nothing to plot: expected per-epoch loss lists (e.g. 'loss') and/or "
            "'eval': [{'epoch', 'mAP', 'rank1'}, ...]"
        )
    fig = Figure(figsize=figsize if panels == 2 else (figsize[0] / 2 + 0.5, figsize[1]))
    axes = list(np.atleast_1d(fig.subplots(1, panels)))
    if keys:
        ax = axes.pop(0)
        for k in keys:
            ax.plot(epochs, lists[k], marker="o", ms=3, lw=2.2 if k == "loss" else 1.2, label=k)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title("training losses")
        ax.grid(alpha=0.3)
        ax.legend()
    if metrics:
        ax = axes.pop(0)
        values = [float(e[m]) for e in evals for m in metrics if m in e]
        scale = 100.0 if max(values) <= 1.0 else 1.0
        for m in metrics:
            pts = [(e["epoch"], scale * float(e[m])) for e in evals if m in e]
            label = "mAP (step)" if m == "mAP" else "rank-1"
            ax.plot(*zip(*pts), marker="s", ms=4, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("%")
        ax.set_title("retrieval on the target")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


_RESULT_ROWS = (
    "direct_transfer",
    "adabn",
    "pedal_only",
    "ipfl_only",
    "paul",
    "paul_adabn",
    "oracle",
)
_RESULT_COLORS = ("C7", "C0", "C1", "C1", "C2", "C2", "C3")


def plot_results(
    table: Mapping[str, Any],
    figsize: tuple[float, float] = (11.0, 3.8),
    cluster: bool = False,
) -> Figure:
    """The held-out results of one preset (an entry of ``docs/results.json``): target mAP per
    row, mean with one standard deviation over all runs and the best colour histogram as a
    dashed line (left); direct transfer, AdaBN and PAUL joined per run (right). ``cluster``:
    Cluster Contrast (notebook 09) in both panels too, when every run has it.

    Taught in: notebooks/07_evaluation.ipynb (section 8); drawn into docs/results.png by
    :func:`paulkit.reproduce.render_results_figure`.
    """
    missing = [r for r in (*_RESULT_ROWS, "per_seed", "histogram") if r not in table]
    if missing:
        raise ValueError(
            f"results table lacks {missing}: make it with `python -m paulkit reproduce`"
        )
    rows, colors = list(_RESULT_ROWS), list(_RESULT_COLORS)
    runs = table["per_seed"].values()
    cluster = (
        cluster
        and bool(table.get("cluster_contrast"))
        and all("cluster_contrast" in r for r in runs)
    )
    if cluster:  # measured later (reproduce --rows): drawn once every run has it
        rows.insert(-1, "cluster_contrast")
        colors.insert(-1, "C4")
    means = [100 * table[r]["mAP"] for r in rows]
    stds = [100 * table[r].get("mAP_std", 0.0) for r in rows]
    fig = Figure(figsize=figsize)
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    ax.bar(
        rows,
        means,
        yerr=stds,
        capsize=3,
        color=colors,
        label="mean ± std over runs",
    )
    hist = table["histogram"]
    ax.axhline(
        100 * hist["mAP"],
        ls="--",
        color="k",
        lw=1,
        label=f"colour histogram ({hist['descriptor']})",
    )
    ax.set_ylabel("target mAP (%)")
    ax.set_title(
        f"held-out draws: data seeds {table.get('data_seeds')} x model seeds {table.get('seeds')}"
    )
    ax.legend(loc="upper left")
    ax.tick_params(axis="x", rotation=20)
    paired = ("direct_transfer", "adabn", "paul") + (("cluster_contrast",) if cluster else ())
    names = ["direct", "AdaBN", "PAUL", "Cluster\nContrast"][: len(paired)]
    values = []
    for run, r in table["per_seed"].items():
        x, y = range(len(paired)), [100 * r[k]["mAP"] for k in paired]
        ax2.plot(x, y, marker="o", ms=4, lw=1, label=run)
        values += y
    lo, hi = min(values), max(values)
    ax2.set_ylim(lo - 0.5 * (hi - lo), hi + 0.05 * (hi - lo))  # room below for the legend
    ax2.set_xticks(range(len(paired)), names)
    ax2.set_ylabel("target mAP (%)")
    ax2.set_title("each held-out run")
    ax2.legend(fontsize=SMALL, ncol=3, loc="lower center")
    fig.tight_layout()
    return fig
