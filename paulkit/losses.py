"""PAUL's losses as pure functions of tensors (docs/paper.md "Supervised pretraining" and
"Unsupervised training").

- :func:`pedal_loss`: PEDAL, the patch-based discriminative feature learning loss: each
  batch patch against every slot of the patch memory.
- :func:`ipfl_loss`: IPFL, the image-level feature learning loss with cycle ranking.
- :func:`patch_cross_entropy` and :func:`triplet_loss`: supervised pretraining.

The memories never receive gradients: ``bank`` and ``centers`` are treated as constants.
Everything is vectorised (no Python loop over samples, slots or patches) and runs on any
device.

Taught in: notebooks/03_pedal_loss.ipynb, notebooks/04_ipfl_loss.ipynb,
notebooks/05_source_pretraining.ipynb.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["pedal_loss", "ipfl_loss", "patch_cross_entropy", "triplet_loss"]


# --------------------------------------------------------------------------- PEDAL


def _check_pedal(
    patch_feats: torch.Tensor,
    bank: torch.Tensor,
    index: torch.Tensor,
    scale: float,
    k: int,
) -> None:
    if patch_feats.dim() != 3:
        raise ValueError(f"patch_feats must be (B, P, D), got shape {tuple(patch_feats.shape)}")
    if patch_feats.shape[0] == 0:
        raise ValueError("patch_feats is an empty batch (B = 0): PEDAL needs at least one image")
    if bank.dim() != 3 or bank.shape[1:] != patch_feats.shape[1:]:
        raise ValueError(
            f"bank must be (N, P, D) with P, D = {tuple(patch_feats.shape[1:])} like "
            f"patch_feats, got shape {tuple(bank.shape)}"
        )
    n = bank.shape[0]
    if index.dim() != 1 or index.shape[0] != patch_feats.shape[0]:
        raise ValueError(
            f"index must be (B,) = ({patch_feats.shape[0]},), the batch images' memory slots, "
            f"got shape {tuple(index.shape)}"
        )
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(f"index must hold integers, got dtype {index.dtype}")
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"index out of range: values {lo}..{hi} for a bank of N = {n} slots")
    if not 1 <= k <= n - 1:
        raise ValueError(
            f"k must be between 1 and N - 1 = {n - 1} (the slots other than the image's own), "
            f"got {k}"
        )
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")


class _Pedal(torch.autograd.Function):
    """PEDAL with a hand-written backward: one matrix product per patch each way.

    With z_j = s (2 f.m_j - ||m_j||^2) = -s d_j + s ||f||^2 (the last term is the same for
    every j and cancels) and p = softmax(z) over the slots j != own:

        L = log sum_j exp(z_j) - log sum_{j in S} exp(z_j) = -log sum_{j in S} p_j,
        dL/df = 2 s (sum_j p_j m_j - sum_{j in S} q_j m_j),   q_j = p_j / sum_S p.

    So the forward makes the (P, B, N) tensor once (a product), rescales it in place, takes
    one softmax and one top-k; the backward is one product p @ M plus k gathered rows.
    """

    @staticmethod
    def forward(ctx, feats, bank_pnd, sq_norms, own, scale, k):  # type: ignore[override]
        # feats (P, B, D); bank_pnd (P, N, D); sq_norms (P, N); own (B,)
        p, b, _ = feats.shape
        with torch.autocast(device_type=feats.device.type, enabled=False):
            z = torch.bmm(feats * (2.0 * scale), bank_pnd.transpose(1, 2))  # (P, B, N)
            z.sub_(sq_norms.unsqueeze(1), alpha=scale)
            z.scatter_(2, own.view(1, b, 1).expand(p, b, 1), float("-inf"))  # not its own
            prob = torch.softmax(z, dim=-1)
            del z
            top, idx = prob.topk(k, dim=-1)  # the k nearest slots (largest p: smallest d)
            mass = top.sum(-1)  # (P, B), >= 1/N: log never sees 0
        ctx.save_for_backward(prob, idx, top / mass.unsqueeze(-1), bank_pnd)
        ctx.scale = scale
        return -mass.log().mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        prob, idx, q, bank_pnd = ctx.saved_tensors
        p, b, k = idx.shape
        d = bank_pnd.shape[-1]
        with torch.autocast(device_type=prob.device.type, enabled=False):
            near = torch.gather(bank_pnd, 1, idx.reshape(p, b * k, 1).expand(p, b * k, d))
            grad = torch.bmm(prob, bank_pnd)
            grad -= torch.einsum("pbk,pbkd->pbd", q, near.view(p, b, k, d))
            grad *= grad_out * (2.0 * ctx.scale / (p * b))
        return grad, None, None, None, None, None


def pedal_loss(
    patch_feats: torch.Tensor,
    bank: torch.Tensor,
    index: torch.Tensor,
    scale: float = 15.0,
    k: int = 10,
) -> torch.Tensor:
    """PEDAL: pull each patch towards its k nearest memory slots of other images.

    For patch p of batch image i, with d_j = ||f_p(i) - M[j, p]||^2 over every slot j but
    i's own and S the k smallest:

        L(i, p) = log sum_{j != i} exp(-s d_j) - log sum_{j in S} exp(-s d_j)

    averaged over images and patches (docs/paper.md "PEDAL"). Computed stably (a softmax, never a
    raw exponential) and with a fused backward; the bank gets no gradient.

    Args:
        patch_feats: the batch images' patch features (first views).
        bank: the patch memory, already updated with this batch (``PatchMemory.bank``).
        index: each batch image's own slot in the bank (its data set index).
        scale: s (15 on Market-1501, 5 on DukeMTMC-reID).
        k: how many nearest slots form the positive set S.

    Shape:
        - patch_feats: (B, P, D)
        - bank: (N, P, D)
        - index: (B,)
        - output: scalar

    Non-finite features give a non-finite loss (no check here: it would synchronise the GPU
    every step); training stops at the first non-finite loss with one line.

    Taught in: notebooks/03_pedal_loss.ipynb.
    """
    _check_pedal(patch_feats, bank, index, scale, k)
    dtype = torch.promote_types(torch.promote_types(patch_feats.dtype, bank.dtype), torch.float32)
    bank_pnd = bank.detach().to(dtype).transpose(0, 1)  # (P, N, D): no copy for PatchMemory
    # The slots' squared norms, computed here every step (one pass over the bank). A cache
    # kept by PatchMemory would save that pass but differ in the last bits from what the
    # published runs computed, so there is one path: this one (docs/benchmarks.md).
    sq = torch.linalg.vector_norm(bank_pnd, dim=-1).square_()
    feats = patch_feats.to(dtype).transpose(0, 1)  # (P, B, D)
    own = index.to(bank.device, torch.long)
    return _Pedal.apply(feats, bank_pnd, sq, own, float(scale), int(k))


# --------------------------------------------------------------------------- IPFL


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # ||a_i - b_j||^2 through one product: for rankings only (no gradient needed).
    return (a.square().sum(1)[:, None] + b.square().sum(1)[None, :] - 2.0 * a @ b.t()).clamp_min_(0)


def _trusted(centers: torch.Tensor, nearest: int) -> torch.Tensor:
    # trusted[j, b]: c_b is not among the `nearest` centres closest to c_j (c_j itself
    # included), so c_j may be taken as a different person than image b (cycle ranking).
    dist = _sq_dists(centers, centers).fill_diagonal_(-1.0)  # c_j heads its own list
    near = dist.topk(min(nearest, centers.shape[0]), dim=1, largest=False).indices
    return torch.ones_like(dist, dtype=torch.bool).scatter_(1, near, False)


def ipfl_loss(
    views: torch.Tensor,
    centers: torch.Tensor,
    num_views: int = 2,
    margin: float = 2.0,
    max_iter: int = 15,
    nearest: int = 3,
    fallback_zero: bool = True,
    owner_offset: int | None = None,
) -> torch.Tensor:
    """IPFL: each view closer to its own image's centre than to a trusted other centre.

    For view x of image b: d_pos = ||x - c_b|| (Euclidean, not squared). The other batch
    centres, nearest to x first, are walked (at most ``max_iter``); candidate c_j is
    *trusted* as another person when c_b is not among the ``nearest`` centres closest to c_j
    (the list includes c_j itself): cycle ranking. The first trusted candidate gives
    d_neg = ||x - c_j||. Loss per view: max(0, margin + d_pos - d_neg), averaged over the
    B*num_views views (docs/paper.md "IPFL").

    Args:
        views: the image-level features of the batch views, image-major (view v of image b
            at row b*num_views + v).
        centers: the batch images' centres (``ImageMemory.update``'s result); no gradient.
        num_views: views per image.
        margin: the hinge margin (2 in the paper).
        max_iter: how many nearest candidates the cycle ranking may walk.
        nearest: how many nearest centres a candidate's list holds.
        fallback_zero: when no candidate is trusted, use d_neg = 0 as the official code does
            (the view is then only pulled towards its centre). False: such a view adds 0 to
            the loss (the mean is still over all views).
        owner_offset: for several processes (``paulkit.distributed``): ``views`` are then only
            this process's b images, whose centres are rows ``owner_offset`` to
            ``owner_offset + b - 1`` of ``centers``, the centres of the whole global batch
            (gathered), so the negatives come from every process's images. The mean is over
            the b*num_views local views. None (default): ``views`` hold every image of ``centers``.

    Shape:
        - views: (B*num_views, E), or (b*num_views, E) with ``owner_offset``
        - centers: (B, E)
        - output: scalar

    Taught in: notebooks/04_ipfl_loss.ipynb.
    """
    if centers.dim() != 2 or views.dim() != 2 or views.shape[1] != centers.shape[1]:
        raise ValueError(
            f"views must be (B*num_views, E) and centers (B, E) with the same E, got "
            f"{tuple(views.shape)} and {tuple(centers.shape)}"
        )
    b = centers.shape[0]
    if b < 1:
        raise ValueError("centers has no image: IPFL needs a non-empty batch")
    if owner_offset is None and (num_views < 1 or views.shape[0] != b * num_views):
        raise ValueError(
            f"num_views = {num_views} views per image does not fit: views has {views.shape[0]} rows and "
            f"centers {b} images (need B*num_views rows, image-major)"
        )
    first, local = (
        (0, b) if owner_offset is None else (owner_offset, views.shape[0] // max(num_views, 1))
    )
    if owner_offset is not None and not (
        num_views >= 1
        and local >= 1
        and views.shape[0] == local * num_views
        and 0 <= first <= b - local
    ):
        raise ValueError(
            f"owner_offset = {owner_offset}: views has {views.shape[0]} rows (num_views = {num_views} views "
            f"per image) and centers {b} images; the local images must be whole (b*num_views rows) "
            f"and sit inside centers (0 <= owner_offset <= B - b)"
        )
    if max_iter < 1 or nearest < 1:
        raise ValueError(f"max_iter and nearest must be >= 1, got {max_iter}, {nearest}")
    centers = centers.detach().to(views.dtype)
    owner = torch.arange(first, first + local, device=views.device).repeat_interleave(num_views)
    with torch.no_grad():  # the ranking: which centre is each view's trusted negative
        if b == 1:  # a one-image batch (a last partial batch): no candidate, the fallback
            found, neg = torch.zeros_like(owner, dtype=torch.bool), owner
        else:
            others = _sq_dists(views.detach(), centers).scatter_(1, owner[:, None], float("inf"))
            cand = others.topk(min(max_iter, b - 1), dim=1, largest=False).indices  # nearest
            ok = _trusted(centers, nearest)[cand, owner[:, None]]  # (V, walk)
            found = ok.any(1)
            neg = cand.gather(1, ok.to(torch.uint8).argmax(1, keepdim=True)).squeeze(1)
    # The two distances that carry gradient, computed exactly (Euclidean, not squared).
    d_pos = torch.linalg.vector_norm(views - centers[owner], dim=1)
    d_neg = torch.linalg.vector_norm(views - centers[neg], dim=1)
    d_neg = torch.where(found, d_neg, torch.zeros_like(d_neg))
    hinge = F.relu(margin + d_pos - d_neg)
    if not fallback_zero:
        hinge = torch.where(found, hinge, torch.zeros_like(hinge))
    return hinge.mean()


# --------------------------------------------------------------------------- supervised


def patch_cross_entropy(logits: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every patch's classifier, summed over patches, mean over the batch.

    Shape:
        - logits: (B, P, C)
        - pids: (B,) identity labels in 0..C-1
        - output: scalar

    Taught in: notebooks/05_source_pretraining.ipynb.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, P, C), got shape {tuple(logits.shape)}")
    b, p, c = logits.shape
    if pids.dim() != 1 or pids.shape[0] != b:
        raise ValueError(f"pids must be (B,) = ({b},), got shape {tuple(pids.shape)}")
    if b == 0:
        raise ValueError("logits: an empty batch")
    lo, hi = int(pids.min()), int(pids.max())
    if lo < 0 or hi >= c:
        raise ValueError(
            f"pids out of range: values {lo}..{hi} for C = {c} classes (relabel to 0..C-1)"
        )
    target = pids.long()[:, None].expand(b, p)
    return F.cross_entropy(logits.transpose(1, 2), target) * p


def triplet_loss(
    embeddings: torch.Tensor,
    pids: torch.Tensor,
    margin: float = 1.0,
    positive: str = "nearest",
    normalize: bool = True,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Batch triplet loss on (L2-normalised) embeddings, the official PAUL variant.

    For each anchor: the hardest (nearest) negative, and by default the *nearest* positive
    other than itself (the official code); ``positive="farthest"`` gives the usual batch-hard
    form. Distances are sqrt(||a - b||^2 + eps). Loss: mean over anchors of
    max(0, margin + d_pos - d_neg); anchors without a positive or a negative in the batch are
    left out of the mean.

    Shape:
        - embeddings: (B, F)
        - pids: (B,)
        - output: scalar

    Taught in: notebooks/05_source_pretraining.ipynb.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (B, F), got shape {tuple(embeddings.shape)}")
    b = embeddings.shape[0]
    if pids.dim() != 1 or pids.shape[0] != b:
        raise ValueError(f"pids must be (B,) = ({b},), got shape {tuple(pids.shape)}")
    if positive not in ("nearest", "farthest"):
        raise ValueError(f"positive must be 'nearest' or 'farthest', got {positive!r}")
    x = F.normalize(embeddings, dim=1) if normalize else embeddings
    sq = x.square().sum(1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(0.0).add(eps).sqrt()
    same = pids[:, None] == pids[None, :]
    pos_mask = same & ~torch.eye(b, dtype=torch.bool, device=x.device)
    inf = torch.full_like(dist, float("inf"))
    if positive == "nearest":
        d_pos = torch.where(pos_mask, dist, inf).amin(1)
    else:
        d_pos = torch.where(pos_mask, dist, -inf).amax(1)
    d_neg = torch.where(same, inf, dist).amin(1)
    valid = pos_mask.any(1) & (~same).any(1)
    if not bool(valid.any()):
        raise ValueError(
            "pids: the batch needs an identity with at least two images and a second identity "
            "(every anchor lacks a positive or a negative)"
        )
    return F.relu(margin + d_pos[valid] - d_neg[valid]).mean()
