"""Loop-form transcriptions of docs/paper.md, kept as the reference for paulkit's vectorised code.

Written to be obviously right, not fast: loops over patches, samples and candidates as the
equations (and the official PAUL code) read. tests/test_losses.py and tests/test_memory.py
compare paulkit against them; bench/bench_step.py times them.
"""

from __future__ import annotations

import torch


def memory_update_loop(bank, seen, index, feats, momentum):
    """slot <- feats on first sight, else (1 - m) slot + m feats; in place, one image a time."""
    for b, i in enumerate(index.tolist()):
        if seen[i]:
            bank[i] = (1 - momentum) * bank[i] + momentum * feats[b]
        else:
            bank[i] = feats[b]
            seen[i] = True


def image_memory_update_loop(centers, seen, index, embeddings, num, momentum):
    """c_i <- mean of i's views on first sight, else (1 - m) c_i + m mean; returns (B, E)."""
    out = []
    for b, i in enumerate(index.tolist()):
        mean = embeddings[b * num : (b + 1) * num].mean(0)
        if seen[i]:
            centers[i] = (1 - momentum) * centers[i] + momentum * mean
        else:
            centers[i] = mean
            seen[i] = True
        out.append(centers[i].clone())
    return torch.stack(out)


def pedal_loop(patch_feats, bank, index, scale=15.0, k=10):
    """PEDAL as docs/paper.md writes it: per patch, per image, over every slot but its own."""
    bsz, num_patches, _ = patch_feats.shape
    total = 0.0
    for p in range(num_patches):
        f = patch_feats[:, p]  # (B, D)
        m = bank[:, p].detach()  # (N, D)
        dist = f.pow(2).sum(1, keepdim=True) + m.pow(2).sum(1)[None, :] - 2 * f @ m.t()
        for i in range(bsz):
            own = int(index[i])
            d = torch.cat([dist[i, :own], dist[i, own + 1 :]])
            d_sorted, _ = d.sort()
            all_term = torch.logsumexp(-scale * d_sorted, 0)
            near_term = torch.logsumexp(-scale * d_sorted[:k], 0)
            total = total + (all_term - near_term)
    return total / (bsz * num_patches)


def ipfl_loop(views, centers, num_views=2, margin=2.0, max_iter=15, nearest=3, fallback_zero=True):
    """IPFL with cycle ranking, one view and one candidate at a time (the official loop)."""
    centers = centers.detach()
    bsz = centers.shape[0]
    total = 0.0
    for v in range(views.shape[0]):
        b = v // num_views
        diff = (views[v][None, :] - centers).pow(2).sum(1).sqrt()  # (B,)
        d_pos = diff[b]
        others = [j for j in range(bsz) if j != b]
        order = sorted(others, key=lambda j: float(diff[j].detach()))
        d_neg = None
        for j in order[: min(max_iter, len(order))]:
            to_all = (centers[j][None, :] - centers).pow(2).sum(1).sqrt()
            near = to_all.argsort()[:nearest].tolist()
            if b not in near:  # c_j's nearest centres do not include c_b: trusted
                d_neg = diff[j]
                break
        if d_neg is None:
            if not fallback_zero:
                continue  # adds 0 (still counted in the mean)
            d_neg = torch.zeros((), dtype=views.dtype)
        total = total + torch.clamp(margin + d_pos - d_neg, min=0.0)
    return total / views.shape[0]


def triplet_loop(embeddings, pids, margin=1.0, positive="nearest", eps=1e-5):
    """The official TripletHard on normalised embeddings, one anchor at a time."""
    x = embeddings / embeddings.norm(dim=1, keepdim=True)
    losses = []
    for a in range(x.shape[0]):
        d = ((x[a][None, :] - x).pow(2).sum(1) + eps).sqrt()
        pos = [d[j] for j in range(x.shape[0]) if j != a and pids[j] == pids[a]]
        neg = [d[j] for j in range(x.shape[0]) if pids[j] != pids[a]]
        if not pos or not neg:
            continue
        d_pos = min(pos) if positive == "nearest" else max(pos)
        losses.append(torch.clamp(margin + d_pos - min(neg), min=0.0))
    return torch.stack(losses).mean()


def patch_cross_entropy_loop(logits, pids):
    """Sum over patches of the batch-mean cross-entropy."""
    total = 0.0
    for p in range(logits.shape[1]):
        total = total + torch.nn.functional.cross_entropy(logits[:, p], pids)
    return total


def _k_reciprocal_loop(rank, i, k):
    """The images among i's first k ranked whose own first k include i (rank order kept)."""
    return [j for j in rank[i][:k] if i in rank[j][:k]]


def jaccard_distance_loop(features, k1=30, k2=6):
    """Cluster Contrast's k-reciprocal Jaccard distance, one image and one neighbour a time.

    The authors' compute_jaccard_distance (Zhong et al. CVPR 2017 re-ranking as
    alibaba/cluster-contrast-reid runs it), with its nearest-neighbour search written as a
    stable sort: ties in similarity go to the lower index. Returns an (N, N) float32 tensor.
    """
    f = torch.nn.functional.normalize(features.float(), dim=1)
    n = f.shape[0]
    sim = f @ f.t()
    # the search returns k1 neighbours (the image itself among them), nearest first
    rank = [torch.sort(-sim[i], stable=True).indices[:k1].tolist() for i in range(n)]
    k_half = int(round(k1 / 2)) + 1  # Python's round halves to even, as np.around does
    r_full = [_k_reciprocal_loop(rank, i, k1) for i in range(n)]
    r_half = [_k_reciprocal_loop(rank, i, k_half) for i in range(n)]

    v = torch.zeros(n, n)
    for i in range(n):
        expansion = list(r_full[i])
        for c in r_full[i]:
            overlap = len(set(r_half[c]) & set(r_full[i]))
            if overlap > 2 / 3 * len(r_half[c]):
                expansion += r_half[c]
        expansion = sorted(set(expansion))
        d = 2 - 2 * (f[i][None, :] @ f[expansion].t())[0]  # squared Euclidean, unit features
        weights = torch.exp(-d)
        v[i, expansion] = weights / weights.sum()

    if k2 != 1:  # local query expansion over the k2 nearest (the image itself included)
        v_qe = torch.zeros(n, n)
        for i in range(n):
            v_qe[i] = v[rank[i][:k2]].mean(0)
        v = v_qe

    dist = torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            inter = float(torch.minimum(v[i], v[j]).sum())  # sum over shared neighbours
            dist[i, j] = 1 - inter / (2 - inter)  # rows sum to 1: sum(max) = 2 - sum(min)
    return dist.clamp(min=0.0)


def cluster_memory_update_loop(centroids, features, labels, momentum):
    """Cluster Contrast's memory update as the authors' backward runs it, one feature a time:
    c <- m c + (1 - m) f, then c <- c / ||c|| (f L2-normalised first); in place."""
    f = torch.nn.functional.normalize(features, dim=1)
    for x, y in zip(f, labels.tolist()):
        centroids[y] = momentum * centroids[y] + (1 - momentum) * x
        centroids[y] = centroids[y] / centroids[y].norm()
