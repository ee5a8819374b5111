"""The results table: every baseline, ablation and PAUL over several model seeds.

``paulkit reproduce --preset synth_small`` calls :func:`reproduce`, which for each seed runs
(or loads) pretraining, and then evaluates on the target's query/gallery:

- ``histogram``: colour histograms, no training (the best of whole-image and striped);
- ``direct_transfer``: the source model as it is;
- ``adabn``: the source model with BatchNorm statistics re-estimated on the target's
  training images (no labels, no training);
- ``pedal_only``, ``ipfl_only``, ``paul``: unsupervised adaptation with one or both losses;
- ``oracle``: the same network trained with the pretraining recipe on the target's *training
  labels* - the only row that sees target labels, as a reference for what is learnable.

Taught in: notebooks/07_evaluation.ipynb.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from paulkit import baselines, evaluation, train, utils
from paulkit import config as C
from paulkit import data as D

__all__ = [
    "ROWS",
    "METRICS",
    "evaluate_rows",
    "reproduce",
    "write_results",
    "render_results",
    "results_markdown",
    "attribution_verdict",
]

ROWS = [
    "histogram",
    "direct_transfer",
    "adabn",
    "pedal_only",
    "ipfl_only",
    "paul",
    "oracle",
]
METRICS = ["rank1", "rank5", "rank10", "mAP", "mAP_trapezoid", "mINP"]
LABELS = {
    "histogram": "Colour histogram (no training)",
    "direct_transfer": "Direct transfer (source model)",
    "adabn": "AdaBN (target BN statistics only)",
    "pedal_only": "PAUL, PEDAL only",
    "ipfl_only": "PAUL, IPFL only",
    "paul": "PAUL (PEDAL + IPFL)",
    "oracle": "Oracle: supervised on target labels*",
}


def histogram_row(cfg: C.Config) -> dict[str, float]:
    """Best of the two colour-histogram descriptors on the target (by mAP)."""
    target = train.target_dataset(cfg)
    best: dict[str, float] | None = None
    for mode in ("whole", "stripes"):
        qf = baselines.histogram_features([r.path for r in target.query], mode)
        gf = baselines.histogram_features([r.path for r in target.gallery], mode)
        res = evaluation.evaluate_features(
            qf,
            gf,
            [r.pid for r in target.query],
            [r.pid for r in target.gallery],
            [r.camid for r in target.query],
            [r.camid for r in target.gallery],
        ).as_dict()
        res = {**res, "descriptor": mode}
        if best is None or res["mAP"] > best["mAP"]:
            best = res
    assert best is not None
    return best


def adabn_model(pretrained: torch.nn.Module, cfg: C.Config, device, progress: bool = False):
    """The direct-transfer model with AdaBN applied on the target's training images."""
    rt = train.make_runtime(cfg, device)
    model = train.adaptation_model(pretrained, cfg).to(rt.device)
    target = train.target_dataset(cfg)
    tf = D.transforms.test_transform(cfg.data.height, cfg.data.width)
    loader = torch.utils.data.DataLoader(
        D.ImageDataset(train.target_train(cfg, target), tf),
        batch_size=2 * cfg.adapt.batch_size,
        shuffle=False,
    )
    return train.adapt_batchnorm(model, loader, rt.device, progress=progress)


def evaluate_rows(
    cfg: C.Config,
    rows: list[str] | None = None,
    device=None,
    out: str | Path | None = None,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Train (or load) and evaluate the rows of the table for one seed (``cfg.seed``)."""
    rows = rows or [r for r in ROWS if r != "histogram"]
    rt = train.make_runtime(cfg, device)
    target = train.target_dataset(cfg)
    result: dict[str, dict[str, float]] = {}
    pre, _ = train.train_or_load(cfg, "pretrain", device=rt.device, out=out, progress=progress)
    if "direct_transfer" in rows:
        m = train.adaptation_model(pre, cfg).to(rt.device)
        result["direct_transfer"] = train.evaluate_model(m, target, cfg, rt, progress)
    if "adabn" in rows:
        m = adabn_model(pre, cfg, rt.device, progress)
        result["adabn"] = train.evaluate_model(m, target, cfg, rt, progress)
    variants = {
        "paul": cfg,
        "pedal_only": C.override(cfg, "adapt.ipfl_weight=0"),
        "ipfl_only": C.override(cfg, "adapt.pedal_weight=0"),
    }
    for row, vcfg in variants.items():
        if row not in rows:
            continue
        tag = row  # own files: the notebooks' adapt.pt evaluates every few epochs
        vcfg = dataclasses.replace(vcfg, adapt=dataclasses.replace(vcfg.adapt, eval_every=0))
        m, _ = train.train_or_load(
            vcfg,
            "adapt",
            tag=tag,
            device=rt.device,
            out=out,
            progress=progress,
            pretrained=copy.deepcopy(pre),
        )
        result[row] = train.evaluate_model(m, target, cfg, rt, progress)
    if "oracle" in rows:
        o, _ = train.train_or_load(cfg, "oracle", device=rt.device, out=out, progress=progress)
        m = train.adaptation_model(o, cfg).to(rt.device)
        result["oracle"] = train.evaluate_model(m, target, cfg, rt, progress)
    return result


def _mean_std(per_seed: dict[str, dict[str, dict[str, float]]], row: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in METRICS:
        vals = [per_seed[s][row][metric] for s in per_seed if row in per_seed[s]]
        if not vals:
            continue
        out[metric] = statistics.fmean(vals)
        out[f"{metric}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def reproduce(
    preset: str | C.Config,
    seeds: list[int] = (0, 1, 2),
    device=None,
    out: str | Path | None = None,
    progress: bool = False,
    command: str = "",
) -> dict[str, Any]:
    """All rows for every seed of a preset; returns the ``docs/results.json`` entry."""
    cfg = C.get_preset(preset) if isinstance(preset, str) else preset
    t0 = time.perf_counter()
    per_seed: dict[str, dict[str, dict[str, float]]] = {}
    for seed in seeds:
        scfg = dataclasses.replace(cfg, seed=seed)
        per_seed[str(seed)] = evaluate_rows(scfg, device=device, out=out, progress=progress)
        print(
            f"seed {seed}: "
            + ", ".join(f"{k} {v['mAP']:.3f}" for k, v in per_seed[str(seed)].items())
        )
    entry: dict[str, Any] = {"histogram": histogram_row(cfg)}
    for row in ROWS[1:]:
        entry[row] = _mean_std(per_seed, row)
    entry.update(
        {
            "seeds": list(seeds),
            "seed": list(seeds)[0],
            "per_seed": per_seed,
            "seconds": round(time.perf_counter() - t0, 1),
            "command": command or f"python -m paulkit reproduce --preset {cfg.name}",
            "machine": _machine(device),
            "config_hash": C.config_hash(cfg),
        }
    )
    return entry


def render_results(docs: str | Path = "docs") -> Path:
    """Regenerate ``docs/results.md`` from ``docs/results.json`` (no training)."""
    docs = Path(docs)
    results = json.loads((docs / "results.json").read_text())
    utils.atomic_write_text(results_markdown(results), docs / "results.md")
    return docs / "results.md"


def _machine(device) -> str:
    dev = utils.select_device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} ({platform.machine()})"
    return f"{dev.type}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"


PAPER_ROWS = [
    ("Market-1501 (paper, MSMT17 source)", 68.5, 82.4, 87.4, 40.1),
    ("DukeMTMC-reID (paper, MSMT17 source)", 72.0, 82.7, 86.0, 53.2),
]


def attribution_verdict(entry: dict[str, Any]) -> str:
    """One sentence: does this entry meet issue 10's aim, measured as it is?

    The aim: PAUL − AdaBN ≥ +5 mAP (mean over seeds), direct transfer ≥ 15 mAP and the
    oracle above PAUL. Every part is stated with its number, met or not.
    """
    paul, adabn = entry["paul"]["mAP"], entry["adabn"]["mAP"]
    dt = entry["direct_transfer"]["mAP"]
    oracle = entry.get("oracle", {}).get("mAP")
    parts = [
        f"PAUL − AdaBN ≥ +5 mAP: {'met' if paul - adabn >= 0.05 else 'not met'}",
        f"direct transfer ≥ 15 mAP: {'met' if dt >= 0.15 else 'not met'}",
    ]
    if oracle is not None:
        parts.append(f"oracle above PAUL: {'met' if oracle > paul else 'not met'}")
    return "Aims of the attribution issue: " + "; ".join(parts) + "."


def results_markdown(results: dict[str, Any]) -> str:
    """``docs/results.md`` from the ``docs/results.json`` contents."""
    lines = [
        "# Results",
        "",
        "Measured here, with the commands below; generated by `paulkit reproduce` from",
        "`docs/results.json` (do not edit by hand). Metrics in percent; mean ± standard",
        "deviation over model seeds (the data are fixed). mAP is the step AP (torchreid /",
        "fast-reid); mAP (trap.) is the trapezoidal AP of the original Market-1501 evaluator,",
        "which the paper's numbers used.",
        "",
    ]
    known = list(C.PRESETS)
    order = sorted(results, key=lambda p: (known.index(p) if p in known else len(known), p))
    for preset in order:  # the presets' own order, whatever order the JSON keeps
        e = results[preset]
        lines += [
            f"## `{preset}` (synthetic target)",
            "",
            f"Command: `{e['command']}`; seeds {e['seeds']}; machine: {e['machine']}; "
            f"total time {e['seconds'] / 60:.1f} min.",
            "",
            "| method | rank-1 | rank-5 | rank-10 | mAP | mAP (trap.) | mINP |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in ROWS:
            r = e.get(row)
            if not r:
                continue
            cells = []
            for m in METRICS:
                std = r.get(f"{m}_std")
                cells.append(
                    f"{100 * r[m]:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")
                )
            lines.append(f"| {LABELS[row]} | " + " | ".join(cells) + " |")
        paul, adabn, dt = e["paul"]["mAP"], e["adabn"]["mAP"], e["direct_transfer"]["mAP"]
        lines += [
            "",
            f"**PAUL − direct transfer: {100 * (paul - dt):+.1f} mAP; "
            f"PAUL − AdaBN: {100 * (paul - adabn):+.1f} mAP** (means over seeds). "
            + attribution_verdict(e),
            "",
            "Ablations against AdaBN: "
            + "; ".join(
                f"{LABELS[r].split(', ')[-1]} {100 * (e[r]['mAP'] - adabn):+.1f} mAP"
                for r in ("pedal_only", "ipfl_only")
                if r in e and e[r]
            )
            + ". How the synthetic target was chosen, and what else was tried: "
            '`docs/data.md` ("Tuning the gap").',
            "",
            "\\* The oracle row is the only one trained with target labels (the target's "
            "training split); every other row sees no target label. The histogram row is "
            f"the `{e['histogram'].get('descriptor', '?')}` descriptor (best of two).",
            "",
            "Per seed (mAP):",
            "",
            "| seed | " + " | ".join(r for r in ROWS[1:]) + " |",
            "|---|" + "---|" * (len(ROWS) - 1),
        ]
        for s, rows in e["per_seed"].items():
            lines.append(
                f"| {s} | "
                + " | ".join(f"{100 * rows[r]['mAP']:.1f}" if r in rows else "—" for r in ROWS[1:])
                + " |"
            )
        lines.append("")
    lines += [
        "## The paper's numbers (not measured here)",
        "",
        "Reported by Yang et al. (CVPR 2019) with ResNet-50 at 384x128, pretrained on MSMT17;",
        "mAP with the trapezoidal AP.",
        "",
        "| target | rank-1 | rank-5 | rank-10 | mAP |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {a} | {b} | {c} | {d} |" for n, a, b, c, d in PAPER_ROWS]
    return "\n".join(lines) + "\n"


def write_results(entry: dict[str, Any], preset: str, docs: str | Path = "docs") -> None:
    """Merge ``entry`` into ``docs/results.json`` under ``preset``; regenerate results.md."""
    docs = Path(docs)
    path = docs / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[preset] = entry
    utils.atomic_write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", path)
    utils.atomic_write_text(results_markdown(results), docs / "results.md")
