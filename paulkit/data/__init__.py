"""Data: the re-id data set readers, the embedded synthetic generator, transforms, loaders.

- :mod:`paulkit.data.datasets`: ``Market1501``, ``DukeMTMCreID``, ``MSMT17`` (read only,
  nothing downloads), ``ImageRecord``, ``ImageDataset``, ``PairDataset``, ``MultiViewDataset``.
- :mod:`paulkit.data.synth`: the two-domain synthetic pedestrians (``embedded()``).
- :mod:`paulkit.data.transforms`: train, test and pseudo-pair transforms.

Taught in: notebooks/01_data_loading.ipynb.
"""

from __future__ import annotations

from pathlib import Path

from paulkit.data import synth, transforms
from paulkit.data.datasets import (
    MSMT17,
    DatasetError,
    DukeMTMCreID,
    ImageDataset,
    ImageRecord,
    Market1501,
    MultiViewDataset,
    PairDataset,
    ReidDataset,
    load_image,
    parse_duke_name,
    parse_market_name,
    parse_msmt_name,
    verify_images,
)
from paulkit.data.synth import embedded

__all__ = [
    "ImageRecord",
    "DatasetError",
    "ReidDataset",
    "Market1501",
    "DukeMTMCreID",
    "MSMT17",
    "parse_market_name",
    "parse_duke_name",
    "parse_msmt_name",
    "load_image",
    "verify_images",
    "ImageDataset",
    "PairDataset",
    "MultiViewDataset",
    "embedded",
    "load_dataset",
    "synth",
    "transforms",
]


def load_dataset(
    name: str,
    root: str | Path | None = None,
    size: str = "tiny",
    seed: int = 0,
    *,
    preset: str | None = None,
) -> ReidDataset:
    """A data set by name: ``"synth-source"``, ``"synth-target"``, ``"market1501"``,
    ``"dukemtmcreid"`` or ``"msmt17"``.

    Args:
        name: the data set (case and ``-``/``_`` do not matter).
        root: for the real sets, the folder holding them (default ``PAULKIT_DATA``, else
            ``data/``); for the synthetic ones, the folder to generate into (default
            :func:`paulkit.paths.synth_root`).
        size, seed: size (``"tiny"``, ``"small"``, ``"market"``) and seed of the synthetic
            data (ignored for real data sets); ``preset=`` is the deprecated old name of size.

    Taught in: notebooks/01_data_loading.ipynb.
    """
    size = synth.size_or_old_name(size, preset, "load_dataset")
    key = name.lower().replace("_", "-")
    if key == "synth-source":
        return Market1501(embedded(size, seed, root=root)[0])
    elif key == "synth-target":
        return Market1501(embedded(size, seed, root=root)[1])
    elif key in ("market1501", "market-1501", "market"):
        return Market1501(root)
    elif key in ("dukemtmcreid", "dukemtmc-reid", "duke"):
        return DukeMTMCreID(root)
    elif key == "msmt17":
        return MSMT17(root)
    raise ValueError(
        f"unknown data set {name!r}; choose one of: synth-source, synth-target, market1501, "
        "dukemtmcreid, msmt17"
    )
