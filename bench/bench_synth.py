"""Benchmark the synthetic generator (images per second) and a colour-histogram baseline.

Run: ``.venv/bin/python bench/bench_synth.py`` (sizes tiny and small; ``--sizes tiny`` for one,
``--no-baseline`` to skip the histogram retrieval; ``--gap-check`` adds a few CPU minutes of
training, see :func:`gap_check`). Generates into a temporary folder, so the
embedded data under ``data/synth`` is left alone. Prints wall-clock and CPU images/s (the
CPU figure is the one core's own time, steadier on a shared machine).

The baseline: colour histograms of each target query and gallery image compared with
cosine similarity under the Market-1501 protocol (same identity and camera ignored, junk
dropped, distractors kept; step AP). Two descriptors: a joint RGB histogram of the whole
image, and six horizontal stripes over the central "person" columns. Identities defined only
by clothing colour would make the striped one a strong re-id model; the generator's textures,
accessories, views and camera casts are meant to keep it a baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from paulkit.data import Market1501, synth


def colour_histograms(paths: list[str], stripes: int, person: bool, bins: int = 4) -> np.ndarray:
    """Joint RGB histograms (``bins`` per channel) of ``stripes`` horizontal bands, square-rooted
    and L2-normalised. ``person`` keeps only the central half of the columns."""
    feats = np.zeros((len(paths), stripes * bins**3), np.float32)
    for i, p in enumerate(paths):
        img = np.asarray(Image.open(p).convert("RGB"))
        if person:
            w = img.shape[1]
            img = img[:, w // 4 : w - w // 4]
        q = (img.astype(np.int32) * bins) // 256
        code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
        for s, band in enumerate(np.array_split(code, stripes, axis=0)):
            hist = np.bincount(band.ravel(), minlength=bins**3).astype(np.float32)
            feats[i, s * bins**3 : (s + 1) * bins**3] = np.sqrt(hist / hist.sum())
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) + 1e-12
    return feats


def market_map(qf, gf, q_pids, g_pids, q_cams, g_cams) -> tuple[float, float]:
    """(mAP, rank-1) under the Market-1501 protocol, step AP, cosine similarity."""
    sim = qf @ gf.T
    aps, r1 = [], []
    for i in range(len(qf)):
        keep = ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
        order = np.argsort(-sim[i][keep], kind="stable")
        match = (g_pids[keep][order] == q_pids[i]).astype(np.float64)
        if match.sum() == 0:
            continue
        hits = np.cumsum(match)
        aps.append(float((hits / np.arange(1, len(match) + 1))[match == 1].mean()))
        r1.append(match[0])
    return 100 * float(np.mean(aps)), 100 * float(np.mean(r1))


def histogram_baseline(folder: Path) -> dict[str, tuple[float, float]]:
    ds = Market1501(folder)
    q = ds.query
    g = ds.gallery
    qp, gp = np.array([r.pid for r in q]), np.array([r.pid for r in g])
    qc, gc = np.array([r.camid for r in q]), np.array([r.camid for r in g])
    out = {}
    for name, stripes, person in (
        ("whole image", 1, False),
        ("6 stripes, person columns", 6, True),
    ):
        qf = colour_histograms([r.path for r in q], stripes, person)
        gf = colour_histograms([r.path for r in g], stripes, person)
        out[name] = market_map(qf, gf, qp, gp, qc, gc)
    return out


def gap_check(source: Path, target: Path, epochs: int = 12) -> dict[str, float]:
    """Is the gap real and the target learnable? A throwaway check, not PAUL.

    A small 7-conv network (BatchNorm, global average pooling) at 64x32 is trained with
    cross-entropy on the source's labels and evaluated (mAP, Market protocol) on the source's
    and the target's test splits (direct transfer); then with its BatchNorm statistics
    re-estimated on the target's training images (AdaBN); then the same network trained on
    the target's labels (the oracle: labels used for that row only).
    """
    import copy

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from paulkit.data import ImageDataset
    from paulkit.data import transforms as T

    torch.manual_seed(0)
    src, tgt = Market1501(source), Market1501(target)
    tf = T.test_transform(64, 32)

    def tensors(records):
        ds = ImageDataset(records, tf)
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        return x, np.array([r.pid for r in records]), np.array([r.camid for r in records])

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    class Net(nn.Module):
        def __init__(self, classes: int, w: int = 32) -> None:
            super().__init__()
            self.body = nn.Sequential(
                block(3, w), block(w, w), nn.MaxPool2d(2), block(w, 2 * w), block(2 * w, 2 * w),
                nn.MaxPool2d(2), block(2 * w, 4 * w), block(4 * w, 4 * w), nn.MaxPool2d(2),
                block(4 * w, 8 * w),
            )  # fmt: skip
            self.bn = nn.BatchNorm1d(8 * w)
            self.fc = nn.Linear(8 * w, classes)

        def feat(self, x):
            return self.bn(self.body(x).mean((2, 3)))

    def train(x, y, classes):
        torch.manual_seed(0)
        net = Net(classes)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        y = torch.as_tensor(y)
        for _ in range(epochs):
            net.train()
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 64):
                idx = perm[i : i + 64]
                xb = x[idx]
                flip = torch.rand(len(xb)) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
                loss = F.cross_entropy(net.fc(net.feat(xb)), y[idx], label_smoothing=0.1)
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        return net

    @torch.no_grad()
    def score(net, ds) -> float:
        net.eval()
        (qx, qp, qc), (gx, gp, gc) = tensors(ds.query), tensors(ds.gallery)
        qf = F.normalize(net.feat(qx), dim=1).numpy()
        gf = torch.cat(
            [F.normalize(net.feat(gx[i : i + 512]), dim=1) for i in range(0, len(gx), 512)]
        )
        return market_map(qf, gf.numpy(), qp, gp, qc, gc)[0]

    @torch.no_grad()
    def adabn(net, x):
        net = copy.deepcopy(net)
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the whole pass
        net.train()
        for i in range(0, len(x), 128):
            net.feat(x[i : i + 128])
        return net

    xs, ys, _ = tensors(src.train)
    xt, yt, _ = tensors(tgt.train)
    out: dict[str, float] = {}

    def note(name: str, value: float) -> None:
        out[name] = value
        print(f"  small CNN, {name}: mAP {value:.1f}", flush=True)

    net = train(xs, np.array(ys), src.num_train_pids)
    note("source -> source", score(net, src))
    note("direct transfer", score(net, tgt))
    note("AdaBN", score(adabn(net, xt), tgt))
    note("oracle (target labels)", score(train(xt, yt, tgt.num_train_pids), tgt))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=None, help="default: tiny small")
    # the old spelling of --sizes, read with a deprecation message until the next release
    parser.add_argument("--presets", nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--gap-check", action="store_true", help="train a small CNN (minutes)")
    args = parser.parse_args()
    if args.presets is not None:
        print(
            "bench_synth: --presets is deprecated and goes in the next release: use --sizes",
            file=sys.stderr,
        )
    sizes = args.sizes or args.presets or ["tiny", "small"]
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            for domain in ("source", "target"):
                synth._CAMERA_CACHE.clear()  # count the cameras' scenes too
                t0, c0 = time.perf_counter(), time.process_time()
                folder = synth.generate(tmp, domain, size, args.seed)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                n = sum(1 for _ in folder.rglob("*.jpg"))
                print(
                    f"synth {size:<6} {domain:<6}: {n:6d} images in {wall:6.1f} s wall "
                    f"({n / wall:5.0f} img/s), {cpu:6.1f} s CPU ({n / cpu:5.0f} img/s per core)"
                )
            if not args.no_baseline:
                base = Path(tmp)
                for domain in ("source", "target"):
                    folder = base / synth.folder_name(domain, size, args.seed)
                    for name, (m, r1) in histogram_baseline(folder).items():
                        print(
                            f"  colour histogram {size} {domain}, {name}: mAP {m:.1f}  rank-1 {r1:.1f}"
                        )


if __name__ == "__main__":
    main()
