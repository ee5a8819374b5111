"""The folders paulkit reads and writes: the checkout, the real data, the synthetic data, the
outputs. Each follows an environment variable; this module imports nothing of paulkit, so the
data readers (:mod:`paulkit.data`) and the presets (:mod:`paulkit.config`) both use it without
importing each other.

Used in: notebooks/07_evaluation.ipynb (``project_root``, to find ``docs/results.json``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["project_root", "data_root", "synth_root", "output_root"]


def project_root() -> Path:
    """The checkout holding ``paulkit/`` (editable install) or else the working directory."""
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Folder with the real data sets: ``root``, else ``PAULKIT_DATA``, else ``<project>/data``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("PAULKIT_DATA")
    return Path(env).expanduser() if env else project_root() / "data"


def synth_root() -> Path:
    """Folder paulkit generates the synthetic data into (its own, never a user's data folder):
    ``PAULKIT_SYNTH``, else ``<project>/data/synth``."""
    env = os.environ.get("PAULKIT_SYNTH")
    return Path(env).expanduser() if env else project_root() / "data" / "synth"


def output_root() -> Path:
    """Checkpoints and results: ``PAULKIT_OUT``, else ``<project>/outputs``."""
    env = os.environ.get("PAULKIT_OUT")
    return Path(env).expanduser() if env else project_root() / "outputs"
