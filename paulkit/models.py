"""PatchNet: a backbone, a spatial-transformer patch generator and per-patch features.

docs/paper.md "Network: PatchNet". A ResNet-50 with its last stride set to 1 (or, for CPU
tutorials, a small stripe network) gives a feature map; the patch generator predicts one
affine matrix theta per patch (six full-width horizontal stripes at initialisation); each
theta samples the map (``affine_grid`` + ``grid_sample``, ``align_corners=True``), the sampled
patch map is average-pooled, reduced per patch (1x1 conv + BN) and L2-normalised into the
patch feature f_i.

Two exact rewrites make the model fast on a CPU without changing what it computes:

- Sampling and average pooling are both linear in the feature map, so the pooled patch is a
  weighted sum of the map's cells: :func:`pool_patches` builds the (P, h*w) bilinear weights
  from the thetas and applies them with one batched matrix product. It equals
  ``grid_sample`` + mean (:func:`sample_patches`) in value and gradient, without the
  P-times-larger patch maps and the slow ``grid_sample`` backward.
- A 1x1 convolution followed by BatchNorm on a pooled (1x1) map is a linear layer followed by
  BatchNorm1d; the P per-patch layers run as one batched product (:class:`PatchLinear`).

Taught in: notebooks/02_patchnet.ipynb.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHS",
    "PatchNetOutput",
    "PatchNet",
    "PatchGenerator",
    "PatchLinear",
    "PatchReduction",
    "stripe_thetas",
    "sample_patches",
    "pool_patches",
    "patch_pool_weights",
    "resnet_backbone",
    "small_backbone",
    "load_pretrained",
    "describe_state_dict",
]

ARCHS = ("resnet50", "resnet18", "small")


class PatchNetOutput(NamedTuple):
    """What :meth:`PatchNet.forward` returns, in every mode.

    Shape:
        - patch_feats: (B, P, D), each patch feature of unit L2 norm.
        - embedding: (B, P*E). Pretraining (``pretrain=True``): the per-patch embedding
          layers' outputs, concatenated (the triplet loss's input). Unsupervised
          (``pretrain=False``): the image-level feature, the cosine similarities of each
          f_i with the L2-normalised rows of its patch's embedding weight.
        - logits: (B, P, C) per-patch classifier outputs, or None without a classifier.
        - thetas: (B, P, 2, 3) the patch generator's affine matrices.
    """

    patch_feats: torch.Tensor
    embedding: torch.Tensor
    logits: torch.Tensor | None
    thetas: torch.Tensor


# --------------------------------------------------------------------------- patches


def stripe_thetas(num_patches: int = 6) -> torch.Tensor:
    """The affine matrices of ``num_patches`` full-width horizontal stripes.

    theta_i = [[1, 0, 0], [0, 1/P, t_i]] with t_i = -1 + (2i + 1)/P: for P = 6,
    t = -5/6, -3/6, -1/6, 1/6, 3/6, 5/6 (docs/paper.md, the patch generator's initial bias).

    Shape:
        (P, 2, 3).
    """
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    theta = torch.zeros(num_patches, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0 / num_patches
    theta[:, 1, 2] = torch.tensor([-1.0 + (2 * i + 1) / num_patches for i in range(num_patches)])
    return theta


def _check_thetas(feature_map: torch.Tensor, thetas: torch.Tensor) -> None:
    if feature_map.dim() != 4:
        raise ValueError(f"feature_map must be (B, C, h, w), got shape {tuple(feature_map.shape)}")
    if thetas.dim() != 4 or thetas.shape[-2:] != (2, 3) or thetas.shape[0] != feature_map.shape[0]:
        raise ValueError(
            f"thetas must be (B, P, 2, 3) with B = {feature_map.shape[0]} (the feature map's "
            f"batch), got shape {tuple(thetas.shape)}"
        )


def sample_patches(feature_map: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """Sample every patch map with ``affine_grid`` + ``grid_sample`` (the paper's way).

    All P patches are sampled in one ``grid_sample`` call: their grids are stacked along the
    height, so the input map is never copied. ``align_corners=True`` reproduces the PyTorch
    0.4 behaviour the official code ran with; the output has the map's own size.

    Args:
        feature_map: the backbone's map.
        thetas: one affine matrix per image and patch.

    Shape:
        - feature_map: (B, C, h, w)
        - thetas: (B, P, 2, 3)
        - output: (B, P, C, h, w)

    Taught in: notebooks/02_patchnet.ipynb.
    """
    _check_thetas(feature_map, thetas)
    b, c, h, w = feature_map.shape
    p = thetas.shape[1]
    grid = F.affine_grid(thetas.reshape(b * p, 2, 3), [b * p, c, h, w], align_corners=True)
    grid = grid.view(b, p * h, w, 2).to(feature_map.dtype)
    out = F.grid_sample(feature_map, grid, mode="bilinear", align_corners=True)
    return out.view(b, c, p, h, w).transpose(1, 2)


def _base_coords(n: int, device: torch.device) -> torch.Tensor:
    # affine_grid's normalised output coordinates with align_corners=True (0 when n == 1).
    if n == 1:
        return torch.zeros(1, device=device)
    return torch.linspace(-1.0, 1.0, n, device=device)


def _bilinear_rows(coord: torch.Tensor, n: int) -> torch.Tensor:
    # coord (..., S) in pixel units -> (..., S, n): the bilinear weight each sample gives each
    # of the n cells (zero outside the map: grid_sample's zeros padding). Written with floor
    # so that the gradient equals grid_sample's, also at integer coordinates.
    i0 = coord.floor()
    frac = (coord - i0).unsqueeze(-1)
    i0 = i0.unsqueeze(-1)
    cells = torch.arange(n, device=coord.device, dtype=coord.dtype)
    return (cells == i0) * (1.0 - frac) + (cells == i0 + 1.0) * frac


def patch_pool_weights(thetas: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The weight each feature-map cell has in each average-pooled patch.

    Sampling a patch map with bilinear ``grid_sample`` and averaging it over its h x w
    samples is a weighted sum of the map's cells; this returns those weights. Each sample s
    at (x_s, y_s) gives cell (r, c) the weight ty_s(r) * tx_s(c) (bilinear weights separate
    into rows and columns), so the weights are one batched product: Ty^T Tx / (h w).

    Shape:
        - thetas: (B, P, 2, 3)
        - output: (B, P, h, w), summing to at most 1 per patch (less where the patch leaves
          the map: zeros padding).
    """
    dev = thetas.device
    with torch.autocast(device_type=dev.type, enabled=False):
        theta = thetas.float()
        ys, xs = _base_coords(height, dev), _base_coords(width, dev)
        base = torch.stack(
            [
                xs.repeat(height),
                ys.repeat_interleave(width),
                torch.ones(height * width, device=dev),
            ],
            dim=-1,
        )  # (S, 3), row-major like affine_grid
        grid = torch.einsum("sk,bpjk->bpsj", base, theta)  # (B, P, S, 2): x_in, y_in
        ix = (grid[..., 0] + 1.0) / 2.0 * (width - 1)  # grid_sample unnormalisation
        iy = (grid[..., 1] + 1.0) / 2.0 * (height - 1)
        tx = _bilinear_rows(ix, width)  # (B, P, S, w)
        ty = _bilinear_rows(iy, height)  # (B, P, S, h)
        return torch.einsum("bpsr,bpsc->bprc", ty, tx) / float(height * width)


def pool_patches(feature_map: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """Average-pooled patch maps: ``sample_patches(feature_map, thetas).mean((-2, -1))``.

    Computed exactly, without building the patch maps: the bilinear weights of
    :func:`patch_pool_weights` applied with one batched matrix product. Gradients reach both
    the map and the thetas (the patch generator learns through them), equal to those of
    the ``grid_sample`` form.

    Shape:
        - feature_map: (B, C, h, w)
        - thetas: (B, P, 2, 3)
        - output: (B, P, C)

    Taught in: notebooks/02_patchnet.ipynb.
    """
    _check_thetas(feature_map, thetas)
    b, c, h, w = feature_map.shape
    weights = patch_pool_weights(thetas, h, w).to(feature_map.dtype)
    return torch.bmm(
        weights.reshape(b, -1, h * w), feature_map.reshape(b, c, h * w).transpose(1, 2)
    )


class PatchGenerator(nn.Module):
    """The spatial transformer that predicts one affine matrix per patch (docs/paper.md).

    conv 3x3 (C -> ``hidden_channels``, no padding) -> BN -> ReLU -> max-pool 3/2 (padding
    1) -> global average pool -> FC -> ReLU -> FC -> P x (2 x 3). The last FC starts with
    zero weights and the bias of :func:`stripe_thetas`: six full-width stripes.

    Args:
        in_channels: C, the backbone map's channels (2048 for ResNet-50).
        num_patches: P.
        hidden_channels: the conv's output channels (4096 in the paper).
        hidden_features: the first FC's output size (512 in the paper).

    Shape:
        - input: (B, C, h, w) with h, w >= 3
        - output: (B, P, 2, 3)
    """

    def __init__(
        self,
        in_channels: int,
        num_patches: int = 6,
        hidden_channels: int = 4096,
        hidden_features: int = 512,
    ) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.localization = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=3),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.fc_loc = nn.Sequential(
            nn.Linear(hidden_channels, hidden_features),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_features, num_patches * 6),
        )
        nn.init.kaiming_normal_(self.localization[0].weight, mode="fan_out", nonlinearity="relu")
        self.reset_stripes()

    @torch.no_grad()
    def reset_stripes(self) -> None:
        """Zero the last FC's weights and set its bias to the six stripes."""
        last = self.fc_loc[2]
        last.weight.zero_()
        last.bias.copy_(stripe_thetas(self.num_patches).flatten())

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        h, w = feature_map.shape[-2:]
        if h < 3 or w < 3:
            raise ValueError(
                f"the feature map is {h}x{w}, smaller than the patch generator's 3x3 "
                "convolution: feed larger images (e.g. at least 96x48 to a ResNet with last "
                "stride 1, 12x12 to the small backbone)"
            )
        z = self.localization(feature_map)
        z = F.adaptive_avg_pool2d(z, 1).flatten(1)
        return self.fc_loc(z).view(-1, self.num_patches, 2, 3)


# --------------------------------------------------------------------------- per-patch layers


class PatchLinear(nn.Module):
    """P independent linear layers applied at once with one batched product.

    Initialised like P separate ``nn.Linear`` (or 1x1 ``nn.Conv2d``) layers.

    Shape:
        - input: (B, P, in_features)
        - output: (B, P, out_features)
        - weight: (P, out_features, in_features); bias: (P, out_features)
    """

    def __init__(
        self, num_patches: int, in_features: int, out_features: int, bias: bool = True
    ) -> None:
        super().__init__()
        self.num_patches, self.in_features, self.out_features = (
            num_patches,
            in_features,
            out_features,
        )
        self.weight = nn.Parameter(torch.empty(num_patches, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_patches, out_features)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        for p in range(self.num_patches):
            nn.init.kaiming_uniform_(self.weight[p], a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bpi,poi->bpo", x, self.weight)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"num_patches={self.num_patches}, in_features={self.in_features}, "
            f"out_features={self.out_features}, bias={self.bias is not None}"
        )


class PatchReduction(nn.Module):
    """Per patch: 1x1 conv C -> D + BN (+ ReLU when pretraining), as one batched layer.

    On a pooled (1 x 1) patch a 1x1 convolution is a linear layer and BatchNorm2d is
    BatchNorm1d over the batch: ``linear`` holds the P convolutions, ``bn`` the P x D
    channels' statistics.

    Shape:
        - input: (B, P, C)
        - output: (B, P, D)
    """

    def __init__(self, num_patches: int, in_channels: int, dim: int, relu: bool) -> None:
        super().__init__()
        self.linear = PatchLinear(num_patches, in_channels, dim)
        self.bn = nn.BatchNorm1d(num_patches * dim)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p, _ = x.shape
        h = self.bn(self.linear(x).reshape(b, -1)).view(b, p, -1)
        return F.relu(h) if self.relu else h


# --------------------------------------------------------------------------- backbones


def _hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    from torchvision import models as tvm

    enum = {"resnet50": tvm.ResNet50_Weights, "resnet18": tvm.ResNet18_Weights}[arch]
    weights = enum.IMAGENET1K_V1  # the weights the official code started from
    target = _hub_file(weights.url)
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # offline: URLError, socket errors, a truncated file
        raise FileNotFoundError(
            f"ImageNet weights for {arch} are not available ({type(exc).__name__}: {exc}). "
            f"Download {weights.url} on a machine with internet and put it at {target} "
            f"(folder {target.parent}, the torch hub cache), or pass weights='<path to the "
            f".pth file>' to load it from anywhere, or weights=None to start from scratch"
        ) from None


def _load_local_weights(path: Path, arch: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist; give the torchvision ImageNet state dict of "
            f"{arch} (e.g. {os.path.basename(_imagenet_url(arch))}), 'imagenet' or None"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # random bytes, a truncated file, pickled objects
        raise ValueError(
            f"weights file {path} cannot be read ({type(exc).__name__}); give the torchvision "
            f"ImageNet state dict of {arch} (a .pth file), 'imagenet' or None"
        ) from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"weights file {path} does not hold a state dict")
    return dict(state)


def _imagenet_url(arch: str) -> str:
    from torchvision import models as tvm

    enum = {"resnet50": tvm.ResNet50_Weights, "resnet18": tvm.ResNet18_Weights}[arch]
    return enum.IMAGENET1K_V1.url


def resnet_backbone(
    arch: str = "resnet50", weights: str | os.PathLike | None = None, last_stride: int = 1
) -> tuple[nn.Sequential, int]:
    """A torchvision ResNet trunk (no pooling, no fc) and its output channels.

    ``last_stride=1`` sets the stride of layer4's first block to 1 (its strided conv and its
    downsample): the map of a 384x128 input grows from 12x4 to 24x8 (docs/paper.md).

    Args:
        arch: ``"resnet50"`` or ``"resnet18"``.
        weights: None (random), ``"imagenet"`` (torchvision's weights API; the error says
            which file to put where when offline), or a path to a torchvision state dict.
        last_stride: 1 (the paper) or 2 (torchvision's ResNet).
    """
    from torchvision import models as tvm

    if arch not in ("resnet50", "resnet18"):
        raise ValueError(f"arch must be 'resnet50' or 'resnet18' here, got {arch!r}")
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    net = getattr(tvm, arch)(weights=None)
    if weights is not None:
        if weights == "imagenet":
            state = _imagenet_state_dict(arch)
        else:
            state = _load_local_weights(Path(weights).expanduser(), arch)
        missing, unexpected = _key_diff(net.state_dict(), state)
        if missing or unexpected:
            raise ValueError(
                f"weights {weights} do not fit torchvision {arch}: missing {_few(missing)}, "
                f"unexpected {_few(unexpected)}; give the ImageNet state dict of {arch} "
                f"(e.g. {os.path.basename(_imagenet_url(arch))})"
            )
        net.load_state_dict(state)
    if last_stride == 1:
        block = net.layer4[0]
        strided = block.conv2 if arch == "resnet50" else block.conv1  # Bottleneck / BasicBlock
        strided.stride = (1, 1)
        block.downsample[0].stride = (1, 1)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    trunk = nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names))
    return trunk, net.fc.in_features


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def small_backbone(width: int = 32) -> tuple[nn.Sequential, int]:
    """A small stripe network for CPU tutorials and its output channels (8 x ``width``).

    Seven conv-BN-ReLU layers: a stride-2 stem, a stride-2 stage, 3x3 convolutions
    widening to 4 x ``width`` and a last 1x1 convolution to 8 x ``width``. The map is
    (H/4) x (W/4): 16 x 8 for the 64 x 32 tutorial images, with 256 channels at
    ``width=32``.
    """
    if width < 1:
        raise ValueError(f"small_width must be >= 1, got {width}")
    w = width
    trunk = nn.Sequential(
        OrderedDict(
            stem=_conv_bn_relu(3, w, stride=2),
            block1=_conv_bn_relu(w, w),
            block2=_conv_bn_relu(w, 2 * w, stride=2),
            block3=_conv_bn_relu(2 * w, 2 * w),
            block4=_conv_bn_relu(2 * w, 4 * w),
            block5=_conv_bn_relu(4 * w, 4 * w),
            block6=_conv_bn_relu(4 * w, 8 * w, kernel=1),
        )
    )
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return trunk, 8 * w


# --------------------------------------------------------------------------- PatchNet


class PatchNet(nn.Module):
    """PAUL's network: backbone -> patch generator -> P patch features (docs/paper.md).

    ``PatchNet()`` is the paper's unsupervised-stage network: ResNet-50 with last stride 1,
    6 patches, 256-d patch features, no classifier, no download (``weights=None``).

    Args:
        num_classes: C, the source identities of the per-patch classifiers; None: no
            classifier (the unsupervised stage).
        arch: ``"resnet50"`` (the paper), ``"resnet18"`` or ``"small"`` (CPU tutorials).
        weights: backbone weights: None, ``"imagenet"`` or a path to a torchvision state
            dict (ResNets only).
        num_patches: P.
        patch_dim: D, the patch feature size.
        embed_dim: E per patch, the embedding layer's output size (the image-level feature
            has P x E entries).
        last_stride: 1 (the paper) or 2; ResNets only.
        pretrain: True for supervised pretraining (ReLU after the reduction's BN; the
            embedding is the embedding layers' output), False for PAUL (no ReLU; the
            embedding is the cosine image-level feature).
        small_width: the small backbone's base width.
        stn_channels: the patch generator's conv width; None: 2 C for the ResNets (4096
            for ResNet-50, as in the paper), C / 4 for the small backbone (at 2 C the
            generator would cost more than the backbone on a CPU).
        stn_hidden: the patch generator's hidden FC size; None: C / 4 (512 for ResNet-50).

    As in the official code, the classifier and the pretraining embedding read the reduced
    feature before L2 normalisation; ``patch_feats`` are always normalised.

    Shape:
        - x: (B, 3, H, W)
        - output: :class:`PatchNetOutput`

    Taught in: notebooks/02_patchnet.ipynb.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        arch: str = "resnet50",
        weights: str | os.PathLike | None = None,
        num_patches: int = 6,
        patch_dim: int = 256,
        embed_dim: int = 128,
        last_stride: int = 1,
        pretrain: bool = False,
        small_width: int = 32,
        stn_channels: int | None = None,
        stn_hidden: int | None = None,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {num_classes}")
        for name, value in (("num_patches", num_patches), ("patch_dim", patch_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        if arch == "small":
            if weights is not None:
                raise ValueError(
                    "weights: the 'small' backbone has no pretrained weights; use weights=None "
                    "or arch='resnet50'"
                )
            self.backbone, channels = small_backbone(small_width)
        else:
            self.backbone, channels = resnet_backbone(arch, weights, last_stride)
        if stn_channels is None:  # the paper's 4096 = 2 x 2048; the small CPU net: C / 4
            stn_channels = max(channels // 4, 1) if arch == "small" else 2 * channels
        stn_hidden = stn_hidden or max(channels // 4, 1)
        self.hparams: dict[str, Any] = dict(
            num_classes=num_classes,
            arch=arch,
            num_patches=num_patches,
            patch_dim=patch_dim,
            embed_dim=embed_dim,
            last_stride=last_stride,
            pretrain=pretrain,
            small_width=small_width,
            stn_channels=stn_channels,
            stn_hidden=stn_hidden,
        )
        self.pretrain = pretrain
        self.num_patches = num_patches
        self.out_channels = channels
        self.patch_generator = PatchGenerator(channels, num_patches, stn_channels, stn_hidden)
        self.reduction = PatchReduction(num_patches, channels, patch_dim, relu=pretrain)
        self.classifier = (
            PatchLinear(num_patches, patch_dim, num_classes) if num_classes is not None else None
        )
        self.embed = PatchLinear(num_patches, patch_dim, embed_dim)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's map. Shape: (B, 3, H, W) -> (B, C, h, w)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be a batch of RGB images (B, 3, H, W), got {tuple(x.shape)}")
        return self.backbone(x)

    def _patch_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fmap = self.feature_map(x)
        thetas = self.patch_generator(fmap)
        h = self.reduction(pool_patches(fmap, thetas))
        return h, F.normalize(h, dim=-1), thetas

    def forward(self, x: torch.Tensor) -> PatchNetOutput:
        h, feats, thetas = self._patch_features(x)
        logits = self.classifier(h) if self.classifier is not None else None
        if self.pretrain:
            embedding = self.embed(h).flatten(1)
        else:
            rows = F.normalize(self.embed.weight, dim=-1)  # (P, E, D)
            embedding = torch.einsum("bpd,ped->bpe", feats, rows).flatten(1)
        return PatchNetOutput(feats, embedding, logits, thetas)

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """The retrieval descriptor: the P normalised patch features concatenated.

        Compare descriptors with cosine distance (docs/paper.md "Evaluation").
        Shape: (B, 3, H, W) -> (B, P*D).
        """
        return self._patch_features(x)[1].flatten(1)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by training role.

        ``backbone``; ``stn`` (the patch generator); ``new`` (the reduction and, when present,
        the classifier); ``embed`` (the embedding layers: trained in pretraining, frozen in
        PAUL, where the optimiser leaves them out).
        """
        new = list(self.reduction.parameters())
        if self.classifier is not None:
            new += list(self.classifier.parameters())
        return {
            "backbone": list(self.backbone.parameters()),
            "stn": list(self.patch_generator.parameters()),
            "new": new,
            "embed": list(self.embed.parameters()),
        }


# --------------------------------------------------------------------------- loading


def _few(keys: list[str], n: int = 4) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _key_diff(want: Mapping[str, Any], have: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    return missing, unexpected


def describe_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What a PatchNet state dict was built as, read from its keys and tensor shapes.

    Returns a dict with ``arch``, ``small_width``, ``num_patches``, ``patch_dim``,
    ``in_channels``, ``embed_dim``, ``num_classes``, ``stn_channels``, ``stn_hidden``.
    """
    if "backbone.layer1.0.conv3.weight" in state:
        arch = "resnet50"
    elif "backbone.layer1.0.conv1.weight" in state:
        arch = "resnet18"
    elif "backbone.stem.0.weight" in state:
        arch = "small"
    else:
        raise ValueError(
            "the state dict is not a PatchNet's (no backbone.* keys of a known arch); "
            f"its first keys: {_few(list(state))}"
        )
    try:
        p, d, c = state["reduction.linear.weight"].shape
        _, e, _ = state["embed.weight"].shape
        stn_channels = state["patch_generator.localization.0.weight"].shape[0]
        stn_hidden = state["patch_generator.fc_loc.0.weight"].shape[0]
    except KeyError as exc:
        raise ValueError(f"the state dict is not a PatchNet's: no {exc.args[0]!r}") from None
    cls = state.get("classifier.weight")
    return dict(
        arch=arch,
        small_width=state["backbone.stem.0.weight"].shape[0] if arch == "small" else 32,
        num_patches=p,
        patch_dim=d,
        in_channels=c,
        embed_dim=e,
        num_classes=None if cls is None else cls.shape[1],
        stn_channels=stn_channels,
        stn_hidden=stn_hidden,
    )


def _read_state(source: Mapping[str, torch.Tensor] | str | os.PathLike) -> dict[str, torch.Tensor]:
    if isinstance(source, (str, os.PathLike)):
        from paulkit import utils

        source = utils.load_checkpoint(source)  # weights_only=True, clear errors
        if isinstance(source, Mapping) and "model" in source and "format" in source:
            source = source["model"]  # a paulkit training checkpoint
    if not isinstance(source, Mapping):
        raise ValueError(
            f"state_dict_or_path must be a state dict or a file holding one, got {type(source)}"
        )
    return dict(source)


def load_pretrained(
    model: PatchNet, state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike
) -> PatchNet:
    """Load a PatchNet state dict (or a file: ``torch.load(weights_only=True)``) into ``model``.

    A pretraining state dict loads into an adaptation model (no classifier): its classifier
    weights are dropped. Anything else must fit exactly; otherwise a ValueError names the
    mismatch (arch, patch count, sizes, number of classes) before any weight is copied.

    Returns:
        ``model``, for chaining.
    """
    state = _read_state(state_dict_or_path)
    have = describe_state_dict(state)
    want = dict(model.hparams)
    want["in_channels"] = model.out_channels
    checks = ["arch", "num_patches", "patch_dim", "in_channels", "embed_dim"]
    checks += ["stn_channels", "stn_hidden"]
    if want["arch"] == "small":
        checks.append("small_width")
    if model.classifier is not None:
        checks.append("num_classes")
    diffs = [f"{k}: {have[k]!r} in the state dict, {want[k]!r} in the model" for k in checks]
    diffs = [d for k, d in zip(checks, diffs) if have[k] != want[k]]
    if diffs:
        raise ValueError(
            "the state dict does not fit this PatchNet (" + "; ".join(diffs) + "); build the "
            "model with the same settings it was trained with (describe_state_dict reads them)"
        )
    if model.classifier is None:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = _key_diff(model.state_dict(), state)
    if missing or unexpected:
        raise ValueError(
            f"the state dict does not fit this PatchNet: missing {_few(missing)}, "
            f"unexpected {_few(unexpected)}"
        )
    model.load_state_dict(state)
    return model
