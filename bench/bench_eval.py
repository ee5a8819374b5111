"""Benchmark: paulkit's evaluator vs a plain per-query loop on Market-1501-shaped inputs.

Synthetic descriptors shaped like PatchNet's (6 L2-normalised 256-d patch features, 1536-d)
with identity structure, a per-camera shift and distractors; 3,368 queries and 15,913 gallery
images of 750 identities plus 2,798 distractors (pid 0) over 6 cameras, as in Market-1501.
Both evaluators run in the same process on the same inputs; the loop is written like
torchreid's Python ``eval_market1501`` (argsort of the whole matrix, then one NumPy pass per
query) with the trapezoid AP and INP added. Their results must agree.

    .venv/bin/python bench/bench_eval.py            # Market scale (about 30 s on 2 cores)
    .venv/bin/python bench/bench_eval.py --msmt     # MSMT17 scale, chunked (1-2 min)
    .venv/bin/python bench/bench_eval.py --threads 1  # one core (steadier on a shared machine)
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import torch

from paulkit import evaluation

CAMS = 6


def market_like(
    num_query: int = 3368,
    num_gallery: int = 15913,
    num_ids: int = 750,
    num_distractors: int = 2798,
    patches: int = 6,
    dim: int = 256,
    signal: float = 0.31,
    seed: int = 0,
):
    """Features and labels shaped like Market-1501's test split (float32, unit patches)."""
    rng = np.random.default_rng(seed)
    centres = signal * rng.standard_normal((num_ids + 1, patches, dim), dtype=np.float32)
    cam_shift = 0.3 * signal * rng.standard_normal((CAMS, patches, dim), dtype=np.float32)

    def labels(n: int) -> np.ndarray:  # every identity at least twice, the rest at random
        return rng.permutation(
            np.concatenate(
                [
                    np.repeat(np.arange(1, num_ids + 1), 2),
                    rng.integers(1, num_ids + 1, n - 2 * num_ids),
                ]
            )
        )

    q_pids = labels(num_query)
    g_pids = np.concatenate([labels(num_gallery - num_distractors), np.zeros(num_distractors, int)])
    q_camids, g_camids = rng.integers(0, CAMS, num_query), rng.integers(0, CAMS, num_gallery)

    def feats(pids: np.ndarray, camids: np.ndarray) -> np.ndarray:
        f = np.empty((len(pids), patches, dim), np.float32)
        for a in range(0, len(pids), 2048):  # bounded temporaries
            p, c = pids[a : a + 2048], camids[a : a + 2048]
            x = centres[p] + cam_shift[c]
            x[p == 0] = signal * rng.standard_normal(((p == 0).sum(), patches, dim), np.float32)
            hard = rng.uniform(0.7, 1.6, (len(p), 1, 1)).astype(np.float32)  # per-image difficulty
            x += hard * rng.standard_normal((len(p), patches, dim), np.float32)
            f[a : a + 2048] = x / np.linalg.norm(x, axis=2, keepdims=True)
        return f.reshape(len(pids), patches * dim)

    return feats(q_pids, q_camids), feats(g_pids, g_camids), q_pids, g_pids, q_camids, g_camids


def loop_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The plain per-query loop (torchreid's Python eval_market1501, plus trapezoid AP, INP)."""
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_trap, all_inp = [], [], [], []
    for q_idx in range(len(q_pids)):
        order = indices[q_idx]
        remove = ((g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])) | (
            g_pids[order] == -1
        )
        raw_cmc = matches[q_idx][~remove]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_rel = raw_cmc.sum()
        rows = np.flatnonzero(raw_cmc)
        prec = np.arange(1, num_rel + 1) / (rows + 1.0)
        prev = np.where(rows > 0, np.arange(num_rel) / np.maximum(rows, 1), 1.0)
        all_ap.append(prec.mean())
        all_trap.append(((prev + prec) / 2).mean())
        all_inp.append(num_rel / (rows[-1] + 1.0))
    cmc = np.asarray(all_cmc, dtype=np.float64).mean(0)
    return cmc, np.mean(all_ap), np.mean(all_trap), np.mean(all_inp)


class Timing(float):
    """Best wall-clock seconds of the repeats, with that run's process CPU seconds as ``.cpu``
    (on a machine shared with other jobs the CPU time is the steadier figure)."""

    cpu: float

    def __str__(self) -> str:
        return f"{float(self):6.2f} s wall {self.cpu:6.2f} s CPU"


def timed(fn, repeat: int = 1):
    best, out = None, None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall = Timing(time.perf_counter() - t)
        wall.cpu = time.process_time() - c
        best = wall if best is None or wall < best else best
    return best, out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def market(repeat: int) -> None:
    qf, gf, q_pids, g_pids, q_camids, g_camids = market_like()
    labels = (q_pids, g_pids, q_camids, g_camids)
    print(f"Market-shaped: {len(qf)} queries x {len(gf)} gallery, {qf.shape[1]}-d features")

    t_full, res = timed(lambda: evaluation.evaluate_features(qf, gf, *labels), repeat)
    rss_full = peak_rss_gb()
    t_dist, distmat = timed(lambda: evaluation.compute_distmat(qf, gf), repeat)
    t_rank, res2 = timed(lambda: evaluation.evaluate(distmat, *labels), repeat)
    dm = distmat.numpy()
    t_loop, (cmc, mAP, trap, mINP) = timed(lambda: loop_eval(dm, *labels))

    np.testing.assert_allclose(res.cmc, cmc, atol=1e-4)
    np.testing.assert_allclose([res.mAP, res.mAP_trapezoid, res.mINP], [mAP, trap, mINP], atol=1e-4)
    assert res2.mAP == res.mAP
    d = res.as_dict()
    print(
        f"  metrics: rank-1 {100 * d['rank1']:.2f}  mAP {100 * d['mAP']:.2f} (step) "
        f"{100 * d['mAP_trapezoid']:.2f} (trapezoid)  mINP {100 * d['mINP']:.2f}  "
        f"valid {res.num_valid}, skipped {res.num_skipped} (the loop agrees)"
    )
    print(f"  paulkit evaluate_features (distances + ranking): {t_full}")
    print(f"  paulkit compute_distmat:                         {t_dist}")
    print(f"  paulkit evaluate (ranking, distmat given):       {t_rank}")
    print(f"  per-query NumPy loop (ranking, distmat given):   {t_loop}")
    print(
        f"  ranking speed-up over the loop: {t_loop / t_rank:.1f}x wall, "
        f"{t_loop.cpu / t_rank.cpu:.1f}x CPU"
    )
    print(f"  peak RSS after evaluate_features: {rss_full:.2f} GB (the loop's arrays come later)")


def msmt() -> None:
    qf, gf, q_pids, g_pids, q_camids, g_camids = market_like(11659, 82161, 3060, 0, seed=1)
    rss0 = peak_rss_gb()
    print(f"MSMT17-shaped: {len(qf)} queries x {len(gf)} gallery, {qf.shape[1]}-d features")
    print(f"  (a float32 distmat would take {len(qf) * len(gf) * 4 / 1e9:.1f} GB; never built)")
    t, res = timed(lambda: evaluation.evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids))
    print(f"  evaluate_features: {t}, rank-1 {100 * res.rank(1):.2f} mAP {100 * res.mAP:.2f}")
    print(
        f"  peak RSS {peak_rss_gb():.2f} GB (after making the features: {rss0:.2f} GB; "
        f"features {(qf.nbytes + gf.nbytes) / 2**30:.2f} GB)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="best of N for paulkit's timings")
    ap.add_argument("--msmt", action="store_true", help="run the MSMT17-scale problem instead")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy {np.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    if args.msmt:
        msmt()
    else:
        market(args.repeat)


if __name__ == "__main__":
    main()
