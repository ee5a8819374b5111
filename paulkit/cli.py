"""Command line: ``python -m paulkit`` (also installed as ``paulkit``).

Subcommands: ``synth`` (make the embedded data; ``--size``), ``pretrain``, ``adapt``,
``cluster`` (Cluster Contrast from the same pretrained model), ``evaluate``, ``reproduce``.
Each of the last five takes ``--preset`` (a whole run's config)
plus ``--set key=value`` overrides; bad arguments and
missing data end with one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from paulkit import config, paths, runtime, utils
from paulkit.utils import CheckpointError, RunLockError

__all__ = ["main", "build_parser"]


class CliError(Exception):
    """An error the user can fix; printed as one line."""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        default=None,
        help="named preset (default: $PAULKIT_PRESET, else by device); one of: "
        + ", ".join(config.PRESETS),
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set adapt.epochs=3 --set seed=1",
    )
    p.add_argument("--data", default=None, help="folder holding the real data sets ($PAULKIT_DATA)")
    p.add_argument("--out", default=None, help="output folder ($PAULKIT_OUT, default outputs/)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paulkit", description="PAUL unsupervised person re-identification (CVPR 2019)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("synth", help="generate the embedded synthetic source/target data")
    s.add_argument("--size", default=None, help="tiny, small or market (default tiny)")
    # the old spelling of --size, read with a deprecation message until the next release
    s.add_argument("--preset", dest="old_size", default=None, help=argparse.SUPPRESS)
    s.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    s.add_argument("--root", default=None, help="output folder (default data/synth)")

    p = sub.add_parser("pretrain", help="supervised pretraining on the source domain")
    _add_common(p)
    p.add_argument("--oracle", action="store_true", help="train on the TARGET labels (reference)")
    p = sub.add_parser("adapt", help="unsupervised PAUL adaptation on the target domain")
    _add_common(p)
    p = sub.add_parser(
        "cluster", help="Cluster Contrast (pseudo-labels by clustering) on the target domain"
    )
    _add_common(p)
    p.add_argument("--seed", type=int, default=None, help="model seed (same as --set seed=S)")
    for name in ("pretrain", "adapt", "cluster"):
        sub.choices[name].add_argument(
            "--restart",
            action="store_true",
            help="move this phase's existing checkpoint aside (<name>.old-<time>, never "
            "deleted) and train it again",
        )
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the target query/gallery")
    _add_common(p)
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file (default: the preset's adaptation checkpoint under --out)",
    )
    p.add_argument("--ap", choices=("step", "trapezoid"), default="step", help="AP convention")
    p = sub.add_parser(
        "reproduce", help="all baselines, ablations and PAUL over seeds -> docs/results.{md,json}"
    )
    _add_common(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="model seeds")
    p.add_argument(
        "--data-seeds",
        type=int,
        nargs="+",
        default=[1, 2, 3],
        help="held-out synthetic data draws (data seed 0 is the tuning draw)",
    )
    p.add_argument("--docs", default="docs", help="folder for results.md/results.json")
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        help="only measure these rows on the runs of the existing docs/results.json entry "
        "(those with a seed in --seeds and a data seed in --data-seeds) and merge them in",
    )
    for name in ("pretrain", "adapt", "cluster", "evaluate", "reproduce"):
        sub.choices[name].add_argument(
            "--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)"
        )
        sub.choices[name].add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _deprecated(command: str, message: str) -> None:
    print(f"paulkit {command}: warning: {message}", file=sys.stderr)


def _override(cfg: config.Config, items: list[str], command: str) -> config.Config:
    """:func:`paulkit.config.override`; a deprecated key's warning printed as one line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        cfg = config.override(cfg, *items)
    for w in caught:
        _deprecated(command, str(w.message))
    return cfg


def _synth_size(args: argparse.Namespace) -> str:
    if args.old_size is None:
        return args.size or "tiny"
    _deprecated("synth", "--preset is deprecated and goes in the next release: use --size")
    if args.size is not None and args.size != args.old_size:
        raise CliError(f"--size {args.size} and --preset {args.old_size}: give --size only")
    return args.old_size


def _cfg(args: argparse.Namespace) -> config.Config:
    cfg = config.preset_from_env(args.preset)
    cfg = _override(cfg, args.overrides, args.command)
    if args.data is not None:
        cfg = config.override(cfg, f"data.root={args.data}")
    if getattr(args, "seed", None) is not None:
        cfg = config.override(cfg, f"seed={args.seed}")
    return cfg


# What `evaluate --set` may change in the checkpoint's own config: where and which target
# data it is evaluated on, and how the images are read. Everything else is fixed by the
# checkpoint; `seed` only picks the default checkpoint (outputs/<preset>/seed<s>/adapt.pt).
EVAL_KEYS = ("data.root", "data.num_workers", "data.target", "data.synth_size", "data.synth_seed")


def _eval_overrides(args: argparse.Namespace) -> list[str]:
    keep = []
    for item in args.overrides:
        key, _, value = item.partition("=")
        key = config.RENAMED.get(key.strip(), key.strip())  # _cfg has warned of an old name
        if key in EVAL_KEYS:
            keep.append(f"{key}={value}")
        elif key == "seed" and args.checkpoint is None:
            continue  # picks the checkpoint file
        else:
            raise CliError(
                f"--set {key}: evaluate uses the checkpoint's own {key}; it takes only "
                f"{', '.join(EVAL_KEYS)}"
                + (" (and seed, to pick the default checkpoint)" if args.checkpoint is None else "")
            )
    return keep


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        torch.device(device)
    except RuntimeError:
        raise CliError(
            f"--device {device!r} is not a device; use cpu, cuda, cuda:1 or mps"
        ) from None


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line. An error raised in a DataLoader worker arrives
    with the worker's traceback embedded: keep only its last line (the error itself)."""
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if "Original Traceback" in text and lines:
        last = lines[-1]
        name = type(exc).__name__
        return last[len(name) + 2 :] if last.startswith(name + ": ") else last
    return " ".join(line.strip() for line in lines) if len(lines) > 1 else text


def _run(args: argparse.Namespace) -> int:
    if args.command == "synth":
        from paulkit.data import synth

        synth.main_generate(_synth_size(args), args.seed, root=args.root)
        return 0
    from paulkit import train

    _check_device(args.device)
    cfg = _cfg(args)
    progress = not args.quiet
    if args.command == "evaluate":
        return _evaluate(args, cfg, progress)
    config.validate(cfg)  # before any data is read or anything trained
    utils.check_writable(args.out if args.out is not None else paths.output_root())
    print(f"preset {cfg.name} (config {config.config_hash(cfg)}), seed {cfg.seed}")
    rt = runtime.make_runtime(cfg, args.device)  # once per command (joins torchrun's group)
    if args.command == "pretrain":
        phase = "oracle" if args.oracle else "pretrain"
        _, hist = train.train_or_load(
            cfg, phase, device=rt, out=args.out, progress=progress, restart=args.restart
        )
        print(f"{phase}: {len(hist['epoch'])} epochs, final loss {hist['loss'][-1]:.4f}")
        print(f"checkpoint: {train.checkpoint_path(cfg, phase, out=args.out)}")
        return 0
    if args.command == "adapt":
        _, hist = train.train_or_load(
            cfg, "adapt", device=rt, out=args.out, progress=progress, restart=args.restart
        )
        for row in hist["eval"]:
            print(f"epoch {row['epoch']:3d}: rank-1 {row['rank1']:.3f}  mAP {row['mAP']:.3f}")
        print(f"checkpoint: {train.checkpoint_path(cfg, 'adapt', out=args.out)}")
        return 0
    if args.command == "cluster":
        from paulkit import cluster

        _, hist = cluster.train_or_load(
            cfg, device=rt, out=args.out, progress=progress, restart=args.restart
        )
        for i, e in enumerate(hist["epoch"]):
            print(
                f"epoch {e:3d}: {hist['num_clusters'][i]} clusters, outliers "
                f"{hist['outlier_share'][i]:.1%}, NMI {hist['nmi'][i]:.3f} (hidden ids, shown "
                f"only), loss {hist['loss'][i]:.3f}"
            )
        for row in hist["eval"]:
            print(f"epoch {row['epoch']:3d}: rank-1 {row['rank1']:.3f}  mAP {row['mAP']:.3f}")
        print(f"checkpoint: {train.checkpoint_path(cfg, cluster.PHASE, out=args.out)}")
        return 0
    if args.command == "reproduce":
        from paulkit import reproduce

        cmd = "python -m paulkit " + " ".join(args.argv)
        if args.rows:
            path = Path(args.docs) / "results.json"
            if not path.exists():
                raise CliError(
                    f"--rows adds rows to {path}, which does not exist: run the table first"
                )
            entry = json.loads(path.read_text()).get(cfg.name)
            if entry is None:
                raise CliError(f"{path} has no {cfg.name} entry: run the table first")
            entry = reproduce.add_rows(
                entry,
                cfg,
                args.rows,
                args.seeds,
                args.data_seeds,
                device=rt,
                out=args.out,
                progress=progress,
                command=cmd,
            )
            if runtime.env_rank() == 0:
                reproduce.write_results(entry, cfg.name, args.docs)
            print(f"wrote {args.docs}/results.md and {args.docs}/results.json")
            return 0
        entry = reproduce.reproduce(
            cfg,
            args.seeds,
            device=rt,
            out=args.out,
            progress=progress,
            command=cmd,
            data_seeds=args.data_seeds,
        )
        if runtime.env_rank() == 0:  # under torchrun, rank 0 writes
            reproduce.write_results(entry, cfg.name, args.docs)
        print(f"wrote {args.docs}/results.md and {args.docs}/results.json")
        return 0
    raise CliError(f"unknown command {args.command!r}")


def cluster_checkpoint(path) -> bool:
    """Whether ``path`` is a Cluster Contrast checkpoint (``paulkit cluster`` wrote it)."""
    try:
        state = utils.load_checkpoint(path)
    except CheckpointError:
        return False  # train.load_model names the problem
    return isinstance(state, dict) and state.get("phase") == "cluster"


def _evaluate(args: argparse.Namespace, cfg: config.Config, progress: bool) -> int:
    from paulkit import train

    keep = _eval_overrides(args)
    path = args.checkpoint or train.checkpoint_path(cfg, "adapt", out=args.out)
    rt = runtime.make_runtime(cfg, args.device)  # LOCAL_RANK's GPU under torchrun
    if cluster_checkpoint(path):
        from paulkit import cluster

        model, state = cluster.load_model(path, rt.device)
    else:
        model, state = train.load_model(path, rt.device)
    ckcfg = config.override(config.config_from_dict(state["config"]), *keep)
    if args.data is not None:
        ckcfg = config.override(ckcfg, f"data.root={args.data}")
    print(
        f"checkpoint {path}: preset {ckcfg.name}, seed {ckcfg.seed}, {state['phase']} epoch "
        f"{state['epoch']}; evaluated on {ckcfg.data.target}"
    )
    if state["phase"] not in ("adapt", "cluster"):
        model = train.adaptation_model(model, ckcfg).to(next(model.parameters()).device)
    res = train.evaluate_model(model, train.target_dataset(ckcfg), ckcfg, rt, progress)
    key = "mAP" if args.ap == "step" else "mAP_trapezoid"
    print(
        f"rank-1 {res['rank1']:.4f}  rank-5 {res['rank5']:.4f}  rank-10 {res['rank10']:.4f}  "
        f"mAP({args.ap}) {res[key]:.4f}  mINP {res['mINP']:.4f}"
    )
    return 0


class _Once(logging.Filter):
    """Each distinct line once per command (the data sets are read by several phases)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg in self.seen:
            return False
        self.seen.add(msg)
        return True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command is None:
        parser.print_help()
        return 2
    runtime.quiet_other_ranks()  # under torchrun only rank 0 prints
    handler = logging.StreamHandler(sys.stdout)  # the data folders read, with their counts
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_Once())
    log = logging.getLogger("paulkit")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return _run(args)
    except (
        CliError,
        ValueError,
        FileNotFoundError,
        CheckpointError,
        RunLockError,
        FloatingPointError,
    ) as exc:
        print(f"paulkit {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"paulkit {args.command}: interrupted (checkpoints so far are kept)", file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)
        runtime.shutdown()
