"""Command line: ``python -m paulkit`` (also installed as ``paulkit``).

Subcommands: ``synth`` (make the embedded data), ``pretrain``, ``adapt``, ``evaluate``,
``reproduce``. Each takes ``--preset`` plus ``--set key=value`` overrides; bad arguments and
missing data end with one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from paulkit import config

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
    s.add_argument("--preset", default="tiny", help="size: tiny, small or market (default tiny)")
    s.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    s.add_argument("--root", default=None, help="output folder (default data/synth)")
    return parser


def _cfg(args: argparse.Namespace) -> config.Config:
    cfg = config.preset_from_env(args.preset)
    cfg = config.override(cfg, *args.overrides)
    if args.data is not None:
        cfg = config.override(cfg, f"data.root={args.data}")
    return cfg


def _run(args: argparse.Namespace) -> int:
    if args.command == "synth":
        from paulkit.data import synth

        synth.main_generate(args.preset, args.seed, root=args.root)
        return 0
    raise CliError(f"unknown command {args.command!r}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _run(args)
    except (CliError, ValueError, FileNotFoundError) as exc:
        print(f"paulkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"paulkit {args.command}: interrupted (checkpoints so far are kept)", file=sys.stderr)
        return 130
