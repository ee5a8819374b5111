"""Image transforms (torchvision.transforms.v2): train, test, and PAUL's pseudo pairs.

All three take a PIL image (or a uint8 tensor image) and return a float tensor (3, H, W)
normalised with the ImageNet mean and standard deviation.

Paper: docs/paper.md "Supervised pretraining" (flip, resize, normalise) and "Unsupervised
training" (the pseudo pair: colour jitter 0.2/0.2/0.2/0.1, rotation up to 10 degrees, a
random crop keeping 70-95% of the area).

Taught in: notebooks/01_data_loading.ipynb.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RandomAreaCrop",
    "train_transform",
    "test_transform",
    "pseudo_pair_transform",
    "denormalize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_size(height: int, width: int) -> None:
    if not (isinstance(height, int) and isinstance(width, int)) or height < 1 or width < 1:
        raise ValueError(
            f"height={height!r}, width={width!r}: pass two positive integers "
            "(e.g. 384, 128 for the paper, 64, 32 for the CPU tutorial)"
        )


class RandomAreaCrop(torch.nn.Module):
    """Crop a random rectangle keeping a fraction ``area`` of the image, without resizing.

    As in the official PAUL code: draw the kept area ratio ``r`` uniformly in ``area``, the
    crop width uniformly in ``[r W, W]`` and set the height to ``r H W / w`` (so both sides
    stay between ``r`` and 1 of the original), then place the crop uniformly. Uses torch's
    random generator (seeded per DataLoader worker).

    Args:
        area: ``(low, high)`` fraction of the area kept, ``0 < low <= high <= 1``.

    Shape:
        input (..., H, W) tensor image or a PIL image; output (..., h, w) with h*w ~ r*H*W.
    """

    def __init__(self, area: tuple[float, float] = (0.70, 0.95)) -> None:
        super().__init__()
        low, high = area
        if not 0 < low <= high <= 1:
            raise ValueError(f"area={area!r}: need 0 < low <= high <= 1, e.g. (0.70, 0.95)")
        self.area = (float(low), float(high))

    def forward(self, img):  # noqa: D102 - a transform
        height, width = F.get_size(img)
        low, high = self.area
        r = low + (high - low) * torch.rand(()).item()
        w_min = min(width, max(1, round(r * width)))
        w = int(w_min + (width - w_min) * torch.rand(()).item())
        w = max(1, min(width, w))
        h = max(1, min(height, int(math.floor(r * height * width / w))))
        top = int(torch.randint(height - h + 1, ()).item())
        left = int(torch.randint(width - w + 1, ()).item())
        return F.crop(img, top, left, h, w)

    def extra_repr(self) -> str:
        return f"area={self.area}"


def _finish(height: int, width: int) -> list:
    return [
        v2.Resize((height, width), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def train_transform(height: int, width: int, flip: bool = True) -> v2.Compose:
    """Training transform: random horizontal flip, resize to (height, width), normalise.

    Paper: docs/paper.md "Supervised pretraining" (384x128 in the paper presets; 64x32 on a CPU).

    Shape:
        output (3, height, width), float32.
    """
    _check_size(height, width)
    ops: list = [v2.ToImage()]
    if flip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops + _finish(height, width))


def test_transform(height: int, width: int) -> v2.Compose:
    """Evaluation transform: resize to (height, width) and normalise; nothing random.

    Shape:
        output (3, height, width), float32.
    """
    _check_size(height, width)
    return v2.Compose([v2.ToImage()] + _finish(height, width))


def pseudo_pair_transform(
    height: int,
    width: int,
    jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.1),
    degrees: float = 10.0,
    area: tuple[float, float] = (0.70, 0.95),
) -> v2.Compose:
    """PAUL's pseudo-pair view of an image: the same person as the network might see it in
    another camera, made without labels.

    Colour jitter (brightness, contrast, saturation, hue), a random rotation up to
    ``degrees``, a random crop keeping ``area`` of the image (:class:`RandomAreaCrop`), a
    random horizontal flip, resize to (height, width), ImageNet normalisation - the order of
    the official code.

    Paper: docs/paper.md "Unsupervised training".

    Shape:
        output (3, height, width), float32.

    Taught in: notebooks/01_data_loading.ipynb.
    """
    _check_size(height, width)
    b, c, s, h = jitter
    return v2.Compose(
        [
            v2.ToImage(),
            v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h),
            v2.RandomRotation(degrees),
            RandomAreaCrop(area),
            v2.RandomHorizontalFlip(),
            *_finish(height, width),
        ]
    )


def denormalize(img: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation for display: values clipped to [0, 1].

    Shape:
        img (..., 3, H, W) -> same shape.
    """
    mean = torch.tensor(IMAGENET_MEAN, device=img.device, dtype=img.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=img.device, dtype=img.dtype).view(3, 1, 1)
    return (img * std + mean).clamp(0, 1)
