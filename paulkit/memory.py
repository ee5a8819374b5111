"""PAUL's two memories: one slot per training image, updated by momentum, never by gradients.

docs/paper.md "Unsupervised training". The :class:`PatchMemory` holds every training image's P
patch features (PEDAL compares the batch's patches with all of them); the
:class:`ImageMemory` holds one centre per image, the running mean of its image-level
features (IPFL's references). Both are indexed by the data set index of the image, fill a
slot on first sight (the initialisation pass over the training set) and afterwards move it
towards the new feature with momentum m:

    slot <- (1 - m) * slot + m * feature        (no re-normalisation)

They are small ``nn.Module`` s holding buffers only, so ``.to(device)``, ``state_dict()``
and ``load_state_dict()`` work as for any module, and no optimiser ever sees them.

Taught in: notebooks/03_pedal_loss.ipynb (patch memory), notebooks/04_ipfl_loss.ipynb
(image memory).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PatchMemory", "ImageMemory"]


def _check_momentum(momentum: float) -> None:
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")


def _check_index(index: torch.Tensor, num_images: int) -> torch.Tensor:
    if not isinstance(index, torch.Tensor) or index.dim() != 1:
        raise ValueError(f"index must be a 1-d tensor of data set indices, got {index!r}")
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(f"index must hold integers, got dtype {index.dtype}")
    if index.numel() == 0:
        raise ValueError("index is empty: a batch needs at least one image")
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= num_images:
        raise ValueError(
            f"index out of range: values {lo}..{hi} for a memory of {num_images} images "
            "(indices are data set positions 0..N-1)"
        )
    if torch.unique(index).numel() != index.numel():
        raise ValueError("index holds the same image twice; each image may appear once per update")
    return index.long()


class PatchMemory(nn.Module):
    """One slot per training image and patch: the bank PEDAL compares patches with.

    Args:
        num_images: N, the training images (slots are indexed by data set position).
        num_patches: P.
        dim: D, the patch feature size.
        momentum: m of the update (0.1 in the paper).

    Attributes:
        bank: (N, P, D) the slots; zero until first seen. Stored patch-major (each patch's
            N x D matrix is contiguous), which is what PEDAL's per-patch products read.
        seen: (N,) bool, whether each slot was filled.

    Shape:
        - index: (B,) int
        - patch_feats: (B, P, D)

    Taught in: notebooks/03_pedal_loss.ipynb.
    """

    bank: torch.Tensor
    seen: torch.Tensor

    def __init__(
        self, num_images: int, num_patches: int = 6, dim: int = 256, momentum: float = 0.1
    ) -> None:
        super().__init__()
        if num_images < 1 or num_patches < 1 or dim < 1:
            raise ValueError(
                f"num_images, num_patches and dim must be >= 1, got {num_images}, "
                f"{num_patches}, {dim}"
            )
        _check_momentum(momentum)
        self.num_images, self.num_patches, self.dim = num_images, num_patches, dim
        self.momentum = momentum
        # (N, P, D) view of a (P, N, D) storage: index_copy_ and state dicts see (N, P, D).
        self.register_buffer("bank", torch.zeros(num_patches, num_images, dim).transpose(0, 1))
        self.register_buffer("seen", torch.zeros(num_images, dtype=torch.bool))

    @torch.no_grad()
    def update(self, index: torch.Tensor, patch_feats: torch.Tensor) -> None:
        """Fill or momentum-update the slots of a batch (call it before the loss).

        Args:
            index: the batch images' data set indices, each at most once.
            patch_feats: their patch features (first views); detached here.
        """
        index = _check_index(index, self.num_images)
        want = (index.numel(), self.num_patches, self.dim)
        if patch_feats.dim() != 3 or tuple(patch_feats.shape) != want:
            raise ValueError(
                f"patch_feats must be (B, P, D) = {want} for this memory and index, "
                f"got {tuple(patch_feats.shape)}"
            )
        index = index.to(self.bank.device)
        new = patch_feats.detach().to(self.bank.device, self.bank.dtype)
        old = self.bank.index_select(0, index)
        seen = self.seen.index_select(0, index).view(-1, 1, 1)
        m = self.momentum
        slots = torch.where(seen, old * (1.0 - m) + new * m, new)
        self.bank.index_copy_(0, index, slots)
        self.seen.index_fill_(0, index, True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "bank"
        if key in state_dict and tuple(state_dict[key].shape) != tuple(self.bank.shape):
            raise ValueError(
                f"the saved patch memory is {tuple(state_dict[key].shape)} (N, P, D), this one "
                f"{tuple(self.bank.shape)}: build PatchMemory with the same images and sizes"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"num_images={self.num_images}, num_patches={self.num_patches}, dim={self.dim}, "
            f"momentum={self.momentum}"
        )


class ImageMemory(nn.Module):
    """One centre per training image: the running mean of its image-level features.

    Args:
        num_images: N.
        dim: E, the image-level feature size (P x 128 = 768 in the paper).
        momentum: m of the update (0.1 in the paper).

    Attributes:
        centers: (N, E), zero until first seen.
        seen: (N,) bool.

    Shape:
        - index: (B,) int
        - embeddings: (B*num_views, E), image-major (view v of image b at row b*num_views + v)
        - output of :meth:`update`: (B, E), the batch's centres after the update

    Taught in: notebooks/04_ipfl_loss.ipynb.
    """

    centers: torch.Tensor
    seen: torch.Tensor

    def __init__(self, num_images: int, dim: int = 768, momentum: float = 0.1) -> None:
        super().__init__()
        if num_images < 1 or dim < 1:
            raise ValueError(f"num_images and dim must be >= 1, got {num_images}, {dim}")
        _check_momentum(momentum)
        self.num_images, self.dim, self.momentum = num_images, dim, momentum
        self.register_buffer("centers", torch.zeros(num_images, dim))
        self.register_buffer("seen", torch.zeros(num_images, dtype=torch.bool))

    @torch.no_grad()
    def update(
        self, index: torch.Tensor, embeddings: torch.Tensor, num_views: int = 2
    ) -> torch.Tensor:
        """Move each batch image's centre towards the mean of its ``num_views`` views.

        A centre not seen before is set to that mean (created on first sight).

        Returns:
            The batch's centres after the update, (B, E), without gradient.
        """
        index = _check_index(index, self.num_images)
        if num_views < 1:
            raise ValueError(f"num_views (views per image) must be >= 1, got {num_views}")
        b = index.numel()
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(
                f"embeddings must be (B*num_views, E) with E = {self.dim}, got {tuple(embeddings.shape)}"
            )
        if embeddings.shape[0] != b * num_views:
            raise ValueError(
                f"embeddings has {embeddings.shape[0]} rows, but index has {b} images and num_views = "
                f"{num_views} views each (B*num_views = {b * num_views}); check num_views and the image-major order"
            )
        index = index.to(self.centers.device)
        mean = embeddings.detach().to(self.centers.device, self.centers.dtype)
        mean = mean.view(b, num_views, self.dim).mean(1)
        old = self.centers.index_select(0, index)
        seen = self.seen.index_select(0, index).view(-1, 1)
        m = self.momentum
        new = torch.where(seen, old * (1.0 - m) + mean * m, mean)
        self.centers.index_copy_(0, index, new)
        self.seen.index_fill_(0, index, True)
        return new

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "centers"
        if key in state_dict and tuple(state_dict[key].shape) != tuple(self.centers.shape):
            raise ValueError(
                f"the saved image memory is {tuple(state_dict[key].shape)} (N, E), this one "
                f"{tuple(self.centers.shape)}: build ImageMemory with the same images and size"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"num_images={self.num_images}, dim={self.dim}, momentum={self.momentum}"
