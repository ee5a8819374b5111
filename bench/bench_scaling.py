"""Scale-out cost of PAUL's memories: the per-step all-gather + update beside the step.

In one run, for 1 and for 2 processes (gloo over 127.0.0.1, on the CPU), every rank calls
``paulkit.train.paul_step`` - the function training calls after the forward pass - and its
backward, at Market-1501 scale (N = 12,936 memory slots, global batch B = 42 images x 2
views, P = 6, D = 256, E = 768):

- **gather**: the time spent inside the step's all-gathers of the batch's indices, first-view
  patch features (b, P, D) and image-level features (b*2, E) (``Runtime.gather``, i.e.
  ``paulkit.distributed.all_gather_cat``; b = B / W);
- **step**: the whole step: the gathers, both memory updates with the global batch (every
  rank applies the same update), PEDAL for the rank's b images against the whole bank, IPFL
  for its views against the gathered centres, and their backward.

The network is left out (the features are leaf tensors): the forward/backward of the network
and DDP's gradient all-reduce are what a real step adds. For the latter, the script also
times one gloo all-reduce of a gradient the size of the ResNet-50 PatchNet's trained
parameters (about 100 MB) between the 2 processes. Usage::

    python bench/bench_scaling.py                 # 1 and 2 processes, 1 thread each
    python bench/bench_scaling.py --steps 30 --threads 1

Figures (median over steps of the slowest rank) are printed; docs/scaling.md and
docs/benchmarks.md hold the measured ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from paulkit import config as C
from paulkit import distributed as ddp
from paulkit import memory, train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resnet50_trained_params() -> int:
    """Parameters DDP all-reduces in PAUL adaptation with the paper's PatchNet: backbone +
    reduction (the patch generator and embeddings are frozen, so left out)."""
    from paulkit import models

    model = models.PatchNet(num_classes=None, arch="resnet50", weights=None)
    groups = model.param_groups()
    return sum(p.numel() for g in ("backbone", "new") for p in groups[g])


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(args.threads)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    n, big_b, p, d, e, num = args.images, args.batch, 6, 256, 768, 2
    b = ddp.local_batch(big_b, world, "--batch")
    g = torch.Generator().manual_seed(0)  # the same stream on every rank: same global batches
    pm = memory.PatchMemory(n, p, d)
    im = memory.ImageMemory(n, e)
    every = torch.arange(n)
    pm.update(every, F.normalize(torch.randn(n, p, d, generator=g), dim=-1))
    im.update(every, 0.3 * torch.randn(n, e, generator=g), num_views=1)
    a = C.AdaptConfig(batch_size=big_b, num_views=num)  # PEDAL x 2 + IPFL, the paper's settings
    waited = [0.0, 0.0]  # wall and CPU seconds spent inside the all-gathers of this step

    def gather(x: torch.Tensor) -> torch.Tensor:
        c, t = time.process_time(), time.perf_counter()
        out = ddp.all_gather_cat(x)
        waited[0] += time.perf_counter() - t
        waited[1] += time.process_time() - c
        return out

    rows: list[dict[str, float]] = []
    for step in range(args.warmup + args.steps):
        index = torch.randperm(n, generator=g)[:big_b][rank * b : (rank + 1) * b]
        gl = torch.Generator().manual_seed(1000 * step + rank)  # this rank's own features
        feats = F.normalize(torch.randn(b * num, p, d, generator=gl), dim=-1).requires_grad_()
        emb = (0.3 * torch.randn(b * num, e, generator=gl)).requires_grad_()
        dist.barrier()
        waited[:] = [0.0, 0.0]
        c0, t0 = time.process_time(), time.perf_counter()
        # the trained step itself (memories, then the losses), then its backward
        train.paul_step(feats, emb, index, pm, im, a, gather, rank)["loss"].backward()
        c1, t1 = time.process_time(), time.perf_counter()
        if step >= args.warmup:
            rows.append(
                {
                    "gather": waited[0],
                    "gather_cpu": waited[1],
                    "step": t1 - t0,
                    "step_cpu": c1 - c0,
                }
            )
    allreduce = []
    if world > 1 and args.grad_params:
        grad = torch.zeros(args.grad_params)
        for i in range(args.allreduce_reps + 1):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(grad)
            if i:  # the first one sets up the buffers
                allreduce.append(time.perf_counter() - t0)
    everyone = [None] * world
    dist.all_gather_object(everyone, rows)
    if rank == 0:
        # per step, the slowest rank sets the pace
        per_step = [
            {k: max(r[s][k] for r in everyone) for k in everyone[0][0]} for s in range(args.steps)
        ]
        med = {k: statistics.median(row[k] for row in per_step) for k in per_step[0]}
        med["allreduce"] = statistics.median(allreduce) if allreduce else float("nan")
        # what the all-gather assembles on every rank (nothing moves for one process)
        med["bytes"] = (world * b * (p * d + num * e) * 4 + world * b * 8) if world > 1 else 0
        Path(out).write_text(json.dumps(med))
    dist.destroy_process_group()


def run(world: int, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.start_processes(
            _rank, args=(world, _free_port(), args, out), nprocs=world, start_method="spawn"
        )
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=12_936, help="memory slots N (Market-1501)")
    ap.add_argument("--batch", type=int, default=42, help="global batch B (images)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--allreduce-reps", type=int, default=3)
    args = ap.parse_args(argv)
    args.grad_params = resnet50_trained_params()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, gloo on 127.0.0.1, {args.threads} thread(s) per process; "
        f"load average {', '.join(f'{x:.1f}' for x in load)}"
    )
    print(
        f"N = {args.images:,}, global batch {args.batch} x 2 views, P = 6, D = 256, E = 768; "
        f"median over {args.steps} steps of the slowest rank"
    )
    res = {w: run(w, args) for w in args.worlds}
    ms = 1000.0
    print(
        "| processes | per-rank batch | gather ms (CPU) | step ms (CPU) | gather share "
        "| bytes gathered / step |"
    )
    print("|---|---|---|---|---|---|")
    for w, r in res.items():
        share = r["gather"] / r["step"]
        print(
            f"| {w} | {args.batch // w} | {r['gather'] * ms:.1f} ({r['gather_cpu'] * ms:.1f}) | "
            f"{r['step'] * ms:.1f} ({r['step_cpu'] * ms:.1f}) | {share:.1%} | "
            f"{r['bytes'] / 1e6:.2f} MB |"
        )
    mb = args.grad_params * 4 / 1e6
    for w, r in res.items():
        if w > 1 and r["allreduce"] == r["allreduce"]:
            print(
                f"gloo all-reduce of the ResNet-50 PatchNet gradient ({args.grad_params:,} "
                f"params, {mb:.0f} MB) between {w} processes: {r['allreduce'] * ms:.0f} ms"
            )


if __name__ == "__main__":
    main()
