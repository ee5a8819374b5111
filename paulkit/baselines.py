"""Baselines without deep learning: colour histograms, optionally colour-normalised.

On identities that are defined by clothing colours, a colour histogram of the person region
is a strong, training-free baseline (docs/data.md, "Colour histograms"): the trained models
must beat it clearly. Two descriptors:

- ``whole``: one joint RGB histogram of the whole box (background and camera cast included).
  It is the simplest colour descriptor, but the background and the camera's colour cast
  weigh as much as the person.
- ``stripes``: per horizontal stripe of the *person region* (the central part of the box,
  where a detector puts the person), one histogram per colour channel. Stripes keep where a
  colour is (shirt above, trousers below) and drop most of the background.

The target's cameras differ by a colour cast (a gain per RGB channel), which moves every
colour to other bins. Each descriptor can therefore first normalise the colours:

- no normalisation (``"whole"``, ``"stripes"``): the raw pixels are binned. A red shirt seen
  by a bluish camera lands in other bins than the same shirt seen by a reddish one.
- ``+greyworld`` (per-image colour constancy): each RGB channel is divided by that image's
  own mean of the channel and scaled so the mean becomes a fixed grey (``GREY``). It removes
  any per-channel gain exactly, but an image full of one colour (a red coat filling the box)
  is also pulled towards grey, so some real colour is lost.
- ``+camera`` (per-camera normalisation): each channel is divided by the mean colour of the
  images of *that camera* (camera ids are known in re-id data; no identity label is used)
  and scaled so the mean becomes the fixed grey. It removes the camera's cast and brightness
  while keeping each person's colours, because a camera's mean over many people is close to
  the cast itself, not to any one person's clothes.

:func:`best_histogram` evaluates all six variants (:data:`VARIANTS`) on a target's query and
gallery and returns the best one with every variant's mAP.

Taught in: notebooks/07_evaluation.ipynb.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "GREY",
    "NORMS",
    "VARIANTS",
    "best_histogram",
    "camera_means",
    "color_histogram",
    "histogram_features",
    "load_images",
    "normalise_colours",
]

GREY = 96.0
"""Grey level (0-255) that a normalised image's mean colour is mapped to. Below mid-grey on
purpose: pixels brighter than ``255 / GREY`` times the mean (here 2.7x) are clipped into the
top bin, and a lower level keeps more of the bright clothes out of the clipped range. Chosen
before measuring, not tuned on any query/gallery: with hard 8-bin edges the level moves which
colours share a bin, and on the tutorial target the normalised stripes ranged over 8-16 mAP
for levels 40-96 (clipping was under 0.1% of pixels at 96)."""

NORMS = (None, "greyworld", "camera")
"""Colour normalisations that :func:`histogram_features` accepts."""

VARIANTS = tuple(
    f"{mode}+{norm}" if norm else mode for norm in NORMS for mode in ("whole", "stripes")
)
"""Every descriptor :func:`best_histogram` tries: ``whole``, ``stripes``,
``whole+greyworld``, ``stripes+greyworld``, ``whole+camera``, ``stripes+camera``."""


def color_histogram(
    image: np.ndarray,
    mode: str = "stripes",
    bins: int = 8,
    stripes: int = 6,
    person_width: float = 0.6,
) -> np.ndarray:
    """Colour-histogram descriptor of one RGB image (H, W, 3).

    Args:
        image: RGB array, uint8 or float with values in 0..255 (e.g. the output of
            :func:`normalise_colours`; values outside are clipped into the end bins).
        mode: ``"whole"`` (joint bins^3 histogram of the whole image) or ``"stripes"``
            (``stripes`` horizontal stripes of the central ``person_width`` of the box, one
            ``bins``-bin histogram per channel each).
        bins: histogram bins per channel.
        stripes: number of horizontal stripes.
        person_width: share of the box width taken as the person region (centred).

    Returns:
        A float32 vector, square-rooted (Hellinger) and L2-normalised, for cosine distance.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if np.issubdtype(image.dtype, np.integer):
        q = (image.astype(np.int64) * bins) // 256
    else:
        q = np.floor(image.astype(np.float64) * (bins / 256.0))
    q = np.clip(q, 0, bins - 1).astype(np.int64)
    if mode == "whole":
        codes = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
        hist = np.bincount(codes.ravel(), minlength=bins**3).astype(np.float32)
    elif mode == "stripes":
        h, w, _ = q.shape
        x0 = int(round(w * (1 - person_width) / 2))
        region = q[:, x0 : w - x0]
        edges = np.linspace(0, h, stripes + 1).astype(int)
        parts = []
        for s in range(stripes):
            band = region[edges[s] : edges[s + 1]].reshape(-1, 3)
            for c in range(3):
                parts.append(np.bincount(band[:, c], minlength=bins) / max(len(band), 1))
        hist = np.concatenate(parts).astype(np.float32)
    else:
        raise ValueError(f"mode must be 'whole' or 'stripes', got {mode!r}")
    hist = np.sqrt(hist / max(hist.sum(), 1e-12))
    return hist / max(np.linalg.norm(hist), 1e-12)


def normalise_colours(
    image: np.ndarray, mean: np.ndarray | Sequence[float] | None = None, grey: float = GREY
) -> np.ndarray:
    """Divide each RGB channel by ``mean`` and scale it to ``grey``: float32 (H, W, 3) in 0..255.

    Args:
        image: RGB array (H, W, 3), uint8 or float in 0..255.
        mean: the colour (3,) that becomes ``(grey, grey, grey)``: a camera's mean colour
            (per-camera normalisation, see :func:`camera_means`). ``None`` uses the image's
            own channel means (grey-world colour constancy).
        grey: target grey level; brighter results are clipped to 255.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    img = image.astype(np.float32)
    m = img.reshape(-1, 3).mean(0) if mean is None else np.asarray(mean, np.float32)
    if m.shape != (3,):
        raise ValueError(f"mean must be one value per RGB channel (3,), got shape {m.shape}")
    return np.clip(img * (grey / np.maximum(m, 1e-3)), 0.0, 255.0)


def load_images(paths: Sequence[str], size: tuple[int, int] = (128, 64)) -> np.ndarray:
    """Image files as RGB uint8, resized to ``size`` (H, W): (N, H, W, 3)."""
    out = np.empty((len(paths), size[0], size[1], 3), np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            out[i] = np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BILINEAR))
    return out


def camera_means(
    images: Sequence[str] | np.ndarray,
    camids: Sequence[int],
    size: tuple[int, int] = (128, 64),
) -> dict[int, np.ndarray]:
    """Mean RGB colour of each camera's images: ``{camid: float32 (3,)}``.

    No identity label is read: only the pixels and the camera ids. The mean is taken over
    all pixels of all the camera's images (each image weighs the same).

    Args:
        images: image paths, or an array (N, H, W, 3) as :func:`load_images` returns.
        camids: the camera id of each image.
        size: (H, W) the paths are resized to (the mean barely depends on it).
    """
    arr = load_images(images, size) if not isinstance(images, np.ndarray) else images
    cams = np.asarray(camids)
    if len(cams) != len(arr):
        raise ValueError(f"got {len(arr)} images but {len(cams)} camids; need one camid each")
    per_image = arr.reshape(len(arr), -1, 3).mean(1, dtype=np.float64)
    return {int(c): per_image[cams == c].mean(0).astype(np.float32) for c in np.unique(cams)}


def _features(
    arr: np.ndarray,
    mode: str,
    norm: str | None,
    camids: Sequence[int] | None,
    means: Mapping[int, np.ndarray] | None,
    **kwargs,
) -> torch.Tensor:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "camera":
        if camids is None:
            raise ValueError(
                "norm='camera' needs the camera id of every image: pass camids=[r.camid for r "
                "in records] (and optionally camera_means=camera_means(train_paths, "
                "train_camids) to take each camera's mean colour from other images)"
            )
        if len(camids) != len(arr):
            raise ValueError(f"got {len(arr)} images but {len(camids)} camids")
        if means is None:
            means = camera_means(arr, camids)
        missing = sorted({int(c) for c in camids} - set(means))
        if missing:
            raise ValueError(
                f"camera_means has no mean colour for camera(s) {missing}: compute them on "
                "images that include those cameras"
            )
    feats = []
    for i, img in enumerate(arr):
        if norm == "greyworld":
            img = normalise_colours(img)
        elif norm == "camera":
            img = normalise_colours(img, means[int(camids[i])])
        feats.append(color_histogram(img, mode=mode, **kwargs))
    if not feats:
        raise ValueError("no images to describe")
    return torch.from_numpy(np.stack(feats))


def histogram_features(
    paths: Sequence[str],
    mode: str = "stripes",
    size: tuple[int, int] = (128, 64),
    norm: str | None = None,
    camids: Sequence[int] | None = None,
    camera_means: Mapping[int, np.ndarray] | None = None,
    **kwargs,
) -> torch.Tensor:
    """Histogram descriptors of image files, resized to ``size`` (H, W): (N, F) float32.

    Args:
        paths: image files.
        mode: ``"whole"`` or ``"stripes"`` (see :func:`color_histogram`).
        size: (H, W) every image is resized to first.
        norm: ``None`` (raw colours), ``"greyworld"`` (each image divided by its own mean
            colour) or ``"camera"`` (each image divided by its camera's mean colour).
        camids: camera id of each path; required for ``norm="camera"``.
        camera_means: ``{camid: (3,) mean colour}`` for ``norm="camera"``, e.g. from
            :func:`camera_means` on the target's training images; ``None`` computes it from
            ``paths`` themselves.
        **kwargs: ``bins``, ``stripes``, ``person_width`` of :func:`color_histogram`.
    """
    return _features(load_images(paths, size), mode, norm, camids, camera_means, **kwargs)


def best_histogram(
    query: Sequence[Any],
    gallery: Sequence[Any],
    train: Sequence[Any] | None = None,
    size: tuple[int, int] = (128, 64),
    **kwargs,
) -> dict[str, Any]:
    """Evaluate every histogram variant (:data:`VARIANTS`) on a target; return the best.

    Where the per-camera mean colours come from: the target's ``train`` images of each
    camera when ``train`` is given (recommended: the same unlabelled images that AdaBN and
    the adaptation methods use, so nothing is estimated on the evaluation images); otherwise
    the query and gallery images of each camera together (transductive, still label-free).
    Only ``.path`` and ``.camid`` of ``train`` are read, never ``.pid``.

    Args:
        query, gallery: records with ``.path``, ``.pid`` and ``.camid`` (e.g.
            ``target.query`` and ``target.gallery``; pids are read for evaluation only).
        train: optional unlabelled target training records for the camera means.
        size: (H, W) the images are resized to.
        **kwargs: ``bins``, ``stripes``, ``person_width`` of :func:`color_histogram`.

    Returns:
        The best variant's metrics (``evaluation.RankResult.as_dict()``: ``mAP``, ``rank1``
        ...) with ``"descriptor"`` naming it (e.g. ``"stripes+camera"``), ``"variants"``
        (``{variant: mAP}`` for all six, in :data:`VARIANTS` order) and
        ``"camera_means_from"`` (``"train"`` or ``"query+gallery"``).
    """
    from paulkit import evaluation  # late: evaluation pulls in more than the histograms need

    if not query or not gallery:
        raise ValueError("best_histogram needs a non-empty query and gallery")
    q_arr = load_images([r.path for r in query], size)
    g_arr = load_images([r.path for r in gallery], size)
    q_cam = [r.camid for r in query]
    g_cam = [r.camid for r in gallery]
    if train:
        means = camera_means([r.path for r in train], [r.camid for r in train], size)
        source = "train"
        missing = sorted({int(c) for c in q_cam + g_cam} - set(means))
        if missing:  # a camera without training images: fall back to its own test images
            test = camera_means(np.concatenate([q_arr, g_arr]), q_cam + g_cam)
            means = {**means, **{c: test[c] for c in missing}}
    else:
        means = camera_means(np.concatenate([q_arr, g_arr]), q_cam + g_cam)
        source = "query+gallery"
    best: dict[str, Any] | None = None
    maps: dict[str, float] = {}
    for variant in VARIANTS:
        mode, _, norm = variant.partition("+")
        norm = norm or None
        qf = _features(q_arr, mode, norm, q_cam, means, **kwargs)
        gf = _features(g_arr, mode, norm, g_cam, means, **kwargs)
        res = evaluation.evaluate_features(
            qf, gf, [r.pid for r in query], [r.pid for r in gallery], q_cam, g_cam
        ).as_dict()
        maps[variant] = float(res["mAP"])
        if best is None or res["mAP"] > best["mAP"]:
            best = {**res, "descriptor": variant}
    assert best is not None
    return {**best, "variants": maps, "camera_means_from": source}
