"""One PAUL step's memory work at Market-1501 scale: memories + PEDAL + IPFL + backward.

Times, in one run and interleaved (so that a busy machine slows all three alike):

- ``paulkit``: ``paulkit.train.paul_step`` (the function training calls: both memory updates,
  2 x ``pedal_loss`` + ``ipfl_loss``) and its backward;
- ``loop form``: the loop-form transcription of docs/paper.md in tests/reference.py (loops over
  patches, images and cycle-ranking candidates, as the official code runs);
- ``naive``: a straightforward vectorised PEDAL (autograd through distances, masking, two
  log-sum-exps and a top-k), with paulkit's memories and IPFL, for comparison;
- ``floor``: what no implementation can avoid, PEDAL's two matrix products per patch
  (distances forward, gradient backward: B x N x D each).

Each is reported as wall-clock time and as CPU time of this process (on a machine shared with
other jobs, CPU time with ``--threads 1`` is the steadiest figure).

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

from paulkit import config as C  # noqa: E402
from paulkit import losses, memory, train  # noqa: E402


def _loadavg() -> tuple[float, ...]:
    try:
        import os

        return os.getloadavg()
    except (AttributeError, OSError):
        return ()


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
    """The trained step itself (``paulkit.train.paul_step``) and its backward."""
    feats = feats.detach().requires_grad_()
    emb = emb.detach().requires_grad_()
    a = C.AdaptConfig(num_views=num, pedal_scale=scale, pedal_k=k)  # PEDAL x 2 + IPFL
    loss = train.paul_step(feats, emb, index, pm, im, a)["loss"]
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


def naive_pedal(patch_feats, bank, index, scale=15.0, k=10):
    f = patch_feats.transpose(0, 1)  # (P, B, D)
    m = bank.detach().transpose(0, 1)  # (P, N, D)
    d = f.square().sum(-1, keepdim=True) + m.square().sum(-1)[:, None] - 2 * f @ m.transpose(1, 2)
    own = torch.zeros_like(d, dtype=torch.bool)
    own[:, torch.arange(index.numel()), index] = True
    d = d.masked_fill(own, float("inf"))
    near = d.topk(k, dim=-1, largest=False).values
    return (torch.logsumexp(-scale * d, -1) - torch.logsumexp(-scale * near, -1)).mean()


def naive_step(pm, im, feats, emb, index, num, scale=15.0, k=10):
    feats = feats.detach().requires_grad_()
    emb = emb.detach().requires_grad_()
    b = index.numel()
    first = feats.view(b, num, *feats.shape[1:])[:, 0]
    pm.update(index, first.detach())
    centers = im.update(index, emb.detach(), num_views=num)
    loss = 2.0 * naive_pedal(first, pm.bank, index, scale, k) + losses.ipfl_loss(emb, centers, num)
    loss.backward()
    return loss.detach(), feats.grad, emb.grad


def floor_step(bank_pnd, feats_pbd):
    z = torch.bmm(feats_pbd, bank_pnd.transpose(1, 2))  # distances' product, (P, B, N)
    return torch.bmm(z, bank_pnd)  # gradient's product, (P, B, D)


def timed(fn, device):
    """(wall seconds, CPU seconds of this process) of one call."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


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


def patchnet_rates(arch="small", batch=64, height=64, width=32, repeats=6):
    """Forward+backward+SGD images per CPU-second of the small PatchNet, with paulkit's
    patch pooling and with the grid_sample + mean form it replaces."""
    from paulkit import models

    torch.manual_seed(0)
    x = torch.randn(batch, 3, height, width)
    model = models.PatchNet(num_classes=100, arch=arch, pretrain=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def rate() -> float:
        times = []
        for i in range(repeats + 2):
            c0 = time.process_time()
            out = model(x)
            loss = out.logits.square().mean() + out.embedding.square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 2:
                times.append(time.process_time() - c0)
        return batch / statistics.median(times)

    fast = rate()
    original = models.pool_patches
    models.pool_patches = lambda f, t: models.sample_patches(f, t).mean((-2, -1))
    try:
        slow = rate()
    finally:
        models.pool_patches = original
    return fast, slow


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
    ap.add_argument(
        "--patchnet", action="store_true", help="also time the small PatchNet (CPU, 64x32)"
    )
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
    im.update(all_idx, centers, num_views=1)
    ref_bank, ref_seen = bank.clone(), torch.ones(n, dtype=torch.bool)
    ref_centers, ref_cseen = centers.clone(), torch.ones(n, dtype=torch.bool)

    # Same inputs, same state: the two forms must agree before their times mean anything.
    out_fast = paulkit_step(pm, im, feats, emb, index, num)
    out_loop = loop_step(ref_bank, ref_seen, ref_centers, ref_cseen, feats, emb, index, num)
    diffs = [float((a - c).abs().max()) for a, c in zip(out_fast, out_loop)]
    print(
        f"agreement with the loop form: loss {diffs[0]:.2e}, grad feats {diffs[1]:.2e}, "
        f"grad emb {diffs[2]:.2e}"
    )
    assert max(diffs) < 1e-4, diffs

    bank_pnd = pm.bank.transpose(0, 1)
    first_pbd = feats.view(b, num, p, d)[:, 0].transpose(0, 1).contiguous()
    runs = {
        "floor": lambda: floor_step(bank_pnd, first_pbd),
        "paulkit": lambda: paulkit_step(pm, im, feats, emb, index, num),
        "naive": lambda: naive_step(pm, im, feats, emb, index, num),
        "loop": lambda: loop_step(
            ref_bank, ref_seen, ref_centers, ref_cseen, feats, emb, index, num
        ),
    }
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, fn in runs.items():
            if name == "loop" and r >= args.loop_rounds:
                continue
            w, c = timed(fn, dev)
            wall[name].append(w)
            cpu[name].append(c)
    med = statistics.median
    print(
        f"machine: {platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {dev}; "
        f"load average {' '.join(f'{x:.1f}' for x in _loadavg())}"
    )
    print(f"N={n} P={p} D={d} B={b} x {num} views E={e}; medians of {args.rounds} rounds")
    print(f"{'':34s}{'wall ms':>10s}{'x floor':>9s}{'CPU ms':>10s}{'x floor':>9s}")
    labels = {
        "floor": "floor (2 products per patch)",
        "paulkit": "paulkit step",
        "naive": "naive vectorised PEDAL step",
        "loop": "loop form step",
    }
    for name, label in labels.items():
        if not wall[name]:
            continue
        # ratios per round (each against the floor of the same round), then the median
        rw = med([x / f for x, f in zip(wall[name], wall["floor"])])
        rc = med([x / max(f, 1e-9) for x, f in zip(cpu[name], cpu["floor"])])
        print(
            f"{label:34s}{1000 * med(wall[name]):10.1f}{rw:9.2f}"
            f"{1000 * med(cpu[name]):10.1f}{rc:9.2f}"
        )
    if args.patchnet:
        fast, slow = patchnet_rates()
        print(
            f"small PatchNet fwd+bwd, batch 64 at 64x32: {fast:.0f} img per CPU-second with "
            f"pool_patches, {slow:.0f} with grid_sample + mean"
        )
    if dev.type == "cuda":
        t_net = resnet50_step_time(b, num, 384, 128, dev)
        print(
            f"ResNet-50 PatchNet fwd+bwd at 384x128, {b * num} views: {1000 * t_net:.1f} ms; "
            f"memories+losses are {100 * med(wall['paulkit']) / t_net:.1f}% of it"
        )


if __name__ == "__main__":
    main()
