"""Benchmark: Cluster Contrast's pseudo-labelling (Jaccard distance + DBSCAN) against N.

Clustered synthetic descriptors shaped like PatchNet's (1536-d, L2-normalised; the noise set
so that DBSCAN finds most identities but not all: NMI about 0.98 at N = 1,200), about 17
images per identity as in Market-1501's training split (12,936 images of 751 identities), at
N = 1,200 (the tutorial's target), 3,000 and 12,936. Each N runs in a fresh process so that
its peak memory is its own: peak resident memory above the process's memory just before the
call (CPU; the features built and both functions warmed up on 256 images first, so that
importing scikit-learn is not counted), or torch's peak allocation (CUDA). Beside it, the
plain loop transcription of the authors' algorithm (tests/reference.py) at a small N, with
the vectorised form on the same features (their distances must agree).

    .venv/bin/python bench/bench_cluster.py                    # CPU, N = 1200, 3000, 12936
    .venv/bin/python bench/bench_cluster.py --sizes 1200 3000  # skip Market's N
    .venv/bin/python bench/bench_cluster.py --device cuda      # the GPU figures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from paulkit import cluster

PER_ID = 17  # Market-1501: 12,936 training images of 751 identities
DIM = 1536  # PatchNet's descriptor: 6 patches x 256


def features(n: int, seed: int = 0, noise: float = 3.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1536) unit features: identity centre + per-image noise; and the identities."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(n) // PER_ID
    centres = torch.randn(int(ids.max()) + 1, DIM, generator=g)
    x = centres[ids] + noise * torch.randn(n, DIM, generator=g)
    return F.normalize(x, dim=1), ids


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def one(n: int, device: str) -> dict:
    """Time and memory of jaccard_distance + cluster_labels at N = n (this process)."""
    x, ids = features(n)
    x = x.to(device)
    cuda = device.startswith("cuda")
    cluster.cluster_labels(cluster.jaccard_distance(x[:256]))  # warm-up: imports, kernels
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _rss_gb()
    t0 = time.perf_counter()
    c0 = time.process_time()
    dist = cluster.jaccard_distance(x)
    if cuda:
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    c1 = time.process_time()
    labels = cluster.cluster_labels(dist)
    t2 = time.perf_counter()
    c2 = time.process_time()
    q = cluster.pseudo_label_quality(labels, ids)
    return {
        "n": n,
        "device": device,
        "jaccard_s": round(t1 - t0, 2),
        "jaccard_cpu_s": round(c1 - c0, 2),
        "dbscan_s": round(t2 - t1, 2),
        "dbscan_cpu_s": round(c2 - c1, 2),
        "peak_above_gb": round(max(0.0, _peak_gb() - before), 2),
        "cuda_peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
        "matrix_gb": round(4 * n * n / 1e9, 2),
        "clusters": q["num_clusters"],
        "ids": int(ids.max()) + 1,
        "outliers": round(q["outlier_share"], 3),
        "nmi": round(q["nmi"], 3),
    }


def loop_check(n: int) -> dict:
    """The loop transcription against the vectorised form on the same n features."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import reference as R

    x, _ = features(n)
    t0 = time.perf_counter()
    ref = R.jaccard_distance_loop(x)
    t1 = time.perf_counter()
    fast = cluster.jaccard_distance(x)
    t2 = time.perf_counter()
    return {
        "n": n,
        "loop_s": round(t1 - t0, 2),
        "vectorised_s": round(t2 - t1, 3),
        "max_abs_diff": float((ref - fast).abs().max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1200, 3000, 12936])
    ap.add_argument("--loop-n", type=int, default=200, help="N of the loop comparison")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.device)))
        return
    threads = torch.get_num_threads()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({threads} threads), load {os.getloadavg()[0]:.1f}; "
        f"device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
    )
    lc = loop_check(args.loop_n)
    print(
        f"loop transcription at N = {lc['n']}: {lc['loop_s']} s; vectorised "
        f"{lc['vectorised_s']} s ({lc['loop_s'] / max(lc['vectorised_s'], 1e-9):.0f}x); "
        f"max |difference| {lc['max_abs_diff']:.1e}"
    )
    print(
        "| N | Jaccard s (CPU s) | DBSCAN s (CPU s) | peak above start GB | N x N float32 GB "
        "| clusters / ids | outliers | NMI |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--device", args.device]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"| {n} | failed: {res.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        peak = r["cuda_peak_gb"] if r["cuda_peak_gb"] is not None else r["peak_above_gb"]
        print(
            f"| {n:,} | {r['jaccard_s']} ({r['jaccard_cpu_s']}) | {r['dbscan_s']} "
            f"({r['dbscan_cpu_s']}) | {peak} | {r['matrix_gb']} | {r['clusters']} / "
            f"{r['ids']} | {r['outliers']:.1%} | {r['nmi']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
