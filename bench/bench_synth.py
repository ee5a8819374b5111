"""Benchmark the synthetic generator (images per second) and a colour-histogram baseline.

Run: ``.venv/bin/python bench/bench_synth.py`` (tiny and small; ``--presets tiny`` for one,
``--no-baseline`` to skip the histogram retrieval). Generates into a temporary folder, so the
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            for domain in ("source", "target"):
                synth._CAMERA_CACHE.clear()  # count the cameras' scenes too
                t0, c0 = time.perf_counter(), time.process_time()
                folder = synth.generate(tmp, domain, preset, args.seed)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                n = sum(1 for _ in folder.rglob("*.jpg"))
                print(
                    f"synth {preset:<6} {domain:<6}: {n:6d} images in {wall:6.1f} s wall "
                    f"({n / wall:5.0f} img/s), {cpu:6.1f} s CPU ({n / cpu:5.0f} img/s per core)"
                )
            if not args.no_baseline:
                base = Path(tmp)
                for domain in ("source", "target"):
                    folder = base / synth.folder_name(domain, preset, args.seed)
                    for name, (m, r1) in histogram_baseline(folder).items():
                        print(
                            f"  colour histogram {preset} {domain}, {name}: mAP {m:.1f}  rank-1 {r1:.1f}"
                        )


if __name__ == "__main__":
    main()
