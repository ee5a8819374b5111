"""AdaBN's cost: the exact layer-by-layer estimate against the one-pass train-mode form.

``paulkit.train.adapt_batchnorm(exact=True)`` (the default) estimates the BatchNorm layers one
at a time (each pass stops at the layer being estimated), so its result does not depend on
how the images are batched; ``exact=False`` is one train-mode pass. This times both on random
images through the PatchNet of a preset. Usage::

    python bench/bench_adabn.py --arch resnet50 --height 384 --width 128 --images 2048  # GPU
    python bench/bench_adabn.py --arch small --height 64 --width 32 --images 1200       # CPU
"""

from __future__ import annotations

import argparse
import time

import torch

from paulkit import models, runtime, train


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="time exact vs one-pass AdaBN")
    ap.add_argument("--arch", default="small")
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=84)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    dev = runtime.select_device(args.device)
    model = models.PatchNet(arch=args.arch, weights=None).to(dev)
    x = torch.randn(args.images, 3, args.height, args.width)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), args.batch)
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    times = {}
    for exact in (False, True):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train.adapt_batchnorm(model, loader, dev, progress=False, exact=exact)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times[exact] = time.perf_counter() - t0
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"{name}, {args.arch} at {args.height}x{args.width}, {args.images} images, "
        f"{n_bn} BatchNorm layers: one pass {times[False]:.1f} s, exact {times[True]:.1f} s "
        f"({times[True] / times[False]:.1f}x)"
    )


if __name__ == "__main__":
    main()
