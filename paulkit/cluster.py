"""Cluster Contrast: pseudo-labels by clustering, a memory of cluster centroids, one loss.

Where unsupervised re-id went after PAUL. Cluster Contrast (Dai et al., "Cluster Contrast
for Unsupervised Person Re-Identification", ACCV 2022; code alibaba/cluster-contrast-reid)
repeats, once per epoch:

1. extract the L2-normalised features of every training image (no labels);
2. :func:`jaccard_distance`: the k-reciprocal Jaccard distance of Zhong et al.,
   "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017, as the
   authors' ``compute_jaccard_distance`` computes it (k1 = 30, k2 = 6);
3. :func:`cluster_labels`: DBSCAN on the precomputed distances (eps 0.6, min_samples 4);
   outliers get -1 and sit that epoch out;
4. :class:`ClusterMemory`: one centroid per cluster, the L2-normalised mean feature of its
   images, moved towards each training feature that hits it, by momentum;
5. :func:`cluster_contrast_loss`: cross-entropy of each feature against all centroids at
   temperature 0.05 (InfoNCE with the cluster as the positive).

:func:`pseudo_label_quality` scores the pseudo-labels against hidden identities (NMI, ARI)
for display only: nothing in training reads it.

Training (:func:`train_cluster`, :func:`train_or_load`; ``python -m paulkit cluster``) runs
that loop from the source-pretrained PatchNet PAUL adapts, with the authors' P x K sampler
(:func:`pk_batches`), augmentation (:func:`train_transform`) and Adam, and checkpoints every
epoch (phase ``"cluster"``, :func:`settings`). Defaults: ``paulkit.config.ClusterConfig``.

scikit-learn (DBSCAN, the scores) is imported inside the functions that use it, so
``import paulkit`` does not pay for it.

Taught in: notebooks/09_beyond_paul.ipynb.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from paulkit import config as C
from paulkit import data as D
from paulkit import evaluation, models, runtime, train, utils
from paulkit.paths import shown_path

__all__ = [
    "jaccard_distance",
    "cluster_labels",
    "ClusterMemory",
    "cluster_contrast_loss",
    "pseudo_label_quality",
    "PHASE",
    "train_transform",
    "pk_batches",
    "pseudo_labels",
    "cluster_epoch",
    "settings",
    "check_checkpoint",
    "train_cluster",
    "load_model",
    "train_or_load",
]

# The default element budget of one block's temporaries in jaccard_distance: 2**22 elements,
# at most about 40 bytes each (int64 indices + float32 values), so about 170 MB a block.
DEFAULT_CHUNK = 2**22


# --------------------------------------------------------------------------- Jaccard distance


def _check_features(features: Any, name: str = "features") -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
        raise ValueError(f"{name} must be an (N, D) tensor, got {shape}")
    if not features.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point, got dtype {features.dtype}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} holds NaN or infinite values")


def _check_int(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _nearest(f: torch.Tensor, k: int, rows_per_block: int) -> torch.Tensor:
    """(N, k) indices of each image's k most similar images (itself included), nearest first.

    Ties in similarity go to the lower index: the order of a stable sort of each row. topk
    picks the k; a row whose k-th value is tied with an image left out is sorted in full.
    """
    n = f.shape[0]
    out = torch.empty(n, k, dtype=torch.long, device=f.device)
    for a in range(0, n, rows_per_block):
        sim = f[a : a + rows_per_block] @ f.t()  # (C, N)
        vals, idx = sim.topk(k, dim=1)  # values sorted descending
        # rows with more images at the k-th similarity than topk kept: exact stable order
        tied = (sim >= vals[:, -1:]).sum(1) > k
        # order the chosen k by (similarity desc, index asc)
        idx, perm = idx.sort(dim=1)
        order = vals.gather(1, perm).sort(dim=1, descending=True, stable=True).indices
        idx = idx.gather(1, order)
        if tied.any():
            rows = tied.nonzero().squeeze(1)
            full = sim[rows].sort(dim=1, descending=True, stable=True).indices[:, :k]
            idx[rows] = full
        out[a : a + rows_per_block] = idx
    return out


def _reciprocal_mask(rank: torch.Tensor, k: int, rows_per_block: int) -> torch.Tensor:
    """(N, k) bool: is ``rank[i, a]`` (a < k) k-reciprocal with i (i among its first k)?"""
    n = rank.shape[0]
    mask = torch.empty(n, k, dtype=torch.bool, device=rank.device)
    for a in range(0, n, rows_per_block):
        fwd = rank[a : a + rows_per_block, :k]  # (C, k)
        back = rank[:, :k][fwd]  # (C, k, k)
        me = torch.arange(a, a + fwd.shape[0], device=rank.device).view(-1, 1, 1)
        mask[a : a + rows_per_block] = (back == me).any(-1)
    return mask


def _segments(ptr: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand CSR-style segments: for each entry of ``which``, every position of its segment.

    Returns ``(owner, pos)``: ``owner[t]`` indexes ``which``, ``pos[t]`` is a position in
    ``ptr``'s storage, segment ``which[owner[t]]`` in order.
    """
    start, counts = ptr[which], ptr[which + 1] - ptr[which]
    owner = torch.repeat_interleave(torch.arange(which.numel(), device=ptr.device), counts)
    first = torch.cumsum(counts, 0) - counts  # where each segment starts in the output
    pos = torch.arange(owner.numel(), device=ptr.device) - first[owner] + start[owner]
    return owner, pos


def _ptr(sorted_keys: torch.Tensor, n: int) -> torch.Tensor:
    """CSR pointer (n + 1,) of keys sorted ascending in 0..n-1."""
    ptr = torch.zeros(n + 1, dtype=torch.long, device=sorted_keys.device)
    ptr[1:] = torch.cumsum(torch.bincount(sorted_keys, minlength=n), 0)
    return ptr


def jaccard_distance(
    features: torch.Tensor, k1: int = 30, k2: int = 6, chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """The k-reciprocal Jaccard distance Cluster Contrast clusters with (Zhong et al. 2017).

    As the authors' ``compute_jaccard_distance`` (alibaba/cluster-contrast-reid,
    ``clustercontrast/utils/faiss_rerank.py``) computes it, without faiss:

    1. the features are L2-normalised; each image's ``k1`` nearest images (itself included,
       as their faiss search returns it) by Euclidean distance on the unit sphere, i.e. by
       cosine similarity; ties go to the lower index (their search leaves ties unspecified).
       Similarities are float32 products: two equal features can differ by one ulp in
       another block size or BLAS, so exact duplicates may rank either way, as in faiss;
    2. R(i): the k-reciprocal neighbours, those of i's k1 nearest that have i among their
       own k1 nearest; R_half(i) the same with ``round(k1 / 2) + 1`` nearest (16 for
       k1 = 30: their ``k1/2`` set is sliced with ``:k1/2 + 1``);
    3. expansion: for each c in R(i), R_half(c) joins when more than 2/3 of it lies in R(i);
    4. V[i, j] = exp(-d_ij) / sum over the expansion set, with d_ij = 2 - 2 cos(i, j) the
       *squared* Euclidean distance of the unit features (what their ``softmax(-dist)``
       reads; not the max-normalised original distance of Zhong et al.'s reranking);
    5. local query expansion (skipped when k2 = 1, as theirs): V[i] <- the mean of V over
       i's k2 nearest (itself included);
    6. d_J(i, j) = 1 - sum_k min(V_ik, V_jk) / sum_k max(V_ik, V_jk), computed as
       ``1 - s / (2 - s)`` with ``s`` the sum of minima (rows of V sum to 1), clipped at 0.

    Everything is vectorised with torch (``topk``, gathers, ``index_add_``): no Python loop
    runs over images; loops run over blocks of rows only. V is kept sparse (its rows have a
    few dozen non-zeros), and the sum of minima joins each row's non-zeros with the column
    lists of V, as the authors' inverted index does.

    Memory: the dense (N, N) float32 result is the floor: 4.3 GB at MSMT17's N = 32,621
    (0.67 GB at Market's 12,936). Beyond it, every block's temporaries hold at most about
    ``chunk`` elements (each at most ~40 bytes: int64 indices and float32 values; the
    default 2**22 gives ~170 MB), and the sparse V takes ~20 bytes per non-zero (a few
    hundred MB at N = 32,621). A block is never smaller than one image's row.

    Args:
        features: the images' features (L2-normalised here; any scale accepted).
        k1: neighbours of the k-reciprocal sets (30 in the authors' training script).
        k2: neighbours of the local query expansion (6), at most k1.
        chunk: element budget of one block's temporaries (see Memory).

    Returns:
        (N, N) float32 distances in [0, 1] on ``features``' device; 0 on the diagonal.

    Shape:
        - features: (N, D), N >= k1
        - output: (N, N)

    Taught in: notebooks/09_beyond_paul.ipynb.
    """
    _check_features(features)
    n = features.shape[0]
    k1 = _check_int(k1, "k1", 1, n)
    k2 = _check_int(k2, "k2", 1, k1)
    chunk = _check_int(chunk, "chunk", 1)
    dev = features.device
    f = F.normalize(features.detach().float(), dim=1)
    k_half = int(np.around(k1 / 2)) + 1  # never above k1

    # 1-2: nearest neighbours and the two k-reciprocal masks over them
    rank = _nearest(f, k1, max(1, chunk // n))
    recip = _reciprocal_mask(rank, k1, max(1, chunk // (k1 * k1)))
    recip_half = _reciprocal_mask(rank, k_half, max(1, chunk // (k_half * k_half)))
    cand_h = torch.where(recip_half, rank[:, :k_half], n)  # R_half, n where absent
    size_h = recip_half.sum(1)  # |R_half(c)|

    # 3-4: expansion sets and their weights, as sparse rows (row, col, value)
    width = k1 + k1 * k_half
    rows_out, cols_out, vals_out = [], [], []
    per_block = max(1, chunk // max(k1 * k_half * k1, width * f.shape[1]))
    for a in range(0, n, per_block):
        r = torch.where(recip[a : a + per_block], rank[a : a + per_block], n)  # (C, k1)
        c = r.shape[0]
        safe = r.clamp(max=n - 1)
        h = cand_h[safe]  # (C, k1, k_half): R_half of each candidate
        inside = (h.unsqueeze(-1) == r.view(c, 1, 1, k1)).any(-1) & (h < n)
        overlap = inside.sum(-1)  # |R_half(c) ∩ R(i)|
        # "more than 2/3": in integers, 3 |∩| > 2 |R_half| (equal to the float test)
        accept = (r < n) & (3 * overlap > 2 * size_h[safe])
        h = torch.where(accept.unsqueeze(-1), h, n)
        members = torch.cat([r, h.view(c, -1)], 1).sort(dim=1).values  # (C, width)
        dup = torch.zeros_like(members, dtype=torch.bool)
        dup[:, 1:] = members[:, 1:] == members[:, :-1]
        members = torch.where(dup, n, members).sort(dim=1).values
        valid = members < n
        m = int(valid.sum(1).max())
        members, valid = members[:, :m], valid[:, :m]
        sims = torch.bmm(f[members.clamp(max=n - 1)], f[a : a + c].unsqueeze(-1)).squeeze(-1)
        logits = torch.where(valid, -(2.0 - 2.0 * sims), float("-inf"))
        weights = torch.softmax(logits, dim=1)
        rows_out.append((torch.arange(a, a + c, device=dev).unsqueeze(1).expand(c, m))[valid])
        cols_out.append(members[valid])
        vals_out.append(weights[valid])
    v_row, v_col, v_val = torch.cat(rows_out), torch.cat(cols_out), torch.cat(vals_out)
    del rows_out, cols_out, vals_out, cand_h, recip, recip_half

    # 5: local query expansion, V[i] <- mean of V over rank[i, :k2], summed block by block
    if k2 != 1:
        ptr = _ptr(v_row, n)
        row_len = ptr[1:] - ptr[:-1]
        # rows per block so that each block's expanded entries stay within the budget
        cost = row_len[rank[:, :k2]].sum(1)
        rows_out, cols_out, vals_out = [], [], []
        for a, b in _blocks(cost, chunk):
            src = rank[a:b, :k2].reshape(-1)
            owner, pos = _segments(ptr, src)
            row = a + owner // k2
            key = row * n + v_col[pos]
            uniq, inv = torch.unique(key, return_inverse=True)
            total = torch.zeros(uniq.numel(), device=dev).index_add_(0, inv, v_val[pos])
            rows_out.append(uniq // n)
            cols_out.append(uniq % n)
            vals_out.append(total / k2)
        v_row, v_col, v_val = torch.cat(rows_out), torch.cat(cols_out), torch.cat(vals_out)
        del rows_out, cols_out, vals_out

    # 6: sum of minima by joining each row's non-zeros with V's column lists
    by_col = torch.sort(v_col, stable=True).indices
    col_ptr = _ptr(v_col[by_col], n)
    col_rows, col_vals = v_row[by_col], v_val[by_col]
    col_len = col_ptr[1:] - col_ptr[:-1]
    row_ptr = _ptr(v_row, n)  # v_row is sorted: rows were produced in order
    cost = torch.zeros(n, dtype=torch.long, device=dev).index_add_(0, v_row, col_len[v_col])
    out = torch.empty(n, n, device=dev)
    for a, b in _blocks(cost, chunk, max_rows=max(1, chunk // n)):
        e = torch.arange(int(row_ptr[a]), int(row_ptr[b]), device=dev)  # row a..b-1 entries
        owner, pos = _segments(col_ptr, v_col[e])
        e = e[owner]
        flat = (v_row[e] - a) * n + col_rows[pos]
        mins = torch.minimum(v_val[e], col_vals[pos])
        s = torch.zeros((b - a) * n, device=dev).index_add_(0, flat, mins).view(b - a, n)
        out[a:b] = (1.0 - s / (2.0 - s)).clamp_(min=0.0)
    return out


def _blocks(cost: torch.Tensor, budget: int, max_rows: int | None = None):
    """Consecutive row ranges [a, b) whose summed cost stays within budget (>= 1 row each).

    One ``searchsorted`` per block, no loop over rows.
    """
    n = cost.numel()
    cum = torch.cumsum(cost, 0)
    a = 0
    while a < n:
        base = int(cum[a - 1]) if a else 0
        b = int(torch.searchsorted(cum, base + budget, right=True))
        b = max(a + 1, min(b, n if max_rows is None else a + max_rows))
        yield a, b
        a = b


# --------------------------------------------------------------------------- DBSCAN


def cluster_labels(dist: torch.Tensor | np.ndarray, eps: float = 0.6, min_samples: int = 4):
    """Pseudo-labels: DBSCAN on precomputed distances, as the authors' training script runs it.

    ``sklearn.cluster.DBSCAN(eps, min_samples, metric="precomputed")``: an image with at
    least ``min_samples`` images (itself included) within ``eps`` is a core point; clusters
    are the core points' connected neighbourhoods; the rest are outliers, labelled -1, and
    leave training for that epoch. Labels run 0..K-1.

    Args:
        dist: (N, N) symmetric distances, e.g. :func:`jaccard_distance`'s.
        eps: neighbourhood radius (0.6, the authors' default for Market-1501 and MSMT17).
        min_samples: core point size (4).

    Returns:
        (N,) int64 numpy array of cluster labels, -1 for outliers.

    Shape:
        - dist: (N, N)
        - output: (N,)
    """
    from sklearn.cluster import DBSCAN

    if isinstance(dist, torch.Tensor):
        dist = dist.detach().cpu().numpy()
    dist = np.asarray(dist)
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1] or dist.shape[0] == 0:
        raise ValueError(f"dist must be a square (N, N) distance matrix, got {dist.shape}")
    if not np.isfinite(dist).all() or (dist < 0).any():
        raise ValueError("dist must hold finite, non-negative distances")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    min_samples = _check_int(min_samples, "min_samples", 1)
    db = DBSCAN(eps=float(eps), min_samples=min_samples, metric="precomputed")
    return db.fit_predict(dist).astype(np.int64)


# --------------------------------------------------------------------------- memory and loss


def _check_labels(labels: Any, n: int, num_clusters: int | None = None) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise ValueError(f"labels must be a 1-d tensor or array of cluster ids, got {labels!r}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integers, got dtype {labels.dtype}")
    if labels.numel() != n:
        raise ValueError(f"labels has {labels.numel()} entries for {n} feature rows")
    if num_clusters is not None and n and (labels.min() < 0 or labels.max() >= num_clusters):
        raise ValueError(
            f"labels must be cluster ids in 0..{num_clusters - 1}, got "
            f"{int(labels.min())}..{int(labels.max())} (drop the outliers, -1, before training)"
        )
    return labels.long()


class ClusterMemory(nn.Module):
    """One centroid per cluster: the memory Cluster Contrast's loss compares features with.

    Built from the epoch's features and pseudo-labels: centroid k is the L2-normalised mean
    of cluster k's features (outliers, label -1, are dropped). During training,
    :meth:`update` moves the centroid of each feature's cluster towards it, one feature at
    a time in batch order, and re-normalises:

        c <- m * c + (1 - m) * f / ||f||,    c <- c / ||c||

    Note the authors' convention: ``m`` weights the *old* centroid (PatchMemory's momentum
    weights the new feature). The default m = 0.2 is their training script's (and their
    ``ClusterMemory``'s) default; the issue's "0.1-0.2" are both theirs (0.1 in some of
    their README commands). We keep 0.2 so that defaults are the authors' code. With it a
    centroid mostly follows its latest features; the re-normalisation keeps it on the sphere.

    Call order as theirs: the loss reads the centroids first, the update follows (their
    update runs in the backward pass): ``loss = cluster_contrast_loss(f, y,
    memory.centroids); loss.backward(); memory.update(f, y)``.

    Args:
        features: (N, D) the epoch's features (normalised here).
        labels: (N,) pseudo-labels, -1 for outliers, clusters 0..K-1 each non-empty.
        momentum: m above, in [0, 1].

    Attributes:
        centroids: (K, D) unit rows; a buffer, never seen by an optimiser.

    Shape:
        - features: (N, D); labels: (N,)
        - update's features: (B, D); labels: (B,) in 0..K-1

    Taught in: notebooks/09_beyond_paul.ipynb.
    """

    centroids: torch.Tensor

    def __init__(self, features: torch.Tensor, labels: Any, momentum: float = 0.2) -> None:
        super().__init__()
        _check_features(features)
        labels = _check_labels(labels, features.shape[0]).to(features.device)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        keep = labels >= 0
        if (labels < -1).any():
            raise ValueError("labels must be cluster ids >= 0 or -1 for outliers")
        if not keep.any():
            raise ValueError("every image is an outlier (-1): there is no cluster to remember")
        k = int(labels.max()) + 1
        counts = torch.bincount(labels[keep], minlength=k)
        if (counts == 0).any():
            empty = (counts == 0).nonzero().squeeze(1).tolist()[:5]
            raise ValueError(f"clusters must be numbered 0..K-1 without gaps; empty: {empty}")
        f = F.normalize(features.detach().float(), dim=1)
        sums = torch.zeros(k, f.shape[1], device=f.device).index_add_(0, labels[keep], f[keep])
        self.register_buffer("centroids", F.normalize(sums / counts.unsqueeze(1), dim=1))
        self.momentum = float(momentum)
        self.num_clusters, self.dim = k, f.shape[1]

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: Any) -> None:
        """Momentum-update the hit centroids, feature by feature in batch order.

        Equal to the authors' per-sample loop: a cluster hit several times in the batch is
        updated once per hit, in order. Vectorised over clusters: the loop runs over the
        hit number (at most the images per identity of a P x K batch), not over images.
        """
        _check_features(features)
        if features.shape[1] != self.dim:
            raise ValueError(f"features must be (B, {self.dim}), got {tuple(features.shape)}")
        labels = _check_labels(labels, features.shape[0], self.num_clusters)
        labels = labels.to(self.centroids.device)
        f = F.normalize(features.detach().to(self.centroids.device, torch.float32), dim=1)
        order = torch.sort(labels, stable=True).indices
        sorted_labels = labels[order]
        idx = torch.arange(labels.numel(), device=labels.device)
        new_group = torch.ones_like(sorted_labels, dtype=torch.bool)
        new_group[1:] = sorted_labels[1:] != sorted_labels[:-1]
        group_start = torch.cummax(torch.where(new_group, idx, 0), 0).values
        hit = torch.empty_like(idx)
        hit[order] = idx - group_start  # 0 for a cluster's first feature in the batch, ...
        m = self.momentum
        for t in range(int(hit.max()) + 1):
            sel = (hit == t).nonzero().squeeze(1)
            lab = labels[sel]
            c = m * self.centroids[lab] + (1.0 - m) * f[sel]
            self.centroids[lab] = F.normalize(c, dim=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "centroids"
        if key in state_dict and tuple(state_dict[key].shape) != tuple(self.centroids.shape):
            raise ValueError(
                f"the saved cluster memory is {tuple(state_dict[key].shape)} (K, D), this one "
                f"{tuple(self.centroids.shape)}: build it from the same pseudo-labels"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"num_clusters={self.num_clusters}, dim={self.dim}, momentum={self.momentum}"


def cluster_contrast_loss(
    features: torch.Tensor,
    labels: Any,
    centroids: torch.Tensor,
    temperature: float = 0.05,
) -> torch.Tensor:
    """Cluster Contrast's loss: each feature against every centroid, its own the positive.

    ``cross_entropy(normalize(features) @ centroids.T / temperature, labels)``, averaged
    over the batch. The features are L2-normalised first, as the authors' memory does; the
    centroids are constants (no gradient reaches them).

    Args:
        features: the batch's features (with gradient).
        labels: their pseudo-labels, 0..K-1 (no outliers).
        centroids: (K, D), e.g. ``ClusterMemory.centroids``.
        temperature: tau (0.05, the authors' default).

    Returns:
        Scalar loss.

    Shape:
        - features: (B, D); labels: (B,); centroids: (K, D)
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (B, D) tensor, got {features!r:.80}")
    if not isinstance(centroids, torch.Tensor) or centroids.dim() != 2:
        raise ValueError("centroids must be a (K, D) tensor")
    if centroids.shape[1] != features.shape[1]:
        raise ValueError(
            f"features are (B, {features.shape[1]}) but centroids (K, {centroids.shape[1]})"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    labels = _check_labels(labels, features.shape[0], centroids.shape[0])
    logits = F.normalize(features, dim=1) @ centroids.detach().t() / temperature
    return F.cross_entropy(logits, labels.to(features.device))


# --------------------------------------------------------------------------- diagnostics


def pseudo_label_quality(labels: Any, true_ids: Any) -> dict[str, float | int]:
    """How well pseudo-labels recover hidden identities: for display only, never training.

    Each outlier (-1) counts as a cluster of its own (it groups no image with another).

    Returns:
        ``{"nmi", "ari", "num_clusters", "outlier_share"}``: normalised mutual information
        and adjusted Rand index (scikit-learn; 1 is perfect), the clusters found, and the
        share of images left out as outliers.

    Shape:
        - labels, true_ids: (N,)
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    true_ids = np.asarray(true_ids.cpu() if isinstance(true_ids, torch.Tensor) else true_ids)
    if labels.ndim != 1 or labels.shape != true_ids.shape or labels.size == 0:
        raise ValueError(
            f"labels and true_ids must be 1-d of the same non-zero length, got {labels.shape} "
            f"and {true_ids.shape}"
        )
    labels = labels.astype(np.int64)
    out = labels < 0
    k = int(labels.max()) + 1 if (~out).any() else 0
    singles = labels.copy()
    singles[out] = k + np.arange(int(out.sum()))  # each outlier its own cluster
    return {
        "nmi": float(normalized_mutual_info_score(true_ids, singles)),
        "ari": float(adjusted_rand_score(true_ids, singles)),
        "num_clusters": k,
        "outlier_share": float(out.mean()),
    }


# --------------------------------------------------------------------------- training
#
# The loop, as the authors' ``examples/cluster_contrast_train_usl.py`` runs it, from the
# source-pretrained PatchNet that PAUL adapts (paulkit.train's "pretrain" checkpoint), on the
# same target training images, evaluated by the same evaluator. Per epoch:
# features (eval mode) -> Jaccard distance -> DBSCAN -> ClusterMemory -> P x K batches of the
# clustered images -> loss and momentum update. Checkpointed after every epoch.

PHASE = "cluster"
# seed_key streams of Cluster Contrast's own (paulkit.train uses 0, 1, 2 for PAUL's)
_SAMPLER, _AUGMENT = 10, 11
# what Cluster Contrast's checkpoint does not depend on: when it is evaluated, and its number
# of epochs (more continue a checkpoint; fewer are refused)
_NOT_HASHED = ("epochs", "eval_every")


def train_transform(height: int, width: int, pad: int = 10, erasing: float = 0.5):
    """The authors' training augmentation: resize, flip, pad and crop back, random erasing.

    ``Resize``, ``RandomHorizontalFlip``, ``Pad(pad)`` (black), ``RandomCrop``, normalise
    with the ImageNet statistics, ``RandomErasing(erasing)`` of 2-40 % of the area, aspect
    0.3-3.3, filled with the ImageNet mean (theirs: 10 px at 256x128; the CPU presets pad
    2 px at 64x32). Resizing is paulkit's bilinear (theirs: bicubic), as in its test
    transform.

    Shape:
        output (3, height, width), float32.
    """
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((height, width), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.Pad(pad),
            v2.RandomCrop((height, width)),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(D.transforms.IMAGENET_MEAN, D.transforms.IMAGENET_STD),
            v2.RandomErasing(
                p=erasing,
                scale=(0.02, 0.4),
                ratio=(0.3, 1 / 0.3),
                value=list(D.transforms.IMAGENET_MEAN),
            ),
        ]
    )


def pk_batches(
    labels: Any,
    camids: Any,
    num_instances: int,
    batch_size: int,
    iters: int,
    seed: int,
    epoch: int,
) -> list[list[int]]:
    """The epoch's batches of image indices: P pseudo-identities x K images, across cameras.

    One *pass* is the authors' ``RandomMultipleGallerySampler``: the clusters in random
    order; for each, one random image ``i``, then ``K - 1`` images of the same cluster from
    *other cameras* than ``i``'s (without replacement when at least K are there, else with),
    or, when the cluster has no other camera, from its other images (a cluster of one image
    gives only ``i``). A pass is cut into batches of ``batch_size`` and its last partial
    batch dropped, as their loader drops it. ``iters > 0`` chains passes until ``iters``
    batches (their ``IterLoader``); ``iters = 0`` is one pass. A pass shorter than one batch
    gives one batch of all its images.

    Every draw comes from ``numpy.random.Generator`` seeded by ``(seed, epoch, pass)``
    alone (:func:`paulkit.train.seed_key`). Outliers (label -1) are never drawn.

    Args:
        labels: (N,) pseudo-labels, -1 for outliers.
        camids: (N,) camera of each image (not a label: the data set's file names say it).
        num_instances: K.
        batch_size: images per batch (P x K).
        iters: batches in the epoch, 0 for one pass.
        seed, epoch: the random stream.

    Returns:
        Lists of indices into the N images.
    """

    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    camids = np.asarray(camids.cpu() if isinstance(camids, torch.Tensor) else camids)
    if labels.shape != camids.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and camids {camids.shape} must be (N,) alike")
    k = _check_int(num_instances, "num_instances", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    iters = _check_int(iters, "iters", 0)
    keep = np.flatnonzero(labels >= 0)
    if keep.size == 0:
        return []
    order = keep[np.argsort(labels[keep], kind="stable")]
    ids, starts = np.unique(labels[order], return_index=True)
    groups = np.split(order, starts[1:])  # each cluster's images, in file order

    def one_pass(p: int) -> list[int]:
        rng = np.random.default_rng(train.seed_key(seed, _SAMPLER, epoch, p))
        out: list[int] = []
        for g in rng.permutation(len(groups)):
            members = groups[g]
            i = members[rng.integers(len(members))]
            out.append(int(i))
            other = members[camids[members] != camids[i]]
            if other.size == 0:
                other = members[members != i]
            if other.size == 0:
                continue
            pick = rng.choice(other, size=k - 1, replace=other.size < k)
            out.extend(int(j) for j in pick)
        return out

    batches: list[list[int]] = []
    p = 0
    while True:
        flat = one_pass(p)
        full = [flat[a : a + batch_size] for a in range(0, len(flat) - batch_size + 1, batch_size)]
        batches.extend(full or [flat])
        p += 1
        if iters == 0 or len(batches) >= iters:
            break
    return batches[:iters] if iters else batches


class _Slots(torch.utils.data.Dataset):
    """Item ``s`` of an epoch: the image ``order[s]`` (augmented) and its pseudo-label.

    Reads only the images' files: the records' identities never reach training."""

    def __init__(self, paths: list[str], labels: np.ndarray, order: list[int], transform):
        self.paths, self.labels, self.order, self.transform = paths, labels, order, transform

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, s: int):
        i = self.order[s]
        return self.transform(D.load_image(self.paths[i])), int(self.labels[i])


def _optimizer(model: nn.Module, c) -> torch.optim.Optimizer:
    # Adam on what PAUL's adaptation trains (backbone and patch layers); the patch generator
    # and the embedding stay frozen, as in PAUL's adaptation (the authors' ResNet has none).
    groups = model.param_groups()
    params = list(groups["backbone"]) + list(groups["new"])
    return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)


def cluster_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    memory: ClusterMemory,
    rt,
    c,
    progress: bool = True,
    desc: str = "cluster",
) -> dict[str, float]:
    """One epoch of Cluster Contrast: for each batch, the loss of its descriptors against
    every centroid, a step, then the momentum update of the hit centroids."""

    model.train()
    total, n_batches, n_images, t0 = 0.0, 0, 0, time.perf_counter()
    bar = train._progress(loader, progress, desc)
    for x, y in bar:
        x, y = rt.to_device(x), y.to(rt.device)
        with rt.autocast():
            out = model(x)
        f = out.patch_feats.float().flatten(1)  # the retrieval descriptor, in train mode
        loss = cluster_contrast_loss(f, y, memory.centroids, c.temperature)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {float(loss.detach())}; lower cluster.lr")
        optimizer.zero_grad(set_to_none=True)
        if rt.scaler is not None:
            rt.scaler.scale(loss).backward()
            rt.scaler.step(optimizer)
            rt.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        memory.update(f.detach(), y)
        total += float(loss.detach())
        n_batches += 1
        n_images += x.shape[0]
        if progress:
            bar.set_postfix(loss=f"{total / n_batches:.3f}")
    return {
        "loss": total / max(n_batches, 1),
        "images_per_s": n_images / max(time.perf_counter() - t0, 1e-9),
    }


def pseudo_labels(
    model: nn.Module, loader, cfg, rt, progress: bool = True
) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
    """Features of the target training images (eval mode, L2-normalised), their Jaccard
    distance and DBSCAN's pseudo-labels.

    Returns:
        ``(features, labels, info)``: (N, F) features on the CPU, (N,) labels (-1:
        outlier), and ``info`` with ``camids`` (N,), ``hidden`` (the data set's identities:
        for :func:`pseudo_label_quality` only) and ``seconds`` (distance + DBSCAN).
    """

    c = cfg.cluster
    feats, hidden, camids, _ = evaluation.extract_features(model, loader, rt.device, progress)
    feats = F.normalize(feats, dim=1)
    t0 = time.perf_counter()
    dist = jaccard_distance(feats.to(rt.device), c.k1, c.k2)
    labels = cluster_labels(dist, c.eps, c.min_samples)
    del dist
    info = {"camids": camids.numpy(), "hidden": hidden, "seconds": time.perf_counter() - t0}
    return feats, labels, info


def settings(cfg) -> dict[str, Any]:
    """What Cluster Contrast's model depends on, as flat ``key: value`` pairs (what its
    checkpoint stores and compares): the whole pretraining (as
    :func:`paulkit.train.phase_settings` names it, with its epochs), the target data set's
    identity and the ``cluster`` section, not ``cluster.epochs`` nor ``cluster.eval_every``."""

    keep = dict(train.phase_settings(cfg, "pretrain"))
    keep["pretrain.epochs"] = cfg.pretrain.epochs
    keep["data.target"] = train.data_identity(cfg, "target")
    for k, v in dataclasses.asdict(cfg.cluster).items():
        if k not in _NOT_HASHED:
            keep[f"cluster.{k}"] = v
    keep["phase"] = PHASE
    return keep


def check_checkpoint(state: Any, cfg, path) -> dict:
    """Refuse (:class:`paulkit.train.CheckpointMismatch`, naming the keys) a checkpoint that
    is not Cluster Contrast's for ``cfg``, or that holds more epochs than asked."""

    path = Path(path)
    if not isinstance(state, dict) or state.get("format") != train.CHECKPOINT_FORMAT:
        raise utils.CheckpointError(
            f"{path} is not a paulkit checkpoint; point at one written by paulkit.cluster, "
            "or move it away (--restart does) to train again"
        )
    choices = (
        f"use another --out to keep both, or --restart to move {path.name} aside to "
        f"{path.name}.old-<time> and train again; nothing is deleted"
    )
    if state.get("phase") != PHASE:
        raise train.CheckpointMismatch(
            f"{path} holds a {state.get('phase')!r} checkpoint, not {PHASE!r}; " + choices
        )
    stored, want = state.get("settings", {}), settings(cfg)
    diff = [k for k in sorted(set(stored) | set(want)) if stored.get(k) != want.get(k)]
    if diff:
        shown = "; ".join(
            f"{k}: {stored.get(k)!r:.40} in the checkpoint, {want.get(k)!r:.40} now"
            for k in diff[:4]
        )
        raise train.CheckpointMismatch(
            f"{path} was trained with other settings: {shown}; " + choices
        )
    if state["epoch"] > cfg.cluster.epochs:
        raise train.CheckpointMismatch(
            f"{path} holds {state['epoch']} epochs, more than cluster.epochs="
            f"{cfg.cluster.epochs}; set cluster.epochs={state['epoch']} to use it, or " + choices
        )
    return state


def _save(path, cfg, epoch: int, model, optimizer, history) -> None:

    state = {
        "format": train.CHECKPOINT_FORMAT,
        "phase": PHASE,
        "config": C.config_to_dict(cfg),
        "settings": settings(cfg),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": history,
    }
    utils.atomic_save(state, path)


def _check_data(n: int, c) -> None:
    if n < c.k1:
        raise ValueError(
            f"{n} target training images are fewer than cluster.k1={c.k1} neighbours; lower "
            "cluster.k1 (and cluster.k2) or use more images (data.limit_train)"
        )


def train_cluster(
    cfg,
    pretrained: nn.Module | dict,
    device: str | torch.device | None = None,
    checkpoint=None,
    progress: bool = True,
    stop_after: int | None = None,
    restart: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Cluster Contrast on the target's training images, without their labels.

    Starts from ``pretrained`` (the source model PAUL adapts), evaluates it first (epoch 0,
    direct transfer) and then every ``cfg.cluster.eval_every`` epochs and after the last
    one, with :func:`paulkit.train.evaluate_model`. The loop is the authors' (see the
    section comment): features, :func:`jaccard_distance`, :func:`cluster_labels`,
    :class:`ClusterMemory`, :func:`pk_batches`, :func:`cluster_contrast_loss`; Adam with the
    learning rate divided by 10 every ``cluster.lr_step`` epochs.

    Every random draw is keyed by ``(cfg.seed, epoch, ...)`` (the sampler's passes, each
    batch slot's augmentation), so a run is a function of its config and seed, whatever the
    number of workers, and a resumed run equals an uninterrupted one (the memory is rebuilt
    from the features each epoch; the checkpoint holds the model and Adam's state).

    ``checkpoint`` is written atomically after every epoch; an existing one with the same
    :func:`settings` is resumed, another refused; ``restart`` moves it aside first.

    One process trains (no DistributedDataParallel): under torchrun (``paulkit reproduce``
    launched on several GPUs) every rank trains the same model on its own device and only
    rank 0 writes the checkpoint. ``device``: a device name or the caller's
    :class:`paulkit.runtime.Runtime`.

    Returns:
        ``(model, history)``; history has per-epoch lists ``epoch``, ``loss``, ``lr``,
        ``num_clusters``, ``outlier_share``, ``nmi``, ``ari`` (against the hidden identities:
        display only, nothing in training reads them), ``cluster_seconds``,
        ``images_per_s``, and ``eval``: a list of ``{"epoch": e, **metrics}``.
    """

    C.validate(cfg)
    rank0 = runtime.env_rank() == 0
    lock = (
        utils.run_lock(Path(checkpoint).parent, rank0) if checkpoint else contextlib.nullcontext()
    )
    with lock:
        return _train_cluster(cfg, pretrained, device, checkpoint, progress, stop_after, restart)


def _train_cluster(cfg, pretrained, device, checkpoint, progress, stop_after, restart):

    c = cfg.cluster
    utils.set_seed(cfg.seed, cfg.deterministic)
    rt = runtime.make_runtime(cfg, device)  # ``device`` may be the caller's Runtime
    target = train.target_dataset(cfg)
    records = train.target_train(cfg, target)
    _check_data(len(records), c)
    paths = [r.path for r in records]
    clean = train.clean_target_loader(cfg, rt, target)
    tf = train_transform(cfg.data.height, cfg.data.width, c.pad, c.erasing)
    model = train.adaptation_model(pretrained, cfg).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, c)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for p in model.parameters():  # frozen: no gradient is computed for them at all
        if id(p) not in trained:
            p.requires_grad_(False)
    every = c.eval_every
    keys = ("epoch", "loss", "lr", "num_clusters", "outlier_share", "nmi", "ari")
    history: dict[str, Any] = {k: [] for k in keys}
    history.update({"cluster_seconds": [], "images_per_s": [], "eval": []})
    start = 0
    if checkpoint is not None and (Path(checkpoint).exists() or Path(checkpoint).is_symlink()):
        if restart:
            if runtime.env_rank() == 0:  # the other ranks start afresh without touching it
                moved = utils.move_aside(checkpoint)
                print(f"--restart: moved {shown_path(checkpoint)} aside to {moved.name}")
        else:
            state = check_checkpoint(utils.load_checkpoint(checkpoint), cfg, checkpoint)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            history, start = state["history"], state["epoch"]
    if start == 0 and every:
        history["eval"].append(
            {"epoch": 0, **train.evaluate_model(model, target, cfg, rt, progress)}
        )
    for epoch in range(start, c.epochs):
        if stop_after is not None and epoch >= stop_after:
            break
        feats, labels, info = pseudo_labels(model, clean, cfg, rt, progress)
        quality = pseudo_label_quality(labels, info["hidden"])  # display only
        lr = c.lr * 0.1 ** (epoch // c.lr_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        stats = {"loss": float("nan"), "images_per_s": 0.0}
        if quality["num_clusters"] == 0:
            logging.getLogger("paulkit").warning(
                "cluster epoch %d: DBSCAN found no cluster (eps %s, min_samples %d): nothing "
                "to train on this epoch; a larger cluster.eps groups more",
                epoch + 1,
                c.eps,
                c.min_samples,
            )
        else:
            memory = ClusterMemory(feats.to(rt.device), labels, c.momentum)
            batches = pk_batches(
                labels, info["camids"], c.num_instances, c.batch_size, c.iters, cfg.seed, epoch
            )
            flat = [i for b in batches for i in b]
            slots, pos = [], 0
            for b in batches:  # item s of the loader is the epoch's s-th drawn image
                slots.append(list(range(pos, pos + len(b))))
                pos += len(b)
            samples = train.SeededSamples(
                _Slots(paths, labels, flat, tf), train.seed_key(cfg.seed, _AUGMENT), epoch
            )
            loader = DataLoader(
                samples,
                batch_sampler=slots,
                num_workers=cfg.data.num_workers,
                pin_memory=rt.pin_memory,
                generator=torch.Generator().manual_seed(0),  # never the global generator
            )
            stats = cluster_epoch(
                model, loader, optimizer, memory, rt, c, progress, f"cluster {epoch + 1}/{c.epochs}"
            )
        history["epoch"].append(epoch + 1)
        history["lr"].append(lr)
        history["loss"].append(stats["loss"])
        history["images_per_s"].append(stats["images_per_s"])
        history["cluster_seconds"].append(info["seconds"])
        for k in ("num_clusters", "outlier_share", "nmi", "ari"):
            history[k].append(quality[k])
        if every and ((epoch + 1) % every == 0 or epoch + 1 == c.epochs):
            history["eval"].append(
                {"epoch": epoch + 1, **train.evaluate_model(model, target, cfg, rt, progress)}
            )
        if checkpoint is not None and runtime.env_rank() == 0:
            _save(checkpoint, cfg, epoch + 1, model, optimizer, history)
    return model, history


def load_model(path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a Cluster Contrast checkpoint; returns ``(model, checkpoint)``."""

    state = utils.load_checkpoint(path)
    if not isinstance(state, dict) or state.get("phase") != PHASE:
        raise utils.CheckpointError(f"{Path(path)} is not a Cluster Contrast checkpoint")
    return _model_from_state(state, device), state


def _model_from_state(state: dict, device) -> nn.Module:
    cfg = C.config_from_dict(state["config"])
    model = train.build_model(cfg, None, pretrain=False, backbone_weights=False)
    models.load_pretrained(model, state["model"])
    return model.to(device)


def train_or_load(
    cfg,
    tag: str = "",
    device: str | torch.device | None = None,
    out=None,
    progress: bool = True,
    pretrained: nn.Module | None = None,
    restart: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a finished Cluster Contrast checkpoint whose settings match; else train it
    (resuming a partial one), from the same pretraining checkpoint PAUL adapts
    (:func:`paulkit.train.train_or_load` with ``"pretrain"``; ``pretrained`` skips it).
    The file is :func:`paulkit.train.checkpoint_path` of phase ``"cluster"``."""

    C.validate(cfg)
    path = train.checkpoint_path(cfg, PHASE, tag, out)
    rt = runtime.make_runtime(cfg, device)  # once; passed down
    with utils.run_lock(path.parent, enabled=runtime.env_rank() == 0):
        if path.exists() and not restart:
            state = check_checkpoint(utils.load_checkpoint(path), cfg, path)
            if state["epoch"] >= cfg.cluster.epochs:
                model = _model_from_state(state, rt.device)  # the file is read once
                print(f"loaded {PHASE} checkpoint {shown_path(path)} (epoch {state['epoch']})")
                return model, state["history"]
            print(
                f"resuming {PHASE} from {shown_path(path)} at epoch {state['epoch']} of {cfg.cluster.epochs}"
            )
        if pretrained is None:
            try:
                pretrained, _ = train.train_or_load(
                    cfg, "pretrain", device=rt, out=out, progress=progress
                )
            except train.CheckpointMismatch:
                if not restart:
                    raise
                pretrained, _ = train.train_or_load(
                    cfg, "pretrain", device=rt, out=out, progress=progress, restart=True
                )
        return train_cluster(cfg, pretrained, rt, path, progress=progress, restart=restart)
