"""Cluster Contrast's pseudo-labels on the held-out runs of the results table.

Reads the checkpoints that ``python -m paulkit reproduce --preset tutorial --rows
cluster_contrast`` leaves in ``outputs/<preset>/data<d>-seed<s>/`` (their per-epoch history:
clusters, outliers, NMI against the hidden identities, display only) beside the run's mAP in
``docs/results.json``, and prints one line per run: does Cluster Contrast's result follow the
quality of its clusters?

Usage: python bench/cluster_runs.py [--preset tutorial] [--out DIR]  (default: $PAULKIT_OUT,
else outputs/, as paulkit reproduce)
"""

import argparse
import json
from pathlib import Path

import torch

from paulkit import cluster, paths, reproduce, train
from paulkit import config as C

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tutorial")
    p.add_argument("--out", type=Path, default=None, help="as paulkit reproduce --out")
    args = p.parse_args(argv)
    table = json.loads((ROOT / "docs" / "results.json").read_text())[args.preset]
    runs = table.get("added_rows", {}).get("cluster_contrast", {}).get("runs") or []
    if not runs:
        raise SystemExit(f"docs/results.json has no Cluster Contrast runs for {args.preset!r}")
    print(f"{'run':12s} {'clusters':>12s} {'NMI':>12s} {'CC mAP':>7s} {'PAUL':>6s} {'CC-PAUL':>8s}")
    missing = []
    for data_seed in table["data_seeds"]:
        for seed in table["seeds"]:
            run = reproduce.run_key(data_seed, seed)
            if run not in runs:
                continue
            cfg = C.override(
                C.get_preset(args.preset), f"data.synth_seed={data_seed}", f"seed={seed}"
            )
            path = train.checkpoint_path(cfg, cluster.PHASE, "cluster_contrast", args.out)
            _line(run, path, table["per_seed"][run], missing)
    if missing:
        print(
            "no checkpoint (run `python -m paulkit reproduce --preset "
            f"{args.preset} --rows cluster_contrast` first): " + ", ".join(missing)
        )
    return 0


def _line(run: str, path: Path, m: dict, missing: list[str]) -> None:
    if not path.exists():
        missing.append(paths.shown_path(path))
        return
    h = torch.load(path, map_location="cpu", weights_only=True)["history"]
    cc, paul = 100 * m["cluster_contrast"]["mAP"], 100 * m["paul"]["mAP"]
    clusters = f"{h['num_clusters'][0]} -> {h['num_clusters'][-1]}"
    nmi = f"{h['nmi'][0]:.2f} -> {h['nmi'][-1]:.2f}"
    print(f"{run:12s} {clusters:>12s} {nmi:>12s} {cc:7.1f} {paul:6.1f} {cc - paul:+8.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
