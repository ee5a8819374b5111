"""Plots for the notebooks and the explorer. Every function returns a matplotlib Figure and
never calls ``plt.show()``; figures stay small (dpi <= 100).

Taught in: notebooks/02_patchnet.ipynb (patches), and the notebooks that use each plot.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Polygon

__all__ = ["to_rgb", "patch_corners", "plot_patches"]

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
    size: float = 1.4,
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
    fig = Figure(figsize=(size * n, size * height / width), dpi=80)
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
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout(pad=0.2)
    return fig
