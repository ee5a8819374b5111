"""Evaluation: person re-identification measured as retrieval (CMC, mAP, mINP).

Each query image ranks the gallery by distance. The Market-1501 protocol (docs/paper.md
"Evaluation") then, for every query,

- ignores gallery images of the *same identity seen by the same camera* (finding the same
  person in the same camera is too easy) and *junk* images (identity ``-1``);
- keeps *distractors* (identity ``0``) as ordinary wrong answers;
- skips queries that have no valid true match left (they are counted, never silently lost).

Over the remaining *valid gallery items* of a query, ordered by distance:

- CMC (first match): ``cmc[k]`` is the share of valid queries whose first true match is
  within the top ``k + 1``; rank-1 is ``cmc[0]``.
- AP, two conventions. With ``n`` true matches at 0-based positions ``r_0 < r_1 < ...``:
  ``"step"`` (torchreid, fast-reid) ``AP = mean_i (i + 1) / (r_i + 1)``, the mean precision at
  each true match; ``"trapezoid"`` (the original Market-1501 evaluator, used for PAUL's
  reported numbers) ``AP = sum_i (1 / n) * (p_prev + p_i) / 2`` with ``p_i = (i + 1) / (r_i + 1)``
  and ``p_prev = i / r_i`` (``1`` when ``r_i = 0``), the trapezoidal area under the
  precision-recall curve. mAP is the mean AP over valid queries.
- INP (fast-reid): ``n / (r_last + 1)``, how much of the list one must read to find *every*
  true match; mINP is its mean.

Ties in distance are broken by gallery index: items are ordered by ``(distance, gallery
index)``, exactly as a stable sort of each row would order them, on every device.

How it is fast without a compiler: per chunk of queries, each row of distances is sorted
once (values only) and the position of every true match is found by binary search
(``searchsorted``); junk items ranked before a match are subtracted, and the rare exact ties
with a true match are resolved against the whole row. No Python loop runs per query.

Taught in: notebooks/07_evaluation.ipynb.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = [
    "RankResult",
    "compute_distmat",
    "evaluate",
    "evaluate_rank",
    "evaluate_features",
    "extract_features",
    "rank_gallery",
]

ArrayLike = Any  # numpy array, torch tensor (any device) or a sequence of numbers

# Elements (queries x gallery) handled per chunk when ``chunk_size`` is None: about 64 MB of
# float32 distances, plus as much again for their sorted copy.
_CHUNK_ELEMENTS = 2**24
_TIE_ELEMENTS = 2**22


# --------------------------------------------------------------------------- result


@dataclass(frozen=True, repr=False)
class RankResult:
    """The full outcome of one evaluation; all rates are fractions in [0, 1].

    Attributes:
        cmc: (max_rank,) first-match CMC over the valid queries; ``cmc[0]`` is rank-1.
        mAP: mean step AP (torchreid/fast-reid convention).
        mAP_trapezoid: mean trapezoidal AP (original Market-1501 evaluator; PAUL's numbers).
        mINP: mean inverse negative penalty (fast-reid).
        ap: (Q,) step AP per query, NaN for skipped queries.
        ap_trapezoid: (Q,) trapezoidal AP per query, NaN for skipped queries.
        inp: (Q,) INP per query, NaN for skipped queries.
        first_match: (Q,) 0-based position of the first true match among the query's valid
            gallery items, -1 for skipped queries.
        num_good: (Q,) number of true matches (same identity, other camera) per query.
        valid: (Q,) bool, the query has at least one true match.
        num_valid: number of evaluated queries.
        num_skipped: number of queries skipped for lack of a true match.
    """

    cmc: np.ndarray
    mAP: float
    mAP_trapezoid: float
    mINP: float
    ap: np.ndarray
    ap_trapezoid: np.ndarray
    inp: np.ndarray
    first_match: np.ndarray
    num_good: np.ndarray
    valid: np.ndarray
    num_valid: int
    num_skipped: int

    def rank(self, k: int) -> float:
        """Rank-k accuracy (share of valid queries with a true match in the top k), any k."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return float(np.mean(self.first_match[self.valid] < k))

    def as_dict(self) -> dict[str, float]:
        """``rank1``, ``rank5``, ``rank10``, ``mAP``, ``mAP_trapezoid``, ``mINP`` as floats."""
        return {
            "rank1": self.rank(1),
            "rank5": self.rank(5),
            "rank10": self.rank(10),
            "mAP": self.mAP,
            "mAP_trapezoid": self.mAP_trapezoid,
            "mINP": self.mINP,
        }

    def __repr__(self) -> str:
        d = self.as_dict()
        body = ", ".join(f"{k}={v:.4f}" for k, v in d.items())
        return f"RankResult({body}, num_valid={self.num_valid}, num_skipped={self.num_skipped})"


# --------------------------------------------------------------------------- input checks


def _tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array or tensor, got {type(x).__name__}")
    if not arr.flags.c_contiguous and arr.ndim > 0:
        arr = np.ascontiguousarray(arr)
    return torch.from_numpy(arr) if arr.ndim > 0 else torch.as_tensor(arr)


def _labels(x: ArrayLike, name: str, n: int, what: str, device: torch.device) -> torch.Tensor:
    t = _tensor(x, name)
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per {what}), got shape {tuple(t.shape)}")
    if len(t) != n:
        raise ValueError(
            f"{name} has {len(t)} entries but there are {n} {what} images; pass one label per "
            f"{what} image, in the same order as the distance matrix"
        )
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError(f"{name} must hold integer labels, got non-integer values")
    elif t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold integer labels, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.int64)


def _check_max_rank(max_rank: int) -> None:
    if not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")


def _default_chunk(num_gallery: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, _CHUNK_ELEMENTS // max(num_gallery, 1))
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return int(chunk_size)


# --------------------------------------------------------------------------- ranking core


class _Gallery:
    """Gallery labels grouped by identity, so each query finds its same-pid items directly."""

    def __init__(self, g_pids: torch.Tensor, g_camids: torch.Tensor):
        self.pids, self.camids = g_pids, g_camids
        self.order = torch.argsort(g_pids, stable=True)  # same-pid items stay in index order
        self.uniq, self.counts = torch.unique_consecutive(g_pids[self.order], return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.junk = torch.nonzero(g_pids == -1).flatten()  # pid -1: junk for every query


def _sort_rows(d: torch.Tensor, pool: ThreadPoolExecutor | None, workers: int) -> torch.Tensor:
    """Each row's values in increasing order (NaN last). On the CPU NumPy's SIMD sort, run in
    threads over row blocks, is several times faster than ``torch.sort``."""
    if d.device.type != "cpu":
        return torch.sort(d, dim=1).values
    a = d.numpy()
    out = np.empty_like(a)
    if pool is None or len(a) < 2:
        bounds = np.array([0, len(a)])
    else:
        bounds = np.linspace(0, len(a), workers + 1).astype(int)

    def work(i: int) -> None:  # copy a block of rows, sort it in place (NumPy frees the GIL)
        block = out[bounds[i] : bounds[i + 1]]
        block[:] = a[bounds[i] : bounds[i + 1]]
        block.sort(axis=1)

    if len(bounds) == 2:
        work(0)
    else:
        list(pool.map(work, range(len(bounds) - 1)))
    return torch.from_numpy(out)


def _rank_chunk(
    d: torch.Tensor,
    q_pids: torch.Tensor,
    q_camids: torch.Tensor,
    gal: _Gallery,
    pool: ThreadPoolExecutor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the true matches of each query among its valid gallery items.

    Returns:
        ``num_good`` (R,) and ``ranks`` (R, S): for query r, ``ranks[r, :num_good[r]]`` are the
        0-based positions (increasing) of its true matches in its ranked list of valid items.
    """
    R, G = d.shape
    dev = d.device
    if d.dtype in (torch.float16, torch.bfloat16) or not d.is_floating_point():
        d = d.to(torch.float64 if not d.is_floating_point() else torch.float32)
    if not d.is_contiguous():
        d = d.contiguous()

    # Same-identity gallery items of every query, padded to S per row (gallery index order).
    pos = torch.searchsorted(gal.uniq, q_pids).clamp(max=len(gal.uniq) - 1)
    found = gal.uniq[pos] == q_pids
    cnt = torch.where(found, gal.counts[pos], torch.zeros_like(pos))
    S = int(cnt.max()) if R else 0
    sorted_d = _sort_rows(d, pool, torch.get_num_threads())
    if bool(torch.isnan(sorted_d[:, -1]).any()):  # NaN sorts last
        raise ValueError(
            "distmat contains NaN distances; check the features for NaN (e.g. a diverged "
            "model) before evaluating"
        )
    if S == 0:
        return torch.zeros(R, dtype=torch.int64, device=dev), torch.zeros(R, 0, dtype=torch.int64)
    ar = torch.arange(S, device=dev)
    inrow = ar < cnt[:, None]
    idx = gal.order[(gal.starts[pos][:, None] + ar).clamp(max=G - 1)]
    same_cam = gal.camids[idx] == q_camids[:, None]
    real = (q_pids != -1)[:, None]
    is_good = inrow & ~same_cam & real
    is_junk = inrow & same_cam & real

    # True matches sorted by (distance, gallery index): compact them to the front first so the
    # +inf padding can never overtake a true match whose distance is +inf.
    front = torch.argsort((~is_good).to(torch.uint8), dim=1, stable=True)
    idx_g = idx.gather(1, front)
    num_good = is_good.sum(1)
    good_mask = ar < num_good[:, None]
    inf = torch.tensor(float("inf"), dtype=d.dtype, device=dev)
    vals = torch.where(good_mask, d.gather(1, idx_g), inf)
    vals, perm = torch.sort(vals, dim=1, stable=True)
    idx_g = idx_g.gather(1, perm)

    # Items strictly closer than each true match, then subtract the junk among them.
    less = torch.searchsorted(sorted_d, vals, right=False)
    equal = torch.searchsorted(sorted_d, vals, right=True) - less
    junk_vals = torch.sort(torch.where(is_junk, d.gather(1, idx), inf), dim=1).values
    less = less - torch.searchsorted(junk_vals, vals, right=False)
    if len(gal.junk):
        junk_all = torch.sort(d[:, gal.junk], dim=1).values
        less = less - torch.searchsorted(junk_all, vals, right=False)
    ranks = less

    # Exact ties with a true match (equal > 1: the match itself plus another item): count the
    # valid items before it under the (distance, index) rule against the whole row.
    tie_r, tie_p = torch.nonzero(good_mask & (equal > 1), as_tuple=True)
    if len(tie_r):
        ranks = ranks.clone()
        step = max(1, _TIE_ELEMENTS // G)
        col = torch.arange(G, device=dev)
        for s in range(0, len(tie_r), step):
            r, p = tie_r[s : s + step], tie_p[s : s + step]
            rows, v, j = d[r], vals[r, p][:, None], idx_g[r, p][:, None]
            junk = (gal.pids[None] == q_pids[r, None]) & (gal.camids[None] == q_camids[r, None])
            junk |= (gal.pids == -1)[None]
            before = (rows < v) | ((rows == v) & (col[None] < j))
            ranks[r, p] = (before & ~junk).sum(1)
    return num_good, torch.where(good_mask, ranks, torch.zeros_like(ranks))


def _summarise(
    num_good: np.ndarray, ranks: list[np.ndarray], max_rank: int, num_queries: int
) -> RankResult:
    """Per-query AP (both conventions), INP and first match, then the means and the CMC."""
    ap = np.full(num_queries, np.nan)
    ap_trap = np.full(num_queries, np.nan)
    inp = np.full(num_queries, np.nan)
    first = np.full(num_queries, -1, dtype=np.int64)
    start = 0
    for r in ranks:  # one (R, S) block per chunk
        n = num_good[start : start + len(r)]
        sl = slice(start, start + len(r))
        start += len(r)
        if r.shape[1] == 0:
            continue
        i = np.arange(r.shape[1], dtype=np.float64)[None]  # i-th true match (0-based)
        mask = i < n[:, None]
        rf = r.astype(np.float64)
        prec = (i + 1) / (rf + 1)
        prev = np.where(rf > 0, i / np.maximum(rf, 1), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[sl] = np.where(mask, prec, 0).sum(1) / n
            ap_trap[sl] = np.where(mask, (prev + prec) / 2, 0).sum(1) / n
            last = np.take_along_axis(r, np.maximum(n - 1, 0)[:, None], 1)[:, 0]
            inp[sl] = n / (last + 1.0)
        first[sl] = np.where(n > 0, r[:, 0], -1)
    valid = num_good > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            "no query has a valid true match (same identity, other camera) in the gallery; "
            "check that q_pids/g_pids use the same identity labels and that q_camids/g_camids "
            "are the cameras"
        )
    ap[~valid] = ap_trap[~valid] = inp[~valid] = np.nan
    hits = np.bincount(np.minimum(first[valid], max_rank), minlength=max_rank + 1)
    cmc = np.cumsum(hits[:max_rank]) / num_valid
    return RankResult(
        cmc=cmc,
        mAP=float(np.mean(ap[valid])),
        mAP_trapezoid=float(np.mean(ap_trap[valid])),
        mINP=float(np.mean(inp[valid])),
        ap=ap,
        ap_trapezoid=ap_trap,
        inp=inp,
        first_match=first,
        num_good=num_good,
        valid=valid,
        num_valid=num_valid,
        num_skipped=num_queries - num_valid,
    )


def _evaluate_chunks(
    chunks: Iterable[tuple[int, int, torch.Tensor]],
    q_pids: torch.Tensor,
    q_camids: torch.Tensor,
    gal: _Gallery,
    max_rank: int,
    num_queries: int,
) -> RankResult:
    goods, ranks = [], []
    threads = torch.get_num_threads()
    with ThreadPoolExecutor(threads) if threads > 1 else _nullpool() as pool:
        for a, b, d in chunks:
            n, r = _rank_chunk(d, q_pids[a:b], q_camids[a:b], gal, pool)
            goods.append(n.cpu().numpy())
            ranks.append(r.cpu().numpy())
    return _summarise(np.concatenate(goods), ranks, max_rank, num_queries)


class _nullpool:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --------------------------------------------------------------------------- public API


def evaluate(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    chunk_size: int | None = None,
) -> RankResult:
    """CMC, mAP (both AP conventions), mINP and per-query AP under the Market-1501 protocol.

    Args:
        distmat: query-to-gallery distances (smaller = more similar); numpy or torch (any
            device; the work runs on that device). Never copied whole.
        q_pids, g_pids: identity labels; gallery pid -1 is junk (ignored), pid 0 distractors
            stay as wrong answers.
        q_camids, g_camids: camera labels.
        max_rank: length of the returned CMC. Entries past the gallery size are 1.0 (every
            valid query has found its match by then), so the length never shrinks.
        chunk_size: queries per chunk (default: about 16M distances per chunk).

    Returns:
        A :class:`RankResult`. Ties in distance are broken by gallery index.

    Raises:
        ValueError: mismatched lengths, an empty query or gallery set, NaN distances, or no
            query with a valid true match.

    Shape:
        distmat (Q, G); q_pids, q_camids (Q,); g_pids, g_camids (G,).

    Paper: docs/paper.md "Evaluation". Taught in: notebooks/07_evaluation.ipynb.
    """
    _check_max_rank(max_rank)
    d = _tensor(distmat, "distmat")
    if d.ndim != 2:
        raise ValueError(f"distmat must be 2-D (queries x gallery), got shape {tuple(d.shape)}")
    Q, G = d.shape
    if Q == 0 or G == 0:
        raise ValueError(
            f"distmat has shape {(Q, G)}: the query set and the gallery must both be non-empty"
        )
    dev = d.device
    qp = _labels(q_pids, "q_pids", Q, "query", dev)
    qc = _labels(q_camids, "q_camids", Q, "query", dev)
    gal = _Gallery(
        _labels(g_pids, "g_pids", G, "gallery", dev),
        _labels(g_camids, "g_camids", G, "gallery", dev),
    )
    step = _default_chunk(G, chunk_size)
    chunks = ((a, min(a + step, Q), d[a : a + step]) for a in range(0, Q, step))
    return _evaluate_chunks(chunks, qp, qc, gal, max_rank, Q)


def evaluate_rank(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    ap: str = "step",
) -> tuple[np.ndarray, float]:
    """``(cmc, mAP)`` like the field's standard ``evaluate_rank`` (torchreid, fast-reid).

    Args:
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank: as in :func:`evaluate`.
        ap: ``"step"`` (torchreid/fast-reid: mean precision at each true match) or
            ``"trapezoid"`` (original Market-1501 evaluator, used for PAUL's numbers).

    Returns:
        ``cmc`` float64 array of length ``max_rank`` and ``mAP`` float, both in [0, 1].

    Shape:
        distmat (Q, G); q_pids, q_camids (Q,); g_pids, g_camids (G,); cmc (max_rank,).

    Paper: docs/paper.md "Evaluation". Taught in: notebooks/07_evaluation.ipynb.
    """
    if ap not in ("step", "trapezoid"):
        raise ValueError(f"ap must be 'step' or 'trapezoid', got {ap!r}")
    res = evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)
    return res.cmc, res.mAP if ap == "step" else res.mAP_trapezoid


def _features(x: ArrayLike, name: str) -> torch.Tensor:
    t = _tensor(x, name)
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D array (images x dims), got {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        t = t.float()
    if bool(torch.isnan(t).any()):
        raise ValueError(f"{name} contains NaN; check the model's outputs before evaluating")
    return t


def _distance_chunks(
    qf: ArrayLike, gf: ArrayLike, metric: str, chunk_size: int | None
) -> tuple[int, int, Iterable[tuple[int, int, torch.Tensor]]]:
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    q, g = _features(qf, "qf"), _features(gf, "gf")
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"qf has {q.shape[1]} dims but gf has {g.shape[1]}: use features from one model"
        )
    g = g.to(q.device, torch.float32)
    if metric == "cosine":
        g = F.normalize(g, dim=1)
    else:
        g2 = (g * g).sum(1)
    gt = g.t()
    step = _default_chunk(len(g), chunk_size)

    def gen() -> Iterable[tuple[int, int, torch.Tensor]]:
        for a in range(0, len(q), step):
            qc = q[a : a + step].to(torch.float32)
            if metric == "cosine":
                d = torch.mm(F.normalize(qc, dim=1), gt)
                d.neg_().add_(1.0)
            else:
                d = torch.addmm(g2[None, :], qc, gt, alpha=-2.0)
                d.add_((qc * qc).sum(1, keepdim=True)).clamp_(min=0).sqrt_()
            yield a, a + len(qc), d

    return len(q), len(g), gen()


def compute_distmat(
    qf: ArrayLike, gf: ArrayLike, metric: str = "cosine", chunk_size: int | None = None
) -> torch.Tensor:
    """Query-to-gallery distances, computed in chunks of queries.

    Args:
        qf, gf: features (numpy or torch; the work runs on ``qf``'s device).
        metric: ``"cosine"`` (``1 - cos``, in [0, 2]; the re-id default) or ``"euclidean"``
            (true, not squared, distance via ``|q|^2 + |g|^2 - 2 q.g``, clamped at 0).
        chunk_size: queries per chunk (default: about 16M distances per chunk).

    Returns:
        float32 distance matrix on ``qf``'s device. For problems too large to hold
        (MSMT17: 11,659 x 82,161 = 3.8 GB), use :func:`evaluate_features` instead.

    Shape:
        qf (Q, D), gf (G, D) -> (Q, G).

    Paper: docs/paper.md "Evaluation" (cosine distance). Taught in: notebooks/07_evaluation.ipynb.
    """
    Q, G, chunks = _distance_chunks(qf, gf, metric, chunk_size)
    out = None
    for a, b, d in chunks:
        if out is None:
            out = torch.empty(Q, G, dtype=torch.float32, device=d.device)
        out[a:b] = d
    assert out is not None
    return out


def evaluate_features(
    qf: ArrayLike,
    gf: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    metric: str = "cosine",
    max_rank: int = 50,
    chunk_size: int | None = None,
) -> RankResult:
    """Distances and ranking chunk by chunk: the full distance matrix is never materialised.

    Same result as ``evaluate(compute_distmat(qf, gf, metric), ...)``; peak memory is a few
    chunks of ``chunk_size x G`` distances plus one float32 copy of the gallery features.

    Shape:
        qf (Q, D), gf (G, D); q_pids, q_camids (Q,); g_pids, g_camids (G,).

    Paper: docs/paper.md "Evaluation". Taught in: notebooks/07_evaluation.ipynb.
    """
    _check_max_rank(max_rank)
    Q, G, chunks = _distance_chunks(qf, gf, metric, chunk_size)
    dev = _tensor(qf, "qf").device
    qp = _labels(q_pids, "q_pids", Q, "query", dev)
    qc = _labels(q_camids, "q_camids", Q, "query", dev)
    gal = _Gallery(
        _labels(g_pids, "g_pids", G, "gallery", dev),
        _labels(g_camids, "g_camids", G, "gallery", dev),
    )
    return _evaluate_chunks(chunks, qp, qc, gal, max_rank, Q)


def rank_gallery(
    distances: ArrayLike,
    q_pid: int,
    q_camid: int,
    g_pids: ArrayLike,
    g_camids: ArrayLike,
    k: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top-k *valid* gallery items of one query, as the evaluator ranks them.

    Same-identity same-camera items and junk (pid -1) are left out; ties go to the lower
    gallery index.

    Returns:
        ``(indices, distances, matches)``: gallery indices, their distances and whether each
        is a true match, all of length ``min(k, number of valid items)``.

    Shape:
        distances (G,); g_pids, g_camids (G,).

    Taught in: notebooks/07_evaluation.ipynb.
    """
    d = _tensor(distances, "distances").cpu()
    if d.ndim != 1:
        raise ValueError(f"distances must be one query's row (G,), got shape {tuple(d.shape)}")
    gp = _labels(g_pids, "g_pids", len(d), "gallery", d.device)
    gc = _labels(g_camids, "g_camids", len(d), "gallery", d.device)
    order = torch.sort(d, stable=True).indices
    keep = ~(((gp == q_pid) & (gc == q_camid)) | (gp == -1))[order]
    top = order[keep][:k]
    return top.numpy(), d[top].numpy(), (gp[top] == q_pid).numpy()


def extract_features(
    model: torch.nn.Module,
    loader: Iterable,
    device: str | torch.device,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Retrieval descriptors of every image of a loader, with their labels and paths.

    Runs ``model.descriptor(x)`` in eval mode without gradients (a tqdm bar if ``progress``)
    and restores the model's training mode afterwards, even on error.

    Args:
        model: a network with ``descriptor(x) -> (B, F)`` (e.g. ``paulkit.models.PatchNet``).
        loader: yields ``(img, pid, camid, path)`` batches (``paulkit.data.ImageDataset``).
        device: where the model runs.
        progress: show a progress bar.

    Returns:
        ``(feats, pids, camids, paths)``: float32 features on the CPU (N, F), int64 pids and
        camids (N,), and the N image paths, in loader order.

    Shape:
        img (B, C, H, W) -> feats (N, F); for PatchNet F = P * D (1536 in the paper).

    Paper: docs/paper.md "Evaluation" (test descriptor). Taught in: notebooks/07_evaluation.ipynb.
    """
    if not hasattr(model, "descriptor"):
        raise ValueError(
            f"model ({type(model).__name__}) has no descriptor(x) method; pass a "
            "paulkit.models.PatchNet or a module that defines one"
        )
    device = torch.device(device)
    feats, pids, camids, paths = [], [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            total = len(loader) if hasattr(loader, "__len__") else None
            for batch in tqdm(
                loader, total=total, desc="features", disable=not progress, leave=False
            ):
                if not isinstance(batch, (tuple, list)) or len(batch) < 4:
                    raise ValueError(
                        "loader must yield (img, pid, camid, path) batches, e.g. from "
                        "paulkit.data.ImageDataset"
                    )
                img, pid, camid, path = batch[:4]
                feats.append(model.descriptor(img.to(device, non_blocking=True)).float().cpu())
                pids.append(torch.as_tensor(pid).reshape(-1).long().cpu())
                camids.append(torch.as_tensor(camid).reshape(-1).long().cpu())
                paths.extend([path] if isinstance(path, str) else [str(p) for p in path])
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("loader yielded no batches: the image set is empty")
    return torch.cat(feats), torch.cat(pids), torch.cat(camids), paths
