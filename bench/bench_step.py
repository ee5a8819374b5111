"""One PAUL step's memory work at Market-1501 scale: memories + PEDAL + IPFL + backward.

Times, in one run and interleaved (so that a busy machine slows all three alike):

- ``paulkit``: PatchMemory/ImageMemory updates, ``pedal_loss`` and ``ipfl_loss``, backward;
- ``loop form``: the loop-form transcription of PAPER.md in tests/reference.py (loops over
  patches, images and cycle-ranking candidates, as the official code runs);
- ``floor``: what no implementation can avoid, PEDAL's two matrix products per patch
  (distances forward, gradient backward: B x N x D each).

The network is left out (the features are leaf tensors): this measures the part of a step
that paulkit's losses and memories own. Usage::

    python bench/bench_step.py                  # Market-1501 scale, CPU
    python bench/bench_step.py --device cuda    # also reports the ResNet-50 step it sits in
    python bench/bench_step.py --images 3000 --rounds 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reference as R  # noqa: E402  (the loop-form transcription lives with the tests)

from paulkit import losses, memory  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_inputs(n, p, d, b, num, e, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(b * num, p, d, generator=g), dim=-1).to(device)
    emb = torch.randn(b * num, e, generator=g).to(device)
    bank = F.normalize(torch.randn(n, p, d, generator=g), dim=-1).to(device)
    centers = torch.randn(n, e, generator=g).to(device)
    index = torch.randperm(n, generator=g)[:b].to(device)
    return feats, emb, bank, centers, index


def paulkit_step(pm, im, feats, emb, index, num, scale=15.0, k=10):
    feats = feats.detach().requires_grad_()
    emb = emb.detach().requires_grad_()
    b = index.numel()
    first = feats.view(b, num, *feats.shape[1:])[:, 0]
    pm.update(index, first.detach())
    centers = im.update(index, emb.detach(), num=num)
    pedal = losses.pedal_loss(first, pm.bank, index, scale, k, bank_sq_norms=pm.sq_norms)
    ipfl = losses.ipfl_loss(emb, centers, num)
    loss = 2.0 * pedal + ipfl
    loss.backward()
    return loss.detach(), feats.grad, emb.grad


def loop_step(bank, seen, centers, cseen, feats, emb, index, num, scale=15.0, k=10):
    feats = feats.detach().requires_grad_()
    emb = emb.detach().requires_grad_()
    b = index.numel()
    first = feats.view(b, num, *feats.shape[1:])[:, 0]
    R.memory_update_loop(bank, seen, index, first.detach(), 0.1)
    c = R.image_memory_update_loop(centers, cseen, index, emb.detach(), num, 0.1)
    loss = 2.0 * R.pedal_loop(first, bank, index, scale, k) + R.ipfl_loop(emb, c, num)
    loss.backward()
    return loss.detach(), feats.grad, emb.grad


def floor_step(bank_pnd, feats_pbd):
    z = torch.bmm(feats_pbd, bank_pnd.transpose(1, 2))  # distances' product, (P, B, N)
    return torch.bmm(z, bank_pnd)  # gradient's product, (P, B, D)


def timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def resnet50_step_time(b, num, height, width, device, repeats=3):
    from paulkit.models import PatchNet

    model = PatchNet(arch="resnet50").to(device)
    x = torch.randn(b * num, 3, height, width, device=device)
    times = []
    for i in range(repeats + 1):
        dt, _ = timed(lambda: model(x).embedding.square().mean().backward(), device)
        if i:
            times.append(dt)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12936, help="N, memory slots (Market: 12936)")
    ap.add_argument("--batch", type=int, default=42, help="B images per step (x num views)")
    ap.add_argument("--num", type=int, default=2)
    ap.add_argument("--patches", type=int, default=6)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--embed", type=int, default=768)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--loop-rounds", type=int, default=3, help="rounds that also run the loop")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    n, p, d, b, num, e = args.images, args.patches, args.dim, args.batch, args.num, args.embed
    feats, emb, bank, centers, index = make_inputs(n, p, d, b, num, e, dev)

    pm = memory.PatchMemory(n, p, d).to(dev)
    im = memory.ImageMemory(n, e).to(dev)
    all_idx = torch.arange(n, device=dev)
    pm.update(all_idx, bank)  # the initialisation pass
    im.update(all_idx, centers, num=1)
    ref_bank, ref_seen = bank.clone(), torch.ones(n, dtype=torch.bool)
    ref_centers, ref_cseen = centers.clone(), torch.ones(n, dtype=torch.bool)

    # Same inputs, same state: the two forms must agree before their times mean anything.
    out_fast = paulkit_step(pm, im, feats, emb, index, num)
    out_loop = loop_step(ref_bank, ref_seen, ref_centers, ref_cseen, feats, emb, index, num)
    diffs = [float((a - c).abs().max()) for a, c in zip(out_fast, out_loop)]
    print(f"agreement with the loop form: loss {diffs[0]:.2e}, grad feats {diffs[1]:.2e}, "
          f"grad emb {diffs[2]:.2e}")
    assert max(diffs) < 1e-4, diffs

    bank_pnd = pm.bank.transpose(0, 1)
    first_pbd = feats.view(b, num, p, d)[:, 0].transpose(0, 1).contiguous()
    t_fast, t_loop, t_floor = [], [], []
    for r in range(args.rounds):
        t_floor.append(timed(lambda: floor_step(bank_pnd, first_pbd), dev)[0])
        t_fast.append(timed(lambda: paulkit_step(pm, im, feats, emb, index, num), dev)[0])
        if r < args.loop_rounds:
            t_loop.append(
                timed(
                    lambda: loop_step(
                        ref_bank, ref_seen, ref_centers, ref_cseen, feats, emb, index, num
                    ),
                    dev,
                )[0]
            )
    ms = lambda ts: 1000 * statistics.median(ts)  # noqa: E731
    ratio = statistics.median([f / fl for f, fl in zip(t_fast, t_floor)])
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {dev}")
    print(f"N={n} P={p} D={d} B={b} x {num} views E={e}; medians of {args.rounds} rounds")
    print(f"floor (2 products per patch) : {ms(t_floor):8.1f} ms")
    print(f"paulkit step                 : {ms(t_fast):8.1f} ms   ({ratio:.2f} x floor)")
    if t_loop:
        print(f"loop form step               : {ms(t_loop):8.1f} ms   "
              f"({ms(t_loop) / ms(t_fast):.1f} x slower than paulkit)")
    if dev.type == "cuda":
        t_net = resnet50_step_time(b, num, 384, 128, dev)
        print(f"ResNet-50 PatchNet fwd+bwd at 384x128, {b * num} views: {1000 * t_net:.1f} ms; "
              f"memories+losses are {100 * statistics.median(t_fast) / t_net:.1f}% of it")


if __name__ == "__main__":
    main()
