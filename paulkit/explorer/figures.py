"""The patch explorer's figures: matplotlib artists updated in place.

Each ``plot_*`` function draws a new ``matplotlib.figure.Figure``, or, given the ``fig`` it
returned before, updates that figure's artists in place (found by their gid): the interactive
explorer (:class:`paulkit.explorer.PatchExplorer`) keeps one Figure per view and calls the same
function on every change, so the static and the interactive views are drawn by the same code.
:func:`figure_png` renders a figure to the PNG bytes a view shows.

Paper: docs/paper.md "Network: PatchNet". Taught in: notebooks/08_patch_explorer.ipynb.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Polygon, Rectangle

from paulkit.viz import MATCH, MISS, patch_corners, to_rgb

__all__ = [
    "PATCH_COLORS",
    "patch_color",
    "patch_boxes",
    "plot_patch_boxes",
    "plot_patch_heatmaps",
    "plot_patch_neighbours",
    "plot_ranking",
    "plot_patch_match",
    "figure_png",
]

PATCH_COLORS = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
)


def patch_color(p: int) -> str:
    """The colour of patch ``p`` in every explorer figure."""
    return PATCH_COLORS[p % len(PATCH_COLORS)]


def patch_boxes(
    thetas: torch.Tensor | np.ndarray,
    image_size: tuple[int, int],
    map_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Axis-aligned boxes (x0, y0, x1, y1) around each patch's region (see
    :func:`patch_corners`), in ``imshow`` pixel coordinates (pixel centres on integers).

    For theta = [[a, 0, tx], [0, d, ty]] the patch spans x in tx ± a and y in ty ± d in the
    feature map's normalised coordinates (``align_corners=True``: -1 and +1 are the centres
    of its first and last cells); a cell j of a map w wide covers the image columns
    [j, j + 1) W / w, so x goes to ((x + 1) / 2 (w - 1) + 0.5) W / w - 0.5. For the six
    initial stripes of a 16 x 8 map on a 64 x 32 image, patch i spans y from 10 i + 1.5 to
    10 i + 11.5 and x from 1.5 to 29.5. Rotations and shears: the box holds the four
    transformed corners.

    Args:
        thetas: one image's affine matrices (``PatchNetOutput.thetas[i]``).
        image_size: (H, W) of the image the boxes are drawn on.
        map_size: (h, w) of the feature map the thetas sample; None: the image itself.

    Shape:
        thetas (P, 2, 3) -> (P, 4).

    Paper: docs/paper.md "Network: PatchNet". Taught in: notebooks/08_patch_explorer.ipynb.
    """
    t = torch.as_tensor(np.asarray(thetas) if not isinstance(thetas, torch.Tensor) else thetas)
    if t.dim() != 3 or tuple(t.shape[1:]) != (2, 3):
        raise ValueError(
            f"thetas must be (P, 2, 3), one image's affine matrices; got shape {tuple(t.shape)} "
            "(index a batch first: out.thetas[i])"
        )
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be (H, W) with positive sides, got {image_size!r}")
    if map_size is not None and (len(map_size) != 2 or min(map_size) < 1):
        raise ValueError(f"map_size must be (h, w) of the feature map or None, got {map_size!r}")
    c = patch_corners(t, image_size, map_size).double().numpy()
    return np.concatenate([c.min(1), c.max(1)], axis=1)


def _corners(thetas: Any, image_size: tuple[int, int], map_size: Any) -> np.ndarray:
    t = thetas if isinstance(thetas, torch.Tensor) else torch.as_tensor(np.asarray(thetas))
    return patch_corners(t, image_size, map_size).double().numpy()


def _artists(fig: Figure) -> dict[str, Any]:
    return {a.get_gid(): a for a in fig.findobj(lambda a: a.get_gid() is not None)}


def _need(arts: dict[str, Any], gid: str, fn: str) -> Any:
    if gid not in arts:
        raise ValueError(
            f"fig was not made by {fn} with the same number of patches/images (no artist "
            f"{gid!r}); pass fig=None to draw a new figure"
        )
    return arts[gid]


def _blank_axes(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _image_artist(ax: Any, gid: str, size: tuple[int, int]) -> None:
    h, w = size
    im = ax.imshow(np.zeros((h, w, 3)), interpolation="nearest")
    im.set_gid(gid)
    _blank_axes(ax)


def _set_image(im: Any, image: np.ndarray) -> None:
    im.set_data(image)
    h, w = image.shape[:2]
    im.set_extent((-0.5, w - 0.5, h - 0.5, -0.5))
    im.axes.set_xlim(-0.5, w - 0.5)
    im.axes.set_ylim(h - 0.5, -0.5)


def _box_artists(ax: Any, prefix: str, num: int, labels: bool) -> None:
    for p in range(num):
        poly = Polygon(np.zeros((4, 2)), closed=True, fill=False, edgecolor=patch_color(p))
        poly.set_gid(f"{prefix}box{p}")
        ax.add_patch(poly)
        if labels:
            t = ax.text(0, 0, str(p + 1), color=patch_color(p), fontsize=7, va="top", ha="left")
            t.set_gid(f"{prefix}boxlabel{p}")


def _set_boxes(
    arts: dict[str, Any],
    prefix: str,
    corners: np.ndarray,
    highlight: int | None,
    fn: str,
    only: int | None = None,
) -> None:
    for p in range(len(corners)):
        poly = _need(arts, f"{prefix}box{p}", fn)
        poly.set_xy(corners[p])
        on = highlight is None or highlight == p
        poly.set_visible(only is None or only == p)
        poly.set_linewidth(2.2 if highlight == p else 1.0)
        poly.set_alpha(1.0 if on else 0.55)
        label = arts.get(f"{prefix}boxlabel{p}")
        if label is not None:
            x0, y0 = corners[p].min(0)
            label.set_position((x0 + 0.5, y0 + 0.5))
            label.set_fontweight("bold" if highlight == p else "normal")


def _check_index(value: int | None, num: int, name: str) -> None:
    if value is not None and not 0 <= value < num:
        raise ValueError(f"{name} must be in 0..{num - 1} or None, got {value}")


def plot_patch_boxes(
    image: Any,
    thetas: torch.Tensor | np.ndarray,
    map_size: tuple[int, int] | None = None,
    highlight: int | None = None,
    title: str = "",
    fig: Figure | None = None,
) -> Figure:
    """The P patches of an image drawn as boxes over it (numbered from 1, one colour each).

    Args:
        image: (H, W, 3) array (uint8, or float in [0, 1]) or a (3, H, W) tensor in [0, 1].
        thetas: the image's affine matrices, (P, 2, 3).
        map_size: (h, w) of the feature map the thetas sample (see :func:`patch_corners`).
        highlight: a patch to draw thicker.
        title: the axes title.
        fig: a figure this function returned before: updated in place.

    Taught in: notebooks/08_patch_explorer.ipynb.
    """
    img = to_rgb(image)
    corners = _corners(thetas, img.shape[:2], map_size)
    _check_index(highlight, len(corners), "highlight")
    if fig is None:
        fig = Figure(figsize=(1.8, 3.0), dpi=80)
        ax = fig.add_axes((0.02, 0.02, 0.96, 0.86))
        _image_artist(ax, "image", img.shape[:2])
        _box_artists(ax, "", len(corners), labels=True)
        ax.title.set_gid("title")
        ax.title.set_fontsize(8)
    arts = _artists(fig)
    _set_image(_need(arts, "image", "plot_patch_boxes"), img)
    _set_boxes(arts, "", corners, highlight, "plot_patch_boxes")
    arts["title"].set_text(title)
    return fig


def plot_patch_heatmaps(
    image: Any,
    thetas: torch.Tensor | np.ndarray,
    heat: torch.Tensor | np.ndarray,
    highlight: int | None = None,
    title: str = "",
    fig: Figure | None = None,
) -> Figure:
    """The image with its patch boxes, then one activation heat map per patch.

    ``heat`` is what :func:`paulkit.explorer.patch_activation_maps` computes: for patch p and
    feature cell (r, c), the cell's weight in the patch's average-pooled feature (its bilinear
    sampling weight) times the L2 norm over channels of the backbone map there. It shows which
    cells of the feature map a patch reads and how strongly they fire. The maps are scaled
    together (by their common maximum), so patches can be compared; each is drawn over the
    image (cells as blocks, nearest-neighbour).

    Args:
        image: (H, W, 3) array or (3, H, W) tensor in [0, 1].
        thetas: (P, 2, 3), the feature map's size is read from ``heat``.
        heat: (P, h, w) non-negative maps over the feature map.
        highlight: the selected patch (thicker box, bold title).
        title: the figure's title.
        fig: a figure this function returned before: updated in place.

    Shape:
        thetas (P, 2, 3); heat (P, h, w).

    Taught in: notebooks/08_patch_explorer.ipynb.
    """
    img = to_rgb(image)
    hm = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    if hm.ndim != 3:
        raise ValueError(f"heat must be (P, h, w), got shape {hm.shape}")
    num = hm.shape[0]
    corners = _corners(thetas, img.shape[:2], hm.shape[1:])
    if len(corners) != num:
        raise ValueError(f"thetas has {len(corners)} patches but heat has {num}")
    _check_index(highlight, num, "highlight")
    fn = "plot_patch_heatmaps"
    if fig is None:
        fig = Figure(figsize=(0.95 * (num + 1) + 0.2, 2.5), dpi=80)
        axes = fig.subplots(1, num + 1)
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.78, wspace=0.06)
        _image_artist(axes[0], "image", img.shape[:2])
        _box_artists(axes[0], "", num, labels=True)
        axes[0].set_title("patches", fontsize=8)
        for p in range(num):
            ax = axes[p + 1]
            _image_artist(ax, f"heat-image{p}", img.shape[:2])
            hi = ax.imshow(
                np.zeros(hm.shape[1:]),
                cmap="inferno",
                vmin=0.0,
                vmax=1.0,
                alpha=0.65,
                interpolation="nearest",
            )
            hi.set_gid(f"heat{p}")
            ax.title.set_gid(f"heat-title{p}")
            ax.title.set_fontsize(8)
            ax.title.set_color(patch_color(p))
        t = fig.suptitle("", fontsize=9)
        t.set_gid("suptitle")
    arts = _artists(fig)
    _set_image(_need(arts, "image", fn), img)
    _set_boxes(arts, "", corners, highlight, fn)
    gray = np.repeat(img[..., :3].mean(2, keepdims=True), 3, axis=2) * 0.8
    scale = float(hm.max()) if hm.size and hm.max() > 0 else 1.0
    H, W = img.shape[:2]
    for p in range(num):
        _set_image(_need(arts, f"heat-image{p}", fn), gray)
        hi = _need(arts, f"heat{p}", fn)
        hi.set_data(hm[p] / scale)
        hi.set_extent((-0.5, W - 0.5, H - 0.5, -0.5))
        t = arts[f"heat-title{p}"]
        t.set_text(f"patch {p + 1}")
        t.set_fontweight("bold" if highlight == p else "normal")
    arts["suptitle"].set_text(title)
    return fig


def plot_patch_neighbours(
    query_image: Any,
    query_thetas: torch.Tensor | np.ndarray,
    images: list[Any],
    thetas: torch.Tensor | np.ndarray,
    similarities: list[float] | np.ndarray,
    patch: int,
    map_size: tuple[int, int] | None = None,
    labels: list[str] | None = None,
    title: str = "",
    fig: Figure | None = None,
) -> Figure:
    """One patch of a query and its nearest patches in the patch memory.

    The query with patch ``patch`` boxed, then the K training images whose memory slot for
    that patch is nearest (PEDAL's neighbours, :func:`paulkit.explorer.patch_neighbours`),
    each with the same patch boxed and its cosine similarity to the query's patch.

    Args:
        query_image: (H, W, 3) array or (3, H, W) tensor.
        query_thetas: (P, 2, 3).
        images: K neighbour images.
        thetas: (K, P, 2, 3) their affine matrices.
        similarities: K cosine similarities.
        patch: the patch p (0-based).
        map_size: (h, w) of the feature map (see :func:`patch_corners`).
        labels: K extra lines under each similarity (e.g. the image's index).
        title: the figure's title.
        fig: a figure this function returned before: updated in place.

    Shape:
        query_thetas (P, 2, 3); thetas (K, P, 2, 3); similarities (K,).

    Taught in: notebooks/08_patch_explorer.ipynb.
    """
    k = len(images)
    if len(thetas) != k or len(similarities) != k:
        raise ValueError(
            f"images ({k}), thetas ({len(thetas)}) and similarities ({len(similarities)}) "
            "must have one entry per neighbour"
        )
    if labels is not None and len(labels) != k:
        raise ValueError(f"labels must have {k} entries (one per neighbour), got {len(labels)}")
    qimg = to_rgb(query_image)
    qc = _corners(query_thetas, qimg.shape[:2], map_size)
    _check_index(patch, len(qc), "patch")
    fn = "plot_patch_neighbours"
    if fig is None:
        fig = Figure(figsize=(0.95 * (k + 1) + 0.2, 2.5), dpi=80)
        axes = fig.subplots(1, k + 1)
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.74, wspace=0.06)
        _image_artist(axes[0], "q-image", qimg.shape[:2])
        _box_artists(axes[0], "q-", len(qc), labels=False)
        axes[0].title.set_gid("q-title")
        axes[0].title.set_fontsize(8)
        for j in range(k):
            ax = axes[j + 1]
            _image_artist(ax, f"nb-image{j}", qimg.shape[:2])
            _box_artists(ax, f"nb{j}-", len(qc), labels=False)
            ax.title.set_gid(f"nb-title{j}")
            ax.title.set_fontsize(7)
        t = fig.suptitle("", fontsize=9)
        t.set_gid("suptitle")
    arts = _artists(fig)
    _set_image(_need(arts, "q-image", fn), qimg)
    _set_boxes(arts, "q-", qc, patch, fn, only=patch)
    arts["q-title"].set_text(f"query, patch {patch + 1}")
    arts["q-title"].set_color(patch_color(patch))
    for j in range(k):
        img = to_rgb(images[j])
        _set_image(_need(arts, f"nb-image{j}", fn), img)
        c = _corners(thetas[j], img.shape[:2], map_size)
        _set_boxes(arts, f"nb{j}-", c, patch, fn, only=patch)
        extra = f"\n{labels[j]}" if labels is not None else ""
        arts[f"nb-title{j}"].set_text(f"sim {float(similarities[j]):.2f}{extra}")
    arts["suptitle"].set_text(title)
    return fig


def plot_ranking(
    query_image: Any,
    gallery_images: list[Any],
    distances: list[float] | np.ndarray,
    matches: list[bool] | np.ndarray,
    selected: int | None = None,
    query_title: str = "query",
    labels: list[str] | None = None,
    title: str = "",
    fig: Figure | None = None,
) -> Figure:
    """A query and its top-K gallery images, framed green (same person) or red.

    Args:
        query_image: (H, W, 3) array or (3, H, W) tensor.
        gallery_images: K images in rank order (e.g. from
            :func:`paulkit.evaluation.rank_gallery`).
        distances: their K distances to the query.
        matches: K booleans, true where the gallery image shows the query's person.
        selected: a rank (0-based) to mark with a thick frame and a triangle.
        query_title: the query's title (e.g. its pid and camera).
        labels: K extra title lines (e.g. pid and camera).
        title: the figure's title.
        fig: a figure this function returned before: updated in place.

    Shape:
        distances, matches: (K,).

    Taught in: notebooks/07_evaluation.ipynb, notebooks/08_patch_explorer.ipynb.
    """
    k = len(gallery_images)
    if len(distances) != k or len(matches) != k:
        raise ValueError(
            f"gallery_images ({k}), distances ({len(distances)}) and matches ({len(matches)}) "
            "must have one entry per rank"
        )
    if labels is not None and len(labels) != k:
        raise ValueError(f"labels must have {k} entries (one per rank), got {len(labels)}")
    _check_index(selected, max(k, 1), "selected")
    qimg = to_rgb(query_image)
    fn = "plot_ranking"
    if fig is None:
        fig = Figure(figsize=(0.9 * (k + 1) + 0.3, 2.5), dpi=80)
        axes = fig.subplots(1, k + 1)
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.74, wspace=0.08)
        _image_artist(axes[0], "q-image", qimg.shape[:2])
        axes[0].title.set_gid("q-title")
        axes[0].title.set_fontsize(8)
        for j in range(k):
            ax = axes[j + 1]
            _image_artist(ax, f"g-image{j}", qimg.shape[:2])
            frame = Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, clip_on=False)
            frame.set_gid(f"g-frame{j}")
            ax.add_patch(frame)
            ax.title.set_gid(f"g-title{j}")
            ax.title.set_fontsize(7)
        t = fig.suptitle("", fontsize=9)
        t.set_gid("suptitle")
    arts = _artists(fig)
    _set_image(_need(arts, "q-image", fn), qimg)
    arts["q-title"].set_text(query_title)
    for j in range(k):
        _set_image(_need(arts, f"g-image{j}", fn), to_rgb(gallery_images[j]))
        frame = _need(arts, f"g-frame{j}", fn)
        frame.set_edgecolor(MATCH if bool(matches[j]) else MISS)
        frame.set_linewidth(5.0 if selected == j else 2.0)
        mark = "\u25b2 " if selected == j else ""
        extra = f"\n{labels[j]}" if labels is not None else ""
        t = arts[f"g-title{j}"]
        t.set_text(f"{mark}{j + 1}: {float(distances[j]):.3f}{extra}")
        t.set_fontweight("bold" if selected == j else "normal")
    arts["suptitle"].set_text(title)
    return fig


def plot_patch_match(
    query_image: Any,
    gallery_image: Any,
    query_thetas: torch.Tensor | np.ndarray,
    gallery_thetas: torch.Tensor | np.ndarray,
    similarity: torch.Tensor | np.ndarray,
    map_size: tuple[int, int] | None = None,
    highlight: int | None = None,
    title: str = "",
    fig: Figure | None = None,
) -> Figure:
    """Why a gallery image matched a query: the P x P patch-to-patch similarity matrix.

    Entry (i, j) is the cosine similarity of the query's patch i with the gallery image's
    patch j (:func:`paulkit.explorer.patch_similarity`). The retrieval descriptor compares
    patch i only with patch i, so the cosine similarity of the two descriptors is the mean
    of the diagonal: the bar chart shows each patch's share, sim(i, i) / P, and the patches
    with the longest bars drove the match. A dot marks each row's best gallery patch: where
    it leaves the diagonal, the two images' patches are misaligned.

    Args:
        query_image, gallery_image: (H, W, 3) arrays or (3, H, W) tensors.
        query_thetas, gallery_thetas: (P, 2, 3).
        similarity: (P, P) cosine similarities, query patches in rows.
        map_size: (h, w) of the feature map (see :func:`patch_corners`).
        highlight: a patch to emphasise (its boxes and its row and column).
        title: the figure's title.
        fig: a figure this function returned before: updated in place.

    Shape:
        similarity (P, P).

    Taught in: notebooks/08_patch_explorer.ipynb.
    """
    s = similarity.detach().cpu().numpy() if isinstance(similarity, torch.Tensor) else similarity
    s = np.asarray(s, dtype=np.float64)
    num = s.shape[0]
    if s.ndim != 2 or s.shape[1] != num:
        raise ValueError(f"similarity must be square (P, P), got shape {s.shape}")
    qimg, gimg = to_rgb(query_image), to_rgb(gallery_image)
    qc = _corners(query_thetas, qimg.shape[:2], map_size)
    gc = _corners(gallery_thetas, gimg.shape[:2], map_size)
    if len(qc) != num or len(gc) != num:
        raise ValueError(f"thetas must have P = {num} patches (the similarity's size)")
    _check_index(highlight, num, "highlight")
    fn = "plot_patch_match"
    if fig is None:
        fig = Figure(figsize=(7.2, 2.9), dpi=80)
        gs = fig.add_gridspec(1, 4, width_ratios=(0.55, 0.55, 1.6, 1.25))
        fig.subplots_adjust(left=0.01, right=0.98, bottom=0.14, top=0.8, wspace=0.3)
        axq, axg, axm, axb = (fig.add_subplot(gs[0, i]) for i in range(4))
        _image_artist(axq, "q-image", qimg.shape[:2])
        _box_artists(axq, "q-", num, labels=True)
        axq.set_title("query", fontsize=8)
        _image_artist(axg, "g-image", gimg.shape[:2])
        _box_artists(axg, "g-", num, labels=True)
        axg.set_title("gallery", fontsize=8)
        m = axm.imshow(np.zeros((num, num)), cmap="viridis", vmin=-1.0, vmax=1.0)
        m.set_gid("matrix")
        ticks = np.arange(num)
        axm.set_xticks(ticks, [str(i + 1) for i in ticks], fontsize=7)
        axm.set_yticks(ticks, [str(i + 1) for i in ticks], fontsize=7)
        axm.set_xlabel("gallery patch", fontsize=8)
        axm.set_ylabel("query patch", fontsize=8)
        axm.set_title("patch similarity", fontsize=8)
        for i in range(num):
            for j in range(num):
                t = axm.text(j, i, "", ha="center", va="center", fontsize=6)
                t.set_gid(f"cell{i}-{j}")
        (best,) = axm.plot([], [], "o", ms=3, mfc="none", mec="white", mew=1.0)
        best.set_gid("best")
        hl = Rectangle((0, 0), 1, 1, fill=False, edgecolor="white", linewidth=1.5)
        hl.set_gid("row-highlight")
        axm.add_patch(hl)
        bars = axb.barh(ticks, np.zeros(num), color=[patch_color(i) for i in ticks])
        for i, b in enumerate(bars):
            b.set_gid(f"bar{i}")
        axb.set_yticks(ticks, [str(i + 1) for i in ticks], fontsize=7)
        axb.invert_yaxis()
        axb.set_xlim(-0.5 / num, 1.0 / num)
        axb.axvline(0.0, color="0.5", lw=0.8)
        axb.tick_params(axis="x", labelsize=7)
        axb.set_title("share of the similarity", fontsize=8)
        axb.set_xlabel("sim(i, i) / P", fontsize=8)
        t = fig.suptitle("", fontsize=9)
        t.set_gid("suptitle")
    arts = _artists(fig)
    _set_image(_need(arts, "q-image", fn), qimg)
    _set_image(_need(arts, "g-image", fn), gimg)
    _set_boxes(arts, "q-", qc, highlight, fn)
    _set_boxes(arts, "g-", gc, highlight, fn)
    _need(arts, "matrix", fn).set_data(s)
    for i in range(num):
        for j in range(num):
            t = _need(arts, f"cell{i}-{j}", fn)
            t.set_text(f"{s[i, j]:.2f}")
            t.set_color("black" if s[i, j] > 0.3 else "white")
            t.set_fontweight("bold" if i == j else "normal")
    best = s.argmax(1)
    arts["best"].set_data(best + 0.32, np.arange(num) - 0.32)
    hl = arts["row-highlight"]
    hl.set_visible(highlight is not None)
    if highlight is not None:
        hl.set_bounds(-0.5, highlight - 0.5, num, 1.0)
    share = np.diag(s) / num
    for i in range(num):
        b = _need(arts, f"bar{i}", fn)
        b.set_width(share[i])
        b.set_edgecolor("black" if highlight == i else "none")
    arts["suptitle"].set_text(title or f"cosine similarity {share.sum():.3f} = sum of the bars")
    return fig


def figure_png(fig: Figure) -> bytes:
    """A figure rendered to PNG bytes at its own dpi (what the explorer shows)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()
