"""The IPFL margin on the tuning draw: margin 2 (the paper's) against 0.5 for a CPU preset.

Run: ``.venv/bin/python bench/tune_margin.py --preset tutorial --seeds 0 1`` (prints a table
of target mAP for direct transfer, AdaBN, IPFL only and PAUL at each margin).

It reads only the *tuning draw* of the synthetic data (data seed 0, ``data.synth_seed=0``);
the results table (``paulkit reproduce``) reports on held-out draws (data seeds 1, 2, 3) that
no tuning tool reads. The CPU presets' margin in ``paulkit/config.py`` follows this table
(docs/results.md "How the numbers are made").
"""

from __future__ import annotations

import argparse
import statistics
import time

from paulkit import config as C
from paulkit import reproduce

TUNING_DRAW = 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tutorial")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--margins", type=float, nargs="+", default=[2.0, 0.5])
    ap.add_argument("--out", default="outputs/tune_margin")
    args = ap.parse_args(argv)
    base = C.override(C.get_preset(args.preset), f"data.synth_seed={TUNING_DRAW}")
    table: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for seed in args.seeds:
        for i, margin in enumerate(args.margins):
            cfg = C.override(base, f"seed={seed}", f"adapt.ipfl_margin={margin}")
            rows = ["paul", "ipfl_only"] + (["direct_transfer", "adabn"] if i == 0 else [])
            res = reproduce.evaluate_rows(cfg, rows, out=args.out, tag=f"margin{margin:g}")
            for row, r in res.items():
                name = row if row in ("direct_transfer", "adabn") else f"{row} margin {margin:g}"
                table.setdefault(name, []).append(100 * r["mAP"])
            print(
                f"seed {seed} margin {margin:g}: "
                + ", ".join(f"{k} {100 * v['mAP']:.1f}" for k, v in res.items()),
                flush=True,
            )
    print(
        f"\n{args.preset}, tuning draw (data seed {TUNING_DRAW}), model seeds {args.seeds}, "
        f"{(time.perf_counter() - t0) / 60:.1f} min; target mAP (%)"
    )
    print("| row | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for name, vals in table.items():
        cells = " | ".join(f"{v:.1f}" for v in vals)
        print(f"| {name} | {cells} | {statistics.fmean(vals):.1f} |")


if __name__ == "__main__":
    main()
