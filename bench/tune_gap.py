"""The gap search on the tuning draw (data seed 0): direct transfer, AdaBN, PAUL per knob change.

Run: ``.venv/bin/python bench/tune_gap.py v2-margin2 v2 v3`` (names from
:data:`EXPERIMENTS`; ``--list`` prints them, ``--oracle`` adds the supervised-on-target row,
``--preset synth_small`` the larger data). Each experiment regenerates the target with its
knobs into a temporary data root (or ``--synth DIR`` to keep it between runs), reuses one
source pretraining per preset and seed (``--out``, default a temporary folder), and prints
target mAP / rank-1 for:

- direct transfer (the source model as it is),
- AdaBN (BatchNorm statistics re-estimated on the target's training images, no labels),
- PAUL after each evaluated epoch, and PAUL followed by AdaBN,
- with ``--oracle``: the same network trained on the target's training labels.

One experiment takes about a minute on an idle 2-core CPU once the pretraining exists
(``tutorial``; pretraining adds about two minutes). docs/data.md ("Tuning the gap") has the
measured table and the reasoning. Adaptation never reads a target label; only evaluation and
the oracle do.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import tempfile
import time

import torch

from paulkit import config as C
from paulkit import reproduce, runtime, train
from paulkit.data import synth

# The target of generator version 2 (the first session's default): darker, more colourful
# and busier scenes, more blur, noise and compression than the source, casts of 0.14.
V2_TARGET = {
    "cast_strength": 0.14,
    "brightness": 0.98,
    "bg_brightness": 0.45,
    "bg_saturation": 0.28,
    "blur": 0.6,
    "noise": 0.025,
    "jpeg_quality": (70, 88),
}
# v2's global image statistics moved towards the source's (scenes, blur, noise, JPEG,
# brightness): what AdaBN can absorb without learning anything.
NEUTRAL = {
    "brightness": 1.02,
    "bg_brightness": 0.6,
    "bg_saturation": 0.17,
    "blur": 0.3,
    "noise": 0.015,
    "jpeg_quality": (82, 94),
}
UNIFORM_SOURCE = {"cast_strength": 0.0, "saturation_spread": 0.0, "brightness_spread": 0.03}

# name: (source knob changes, target knob changes, --set overrides), knobs relative to the
# current defaults (synth.SOURCE / synth.TARGET); "v2" rows rebuild the old target.
EXPERIMENTS: dict[str, tuple[dict, dict, list[str]]] = {
    "v2-margin2": ({}, V2_TARGET, ["adapt.ipfl_margin=2.0"]),
    "v2-pedal-only-margin2": ({}, V2_TARGET, ["adapt.ipfl_margin=2.0", "adapt.ipfl_weight=0"]),
    "v2-ipfl-only-margin2": ({}, V2_TARGET, ["adapt.ipfl_margin=2.0", "adapt.pedal_weight=0"]),
    "v2-lr1e-4-margin2": ({}, V2_TARGET, ["adapt.lr=1e-4", "adapt.ipfl_margin=2.0"]),
    "v2-lr3e-3-margin2": ({}, V2_TARGET, ["adapt.lr=3e-3", "adapt.ipfl_margin=2.0"]),
    "v2-margin1": ({}, V2_TARGET, ["adapt.ipfl_margin=1.0"]),
    "v2": ({}, V2_TARGET, []),
    "v2-8-epochs": ({}, V2_TARGET, ["adapt.epochs=8", "adapt.lr_step=6"]),
    "v2-uniform-source": (UNIFORM_SOURCE, V2_TARGET, []),
    "v2-box-shift0.14": ({}, V2_TARGET | {"box_shift": 0.14}, []),
    "v2-cast0.22": ({}, V2_TARGET | {"cast_strength": 0.22}, []),
    "v2-cast0.22-8-epochs": (
        {},
        V2_TARGET | {"cast_strength": 0.22},
        ["adapt.epochs=8", "adapt.lr_step=6"],
    ),
    "v2-cast0.22-sat0.3": ({}, V2_TARGET | {"cast_strength": 0.22, "saturation_spread": 0.3}, []),
    "v2-cast0.3": ({}, V2_TARGET | {"cast_strength": 0.3}, []),
    "neutral-cast0.3-margin2": ({}, NEUTRAL | {"cast_strength": 0.3}, ["adapt.ipfl_margin=2.0"]),
    "v3": ({}, {}, []),
    "v3-sat0.3": ({}, {"saturation_spread": 0.3}, []),
    "v3-margin0.3": ({}, {}, ["adapt.ipfl_margin=0.3"]),
    "neutral-cast0.4": ({}, NEUTRAL | {"cast_strength": 0.4}, []),
}


def pct(m: dict) -> str:
    return f"{100 * m['mAP']:.1f} / {100 * m['rank1']:.1f}"


def run(name: str, preset: str, seed: int, out: str, oracle: bool, device, threads: int = 0) -> str:
    source_knobs, target_knobs, sets = EXPERIMENTS[name]
    saved = dict(synth.DOMAINS)
    synth.DOMAINS["source"] = dataclasses.replace(synth.SOURCE, **source_knobs)
    synth.DOMAINS["target"] = dataclasses.replace(synth.TARGET, **target_knobs)
    try:
        cfg = C.override(C.get_preset(preset), "data.synth_seed=0", f"seed={seed}", *sets)
        if threads:  # --threads: the run's CPU threads (runtime.make_runtime sets them)
            cfg = C.override(cfg, f"cpu_threads={threads}")
        cfg = dataclasses.replace(cfg, adapt=dataclasses.replace(cfg.adapt, eval_every=2))
        t0 = time.perf_counter()
        rt = runtime.make_runtime(cfg, device)
        # one pretraining per source domain; the oracle reads this experiment's target
        src = f"source-{synth.DOMAINS['source'].digest()[:8]}" if source_knobs else ""
        pre, _ = train.train_or_load(
            cfg, "pretrain", src, device=rt.device, out=out, progress=False
        )
        target = train.target_dataset(cfg)
        adabn = train.evaluate_model(
            reproduce.adabn_model(pre, cfg, rt.device, target=target), target, cfg, rt, False
        )
        model, hist = train.adapt(cfg, copy.deepcopy(pre), rt.device, progress=False)
        loader = train.clean_target_loader(cfg, rt, target)  # "PAUL + AdaBN"
        train.adapt_batchnorm(model, loader, rt.device, progress=False)
        after = train.evaluate_model(model, target, cfg, rt, False)
        cells = [pct(hist["eval"][0]), pct(adabn), ", ".join(pct(e) for e in hist["eval"][1:])]
        cells.append(pct(after))
        if oracle:
            o, _ = train.train_or_load(
                cfg, "oracle", name, device=rt.device, out=out, progress=False
            )
            m = train.adaptation_model(o, cfg).to(rt.device)
            cells.append(pct(train.evaluate_model(m, target, cfg, rt, False)))
        paul_minus_adabn = 100 * (hist["eval"][-1]["mAP"] - adabn["mAP"])
        cells += [f"{paul_minus_adabn:+.1f}", f"{time.perf_counter() - t0:.0f} s"]
        return f"| {name} | " + " | ".join(cells) + " |"
    finally:
        synth.DOMAINS.clear()
        synth.DOMAINS.update(saved)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="experiments (see --list)")
    ap.add_argument("--list", action="store_true", help="print the experiments and exit")
    ap.add_argument("--preset", default="tutorial", choices=sorted(C.PRESETS))
    ap.add_argument("--seed", type=int, default=0, help="model seed (data seed fixed)")
    ap.add_argument("--oracle", action="store_true", help="add the supervised-on-target row")
    ap.add_argument("--synth", default=None, help="data root (default: a temporary folder)")
    ap.add_argument("--out", default=None, help="checkpoints (default: a temporary folder)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.list or not args.names:
        for name, (s, t, sets) in EXPERIMENTS.items():
            print(f"{name:28s} source {s or '-'}  target {t or '-'}  {' '.join(sets)}")
        return
    unknown = [n for n in args.names if n not in EXPERIMENTS]
    if unknown:
        raise SystemExit(f"unknown experiment(s) {unknown}; --list shows the names")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PAULKIT_SYNTH"] = args.synth or os.path.join(tmp, "synth")
        out = args.out or os.path.join(tmp, "out")
        print(f"preset {args.preset}, model seed {args.seed}; target mAP / rank-1 (%)")
        head = ["experiment", "direct", "AdaBN", "PAUL by epoch", "PAUL + AdaBN"]
        head += ["oracle"] if args.oracle else []
        print("| " + " | ".join(head + ["PAUL - AdaBN", "time"]) + " |")
        print("|" + "---|" * (len(head) + 2))
        for name in args.names:
            line = run(name, args.preset, args.seed, out, args.oracle, args.device, args.threads)
            print(line, flush=True)


if __name__ == "__main__":
    main()
