"""Baselines without deep learning: colour histograms.

On identities that are defined by clothing colours, a colour histogram of the person region
is a strong, training-free baseline (../shared/MEASURED.md, pitfall 3): the trained models
must beat it clearly. Two descriptors:

- ``whole``: one joint RGB histogram of the whole box (background and camera cast included);
- ``stripes``: per horizontal stripe of the *person region* (the central part of the box,
  where a detector puts the person), one histogram per colour channel.

Taught in: notebooks/07_evaluation.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["color_histogram", "histogram_features"]


def color_histogram(
    image: np.ndarray,
    mode: str = "stripes",
    bins: int = 8,
    stripes: int = 6,
    person_width: float = 0.6,
) -> np.ndarray:
    """Colour-histogram descriptor of one RGB image (H, W, 3) uint8.

    Args:
        image: RGB array.
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
    q = (image.astype(np.int64) * bins) // 256
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


def histogram_features(
    paths: Sequence[str], mode: str = "stripes", size: tuple[int, int] = (128, 64), **kwargs
) -> torch.Tensor:
    """Histogram descriptors of image files, resized to ``size`` (H, W): (N, F) float32."""
    feats = []
    for p in paths:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BILINEAR))
        feats.append(color_histogram(arr, mode=mode, **kwargs))
    return torch.from_numpy(np.stack(feats))
