"""The results table: every baseline, ablation and PAUL over several model seeds.

``paulkit reproduce --preset tutorial`` calls :func:`reproduce`, which for each held-out
synthetic draw (data seeds 1, 2, 3: people *and* cameras of their own, never read by a tuning
tool; data seed 0 is the tuning draw) and each model seed runs (or loads) pretraining, and
then evaluates on that draw's query/gallery:

- ``histogram``: colour histograms, no training (the best of whole-image and striped);
- ``direct_transfer``: the source model as it is;
- ``adabn``: the source model with BatchNorm statistics re-estimated on the target's
  training images (no labels, no training);
- ``pedal_only``, ``ipfl_only``, ``paul``: unsupervised adaptation with one or both losses;
- ``paul_eval_init``: PAUL with the memory initialisation pass in eval mode (a deviation
  from the official train-mode pass, ``adapt.memory_init="eval"``);
- ``paul_adabn``: PAUL's model with AdaBN applied after adaptation (not in the paper);
- ``cluster_contrast``: Cluster Contrast (Dai et al., ACCV 2022; :mod:`paulkit.cluster`),
  where unsupervised re-id went after PAUL, from the same pretrained model and evaluated the
  same way (no target label);
- ``oracle``: the same network trained with the pretraining recipe on the target's *training
  labels* - the only row that sees target labels, as a reference for what is learnable.

Taught in: notebooks/07_evaluation.ipynb.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from paulkit import baselines, cluster, runtime, train, utils
from paulkit import config as C

__all__ = [
    "render_results_figure",
    "ROWS",
    "METRICS",
    "evaluate_rows",
    "reproduce",
    "write_results",
    "render_results",
    "results_markdown",
    "attribution_verdict",
    "paired_gain",
    "run_key",
    "TUNING_DRAW",
    "HELD_OUT_DRAWS",
]

ROWS = [
    "histogram",
    "direct_transfer",
    "adabn",
    "pedal_only",
    "ipfl_only",
    "paul",
    "paul_eval_init",
    "paul_adabn",
    "cluster_contrast",
    "oracle",
]
TUNING_DRAW = 0  # the synthetic data seed that tuning tools read (bench/tune_*.py)
HELD_OUT_DRAWS = (1, 2, 3)  # the data seeds the results table reports on
METRICS = ["rank1", "rank5", "rank10", "mAP", "mAP_trapezoid", "mINP"]
LABELS = {
    "histogram": "Colour histogram (no training)",
    "direct_transfer": "Direct transfer (source model)",
    "adabn": "AdaBN (target BN statistics only)",
    "pedal_only": "PAUL, PEDAL only",
    "ipfl_only": "PAUL, IPFL only",
    "paul": "PAUL (PEDAL + IPFL)",
    "paul_eval_init": "PAUL, memory init in eval mode",
    "paul_adabn": "PAUL + AdaBN (not in the paper)",
    "cluster_contrast": "Cluster Contrast (Dai et al. 2022)",
    "oracle": "Oracle: supervised on target labels*",
}


def histogram_row(cfg: C.Config, target=None) -> dict[str, Any]:
    """The strongest colour-histogram descriptor on the target (best of the variants by mAP,
    camera means from the target's unlabelled training images; :mod:`paulkit.baselines`).
    ``target``: the data set when already read."""
    target = target if target is not None else train.target_dataset(cfg)
    return baselines.best_histogram(
        target.query, target.gallery, train=train.target_train(cfg, target)
    )


def adabn_model(
    pretrained: torch.nn.Module, cfg: C.Config, device, progress: bool = False, target=None
):
    """The direct-transfer model with AdaBN applied on the target's training images
    (``target``: the data set when already read)."""
    rt = runtime.make_runtime(cfg, device)  # ``device`` may be the caller's Runtime
    model = train.adaptation_model(pretrained, cfg).to(rt.device)
    loader = train.clean_target_loader(cfg, rt, target)
    return train.adapt_batchnorm(model, loader, rt.device, progress)


def evaluate_rows(
    cfg: C.Config,
    rows: list[str] | None = None,
    device=None,
    out: str | Path | None = None,
    progress: bool = False,
    tag: str = "",
) -> dict[str, dict[str, float]]:
    """Train (or load) and evaluate the rows of the table for one run: the data draw
    ``cfg.data.synth_seed`` and the model seed ``cfg.seed``. ``tag`` names the adaptation
    checkpoints of a variant (``adapt-paul-<tag>.pt``), so that several adaptation settings
    share one pretraining without refusing each other's checkpoints."""
    rows = rows or list(ROWS)
    rt = runtime.make_runtime(cfg, device)
    target = train.target_dataset(cfg)
    result: dict[str, dict[str, float]] = {}
    pre, _ = train.train_or_load(cfg, "pretrain", device=rt, out=out, progress=progress)
    if "direct_transfer" in rows:
        m = train.adaptation_model(pre, cfg).to(rt.device)
        result["direct_transfer"] = train.evaluate_model(m, target, cfg, rt, progress)
    if "adabn" in rows:
        m = adabn_model(pre, cfg, rt, progress, target)
        result["adabn"] = train.evaluate_model(m, target, cfg, rt, progress)
    variants = {
        "paul": cfg,
        "pedal_only": C.override(cfg, "adapt.ipfl_weight=0"),
        "ipfl_only": C.override(cfg, "adapt.pedal_weight=0"),
        "paul_eval_init": C.override(cfg, "adapt.memory_init=eval"),
    }
    for row, vcfg in variants.items():
        if row not in rows and not (row == "paul" and "paul_adabn" in rows):
            continue
        row_tag = f"{row}-{tag}" if tag else row  # own files, beside the notebooks' adapt.pt
        vcfg = dataclasses.replace(vcfg, adapt=dataclasses.replace(vcfg.adapt, eval_every=0))
        m, _ = train.train_or_load(
            vcfg,
            "adapt",
            tag=row_tag,
            device=rt,
            out=out,
            progress=progress,
            pretrained=copy.deepcopy(pre),
        )
        if row in rows:
            result[row] = train.evaluate_model(m, target, cfg, rt, progress)
        if row == "paul" and "paul_adabn" in rows:  # the same model, BatchNorm re-estimated
            loader = train.clean_target_loader(cfg, rt, target)
            m = train.adapt_batchnorm(m, loader, rt.device, progress)
            result["paul_adabn"] = train.evaluate_model(m, target, cfg, rt, progress)
    if "cluster_contrast" in rows:
        ccfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, eval_every=0))
        m, _ = cluster.train_or_load(
            ccfg,
            tag=f"cluster_contrast-{tag}" if tag else "cluster_contrast",
            device=rt,
            out=out,
            progress=progress,
            pretrained=copy.deepcopy(pre),
        )
        result["cluster_contrast"] = train.evaluate_model(m, target, cfg, rt, progress)
    if "histogram" in rows:
        result["histogram"] = histogram_row(cfg, target)
    if "oracle" in rows:
        o, _ = train.train_or_load(cfg, "oracle", device=rt, out=out, progress=progress)
        m = train.adaptation_model(o, cfg).to(rt.device)
        result["oracle"] = train.evaluate_model(m, target, cfg, rt, progress)
    return result


def _mean_std(runs: dict[str, dict[str, dict[str, float]]], row: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in METRICS:
        vals = [runs[k][row][metric] for k in runs if row in runs[k]]
        if not vals:
            continue
        out[metric] = statistics.fmean(vals)
        out[f"{metric}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def run_key(data_seed: int, seed: int) -> str:
    """The key of one run in ``per_seed``: ``"data1-seed0"``."""
    return f"data{data_seed}-seed{seed}"


def reproduce(
    preset: str | C.Config,
    seeds: list[int] = (0, 1),
    device=None,
    out: str | Path | None = None,
    progress: bool = False,
    command: str = "",
    data_seeds: list[int] = HELD_OUT_DRAWS,
) -> dict[str, Any]:
    """Every row for every held-out data draw x model seed; the ``docs/results.json`` entry.

    Means and standard deviations are over all runs; ``per_data_seed`` holds each draw's
    mean over model seeds and ``data_spread`` the standard deviation of those means (how
    much the data draw alone moves a row).
    """
    cfg = C.get_preset(preset) if isinstance(preset, str) else preset
    if TUNING_DRAW in data_seeds and cfg.data.target == "synth":
        print(f"note: data seed {TUNING_DRAW} is the tuning draw, not a held-out one")
    t0 = time.perf_counter()
    rt = runtime.make_runtime(cfg, device)  # once for every run
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for ds in data_seeds:
        for seed in seeds:
            rcfg = C.override(cfg, f"data.synth_seed={ds}", f"seed={seed}")
            rows = list(ROWS) if seed == seeds[0] else [r for r in ROWS if r != "histogram"]
            res = evaluate_rows(rcfg, rows, device=rt, out=out, progress=progress)
            if seed != seeds[0]:  # the histogram needs no model: one per data draw
                res["histogram"] = runs[run_key(ds, seeds[0])]["histogram"]
            runs[run_key(ds, seed)] = res
            print(
                f"data seed {ds}, seed {seed}: "
                + ", ".join(f"{k} {100 * v['mAP']:.1f}" for k, v in res.items()),
                flush=True,
            )
    entry: dict[str, Any] = {row: _mean_std(runs, row) for row in ROWS}
    best = [runs[run_key(ds, seeds[0])]["histogram"]["descriptor"] for ds in data_seeds]
    entry["histogram"]["descriptor"] = max(set(best), key=best.count)
    per_data: dict[str, dict[str, float]] = {}
    for ds in data_seeds:
        keys = [run_key(ds, s) for s in seeds]
        per_data[str(ds)] = {
            row: statistics.fmean(runs[k][row]["mAP"] for k in keys) for row in ROWS
        }
    spread = {
        row: statistics.stdev(per_data[d][row] for d in per_data) if len(per_data) > 1 else 0.0
        for row in ROWS
    }
    entry.update(
        {
            "seeds": list(seeds),
            "data_seeds": list(data_seeds),
            "seed": list(seeds)[0],
            "per_seed": runs,
            "per_data_seed": per_data,
            "data_spread": spread,
            "seconds": round(time.perf_counter() - t0, 1),
            "command": command or f"python -m paulkit reproduce --preset {cfg.name}",
            "machine": _machine(rt.device),
            "config_hash": C.config_hash(cfg),
        }
    )
    return entry


def add_rows(
    entry: dict[str, Any],
    preset: str | C.Config,
    rows: list[str],
    seeds: list[int] | None = None,
    data_seeds: list[int] | None = None,
    device=None,
    out: str | Path | None = None,
    progress: bool = False,
    command: str = "",
) -> dict[str, Any]:
    """Measure ``rows`` on the runs of an existing ``docs/results.json`` entry (or those of
    them with a model seed in ``seeds`` and a data seed in ``data_seeds``) and merge them in:
    a new method gets a row without re-running the table. The other rows are left as they
    are; the added row's mean, per-draw means and spread are over the runs it was measured
    on, and ``entry["added_rows"]`` records its command, runs and time.

    Raises:
        ValueError: an unknown row, or an entry made with other settings (config hash).
    """
    cfg = C.get_preset(preset) if isinstance(preset, str) else preset
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"--rows {unknown}: unknown row(s); choose from {', '.join(ROWS)}")
    if entry.get("config_hash") != C.config_hash(cfg):
        raise ValueError(
            f"docs/results.json's {cfg.name} entry was made with config {entry.get('config_hash')}, "
            f"this preset is {C.config_hash(cfg)}: re-run the whole table (paulkit reproduce) "
            "instead of adding rows to it"
        )
    t0 = time.perf_counter()
    rt = runtime.make_runtime(cfg, device)
    runs = entry["per_seed"]
    keys = []
    for key in runs:
        ds, seed = (int(part[4:]) for part in key.split("-"))  # "data1-seed0"
        if (seeds is None or seed in seeds) and (data_seeds is None or ds in data_seeds):
            keys.append(key)
            rcfg = C.override(cfg, f"data.synth_seed={ds}", f"seed={seed}")
            runs[key].update(evaluate_rows(rcfg, rows, device=rt, out=out, progress=progress))
            print(
                f"data seed {ds}, seed {seed}: "
                + ", ".join(f"{r} {100 * runs[key][r]['mAP']:.1f}" for r in rows),
                flush=True,
            )
    if not keys:
        raise ValueError("no run of the entry matches --seeds/--data-seeds")
    seconds = round(time.perf_counter() - t0, 1)
    for row in rows:
        entry[row] = _mean_std(runs, row)
        for ds, vals in entry["per_data_seed"].items():
            got = [
                runs[k][row]["mAP"] for k in runs if k.startswith(f"data{ds}-") and row in runs[k]
            ]
            if got:
                vals[row] = statistics.fmean(got)
        means = [v[row] for v in entry["per_data_seed"].values() if row in v]
        entry["data_spread"][row] = statistics.stdev(means) if len(means) > 1 else 0.0
        entry.setdefault("added_rows", {})[row] = {
            "command": command or f"python -m paulkit reproduce --preset {cfg.name} --rows {row}",
            "runs": keys,
            "seconds": seconds,
            "machine": _machine(rt.device),
        }
    return entry


def render_results(docs: str | Path = "docs") -> Path:
    """Regenerate ``docs/results.md`` from ``docs/results.json`` (no training)."""
    docs = Path(docs)
    results = json.loads((docs / "results.json").read_text())
    utils.atomic_write_text(results_markdown(results), docs / "results.md")
    return docs / "results.md"


def render_results_figure(docs: str | Path = "docs", preset: str = "tutorial") -> Path:
    """Draw ``docs/results.png`` (the README's results figure) from ``docs/results.json`` with
    :func:`paulkit.viz.plot_results`, Cluster Contrast included when measured (no training)::

        python -c "import paulkit; paulkit.reproduce.render_results_figure()"
    """
    from paulkit import viz

    docs = Path(docs)
    results = json.loads((docs / "results.json").read_text())
    if preset not in results:
        raise ValueError(
            f"docs/results.json has no preset {preset!r} (has {sorted(results)}); run "
            f"`python -m paulkit reproduce --preset {preset}`"
        )
    fig = viz.plot_results(results[preset], cluster=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return utils.atomic_write_bytes(buf.getvalue(), docs / "results.png")


def _machine(device) -> str:
    dev = runtime.select_device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} ({platform.machine()})"
    return f"{dev.type}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"


PAPER_ROWS = [
    ("Market-1501 (paper, MSMT17 source)", 68.5, 82.4, 87.4, 40.1),
    ("DukeMTMC-reID (paper, MSMT17 source)", 72.0, 82.7, 86.0, 53.2),
]


def paired_gain(entry: dict[str, Any], row: str = "paul", base: str = "adabn") -> tuple:
    """``row`` − ``base`` mAP per run (same data draw, same model seed): (mean, std, wins,
    runs), as fractions."""
    diffs = [
        r[row]["mAP"] - r[base]["mAP"] for r in entry["per_seed"].values() if row in r and base in r
    ]
    if not diffs:
        return 0.0, 0.0, 0, 0
    std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return statistics.fmean(diffs), std, sum(d > 0 for d in diffs), len(diffs)


def attribution_verdict(entry: dict[str, Any]) -> str:
    """One sentence: does PAUL beat AdaBN on the held-out draws, and by how much?"""
    mean, std, wins, n = paired_gain(entry)
    dmean, dstd, dwins, _ = paired_gain(entry, "paul", "direct_transfer")
    held = entry.get("data_seeds")
    where = f"on held-out data draws {held}" if held else "on this data"
    if wins == n and mean > 0:
        verdict = "PAUL beats AdaBN"
    elif mean > 0:
        verdict = "PAUL beats AdaBN on average but not in every run"
    else:
        verdict = "PAUL does not beat AdaBN"
    return (
        f"{verdict} {where}: {100 * mean:+.1f} ± {100 * std:.1f} mAP "
        f"(paired by run, better in {wins} of {n} runs); PAUL − direct transfer "
        f"{100 * dmean:+.1f} ± {100 * dstd:.1f} (better in {dwins} of {n})."
    )


def _cell(r: dict[str, float], m: str) -> str:
    std = r.get(f"{m}_std")
    return f"{100 * r[m]:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def results_markdown(results: dict[str, Any]) -> str:
    """``docs/results.md`` from the ``docs/results.json`` contents."""
    lines = [
        "# Results",
        "",
        "Measured here, with the commands below; generated by `paulkit reproduce` from",
        "`docs/results.json` (do not edit by hand). Metrics in percent; mean ± standard",
        "deviation over every run (each held-out synthetic data draw x each model seed).",
        "mAP is the step AP (torchreid / fast-reid); mAP (trap.) is the trapezoidal AP of the",
        "original Market-1501 evaluator, which the paper's numbers used.",
        "",
        "How the numbers are made: the synthetic target's gap and the CPU presets' settings",
        f"were tuned on data seed {TUNING_DRAW} only (the *tuning draw*: `bench/tune_gap.py`,",
        "`bench/tune_margin.py`). The table reports on held-out draws, data seeds no tuning",
        "tool read, each with people *and* cameras of its own.",
        "",
    ]
    known = list(C.PRESETS)
    order = sorted(results, key=lambda p: (known.index(p) if p in known else len(known), p))
    for preset in order:  # the presets' own order, whatever order the JSON keeps
        e = results[preset]
        draws = e.get("data_seeds", ["fixed"])
        lines += [
            f"## `{preset}` (synthetic target)",
            "",
            f"Command: `{e['command']}`; data draws {draws} x model seeds {e['seeds']} "
            f"({len(e['per_seed'])} runs); machine: {e['machine']}; "
            f"total time {e['seconds'] / 60:.1f} min.",
            "",
            "| method | rank-1 | rank-5 | rank-10 | mAP | mAP (trap.) | mINP |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in ROWS:
            r = e.get(row)
            if r:
                cells = " | ".join(_cell(r, m) for m in METRICS)
                lines.append(f"| {LABELS[row]} | {cells} |")
        adabn = e["adabn"]["mAP"]
        ablations = [
            f"{LABELS[r].split(', ')[-1]} {100 * (e[r]['mAP'] - adabn):+.1f}"
            for r in (
                "pedal_only",
                "ipfl_only",
                "paul",
                "paul_eval_init",
                "paul_adabn",
                "cluster_contrast",
            )
            if e.get(r)
        ]
        added = [
            f"{LABELS[r]} was added later on {len(a['runs'])} of the {len(e['per_seed'])} runs "
            f"with `{a['command']}` ({a['seconds'] / 60:.1f} min, {a['machine']}); its mean "
            "and spread are over those runs."
            for r, a in e.get("added_rows", {}).items()
        ]
        lines += [
            "",
            "**" + attribution_verdict(e) + "**",
            "",
            "Each row against AdaBN (mAP, means): " + "; ".join(ablations) + ".",
            "",
            *[line for a in added for line in (a, "")],
            "\\* The oracle row is the only one trained with target labels (the target's "
            "training split); every other row sees no target label. The histogram row is the "
            f"`{e['histogram'].get('descriptor', '?')}` descriptor, the best by mAP of "
            "`paulkit.baselines.VARIANTS` on most draws (no training; camera means from the "
            "unlabelled training images).",
            "",
        ]
        if "per_data_seed" in e:
            rows = [r for r in ROWS if any(r in v for v in e["per_data_seed"].values())]
            lines += [
                "Per data draw (mAP, mean over model seeds), and the spread between draws "
                "(standard deviation of the draw means):",
                "",
                "| data seed | " + " | ".join(rows) + " |",
                "|---|" + "---|" * len(rows),
            ]
            for d, vals in e["per_data_seed"].items():
                cells = (f"{100 * vals[r]:.1f}" if r in vals else "—" for r in rows)
                lines.append(f"| {d} | " + " | ".join(cells) + " |")
            spread = e["data_spread"]
            lines.append("| spread | " + " | ".join(f"{100 * spread[r]:.1f}" for r in rows) + " |")
            lines.append("")
        lines += [
            "Per run (mAP):",
            "",
            "| run | " + " | ".join(r for r in ROWS) + " |",
            "|---|" + "---|" * len(ROWS),
        ]
        for s, rows_ in e["per_seed"].items():
            lines.append(
                f"| {s} | "
                + " | ".join(f"{100 * rows_[r]['mAP']:.1f}" if r in rows_ else "—" for r in ROWS)
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
