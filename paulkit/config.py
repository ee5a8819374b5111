"""Configuration: frozen dataclasses and named presets (the folders: :mod:`paulkit.paths`).

One setting picks the size of every run: the environment variable ``PAULKIT_PRESET``
(read by :func:`preset_from_env`). CI and a CPU get the small ``tutorial`` preset without
being told; a GPU gets ``synth_gpu`` unless real data is configured.

Taught in: notebooks/00_overview.ipynb (presets), notebooks/05_source_pretraining.ipynb.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

from paulkit import paths

__all__ = [
    "DataConfig",
    "ModelConfig",
    "PretrainConfig",
    "AdaptConfig",
    "ClusterConfig",
    "Config",
    "PRESETS",
    "get_preset",
    "preset_from_env",
    "override",
    "config_hash",
    "validate",
    "MEMORY_INITS",
    "check_memory_init",
    "config_to_dict",
    "config_from_dict",
    "hashed_dict",
]


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how big they are fed to the network.

    ``source``/``target`` are ``"synth"`` (the embedded generator, see
    :mod:`paulkit.data.synth`) or a real data set name: ``"market1501"``,
    ``"dukemtmcreid"``, ``"msmt17"`` read from ``root`` (or ``PAULKIT_DATA``).
    ``synth_size`` is the synthetic data's size: ``"tiny"``, ``"small"`` or ``"market"``
    (:data:`paulkit.data.synth.SIZES`); a preset is a whole :class:`Config`.
    """

    source: str = "synth"
    target: str = "synth"
    synth_size: str = "tiny"
    synth_seed: int = 0
    root: str | None = None
    height: int = 64
    width: int = 32
    num_workers: int = 0
    limit_train: int = 0  # use only the first N training images of each domain (0: all)


@dataclass(frozen=True)
class ModelConfig:
    """PatchNet's shape (docs/paper.md "Network: PatchNet")."""

    arch: str = "resnet50"  # "resnet50" (paper), "resnet18", or "small" (CPU tutorials)
    weights: str | None = None  # None, "imagenet", or a path to a local torchvision state dict
    num_patches: int = 6
    patch_dim: int = 256
    embed_dim: int = 128
    small_width: int = 32


@dataclass(frozen=True)
class PretrainConfig:
    """Supervised source pretraining (docs/paper.md "Supervised pretraining")."""

    epochs: int = 60
    batch_size: int = 48  # true pairs per batch (2 x images)
    lr_new: float = 0.1
    lr_backbone: float = 0.01
    lr_stn: float = 1e-5
    lr_step: int = 40  # x0.1 for the new layers and the backbone from this epoch
    stn_start: int = 25  # the patch generator learns from this epoch ...
    stn_stop: int = 40  # ... until this one (exclusive)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    triplet_weight: float = 0.1
    triplet_margin: float = 1.0
    # As the official code: the last partial batch is kept, and an image's true-pair partner
    # is drawn among all images of its identity, itself included (True drops / False excludes).
    drop_last: bool = False
    partner_includes_self: bool = True


@dataclass(frozen=True)
class AdaptConfig:
    """Unsupervised PAUL adaptation (docs/paper.md "Unsupervised training")."""

    epochs: int = 60
    batch_size: int = 42  # images per batch; each gives num_views views
    num_views: int = 2
    lr: float = 1e-4
    lr_step: int = 50
    momentum: float = 0.9
    weight_decay: float = 1e-4
    pedal_weight: float = 2.0
    ipfl_weight: float = 1.0
    pedal_scale: float = 15.0
    pedal_k: int = 10
    ipfl_margin: float = 2.0
    ipfl_max_iter: int = 15
    ipfl_nearest: int = 3
    memory_momentum: float = 0.1
    eval_every: int = 10
    # Faithful to the official code unless named here (docs/paper.md "Unsupervised training"):
    # "train": the memory initialisation pass in train mode over the shuffled loader, as the
    # official code runs it; "eval": the same pass in eval mode (source BatchNorm statistics).
    memory_init: str = "train"
    # The official loader keeps the last partial batch; True drops it.
    drop_last: bool = False
    # After adaptation, re-estimate BatchNorm on the clean target training images
    # ("PAUL + AdaBN", not in the paper; its own row in docs/results.md).
    final_adabn: bool = False


@dataclass(frozen=True)
class ClusterConfig:
    """Cluster Contrast (:mod:`paulkit.cluster`), started from the same pretrained model.

    Defaults are the authors' code (alibaba/cluster-contrast-reid,
    ``examples/cluster_contrast_train_usl.py`` and the README's Market-1501 command:
    ``-b 256 --num-instances 16 --iters 200 --eps 0.6``; momentum 0.2 is the script's
    default, the README's Market command passes 0.1).
    """

    epochs: int = 50
    iters: int = 200  # batches per epoch; 0: one pass of the P x K sampler
    batch_size: int = 256  # images per batch: P pseudo-identities x num_instances
    num_instances: int = 16  # K: images of one pseudo-identity in a batch
    lr: float = 3.5e-4  # Adam
    weight_decay: float = 5e-4
    lr_step: int = 20  # x0.1 every lr_step epochs (StepLR)
    k1: int = 30  # Jaccard distance: k-reciprocal neighbours
    k2: int = 6  # Jaccard distance: local query expansion
    eps: float = 0.6  # DBSCAN radius
    min_samples: int = 4  # DBSCAN core point size
    temperature: float = 0.05
    momentum: float = 0.2  # weight of the old centroid in the memory update
    pad: int = 10  # training augmentation: pad by this many pixels, then crop back
    erasing: float = 0.5  # random erasing probability
    eval_every: int = 10


@dataclass(frozen=True)
class Config:
    """A whole run: data, model, both training phases and the runtime switches."""

    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    seed: int = 0
    deterministic: bool = False
    amp: bool = True  # mixed precision on CUDA only
    channels_last: bool = True  # CUDA only
    # Several processes (torchrun, docs/scaling.md): SyncBatchNorm over all ranks instead of
    # per-rank BatchNorm statistics (CUDA only). A runtime switch like amp: not in phase_hash.
    sync_bn: bool = False
    # Intra-op threads of a one-process run on the CPU (runtime.make_runtime sets them): a
    # CPU result depends on the thread count bit for bit (a reduction is split per thread),
    # so a run fixes it rather than taking one thread per core of whatever machine runs it.
    # 2: what every published CPU number used. 0: torch's default (not reproducible across
    # machines). A runtime switch like amp: in neither config_hash nor phase_hash.
    cpu_threads: int = 2


def _paper(name: str, target: str, batch: int, scale: float) -> Config:
    return Config(
        name=name,
        data=DataConfig(source="msmt17", target=target, height=384, width=128, num_workers=8),
        model=ModelConfig(arch="resnet50", weights="imagenet"),
        pretrain=PretrainConfig(),
        adapt=AdaptConfig(batch_size=batch, pedal_scale=scale),
        amp=False,  # the official code trains in fp32
    )


# Cluster Contrast on the CPU presets. Deviations from the authors' code, named: 4 epochs of
# 40 batches of 32 images (8 pseudo-identities x 4; theirs: 50 x 200 of 256 = 16 x 16),
# the lr step after epoch 3 (theirs: 20), padding 2 px at 64x32 (theirs: 10 px at 256x128).
CPU_CLUSTER = ClusterConfig(
    epochs=4, iters=40, batch_size=32, num_instances=4, lr_step=3, pad=2, eval_every=2
)

PRESETS: dict[str, Config] = {
    # CPU presets for the embedded synthetic data (docs/benchmarks.md has the CPU figures).
    # Deviations from docs/paper.md: a small network at 64x32, adaptation lr 1e-3 for 4 epochs
    # (the paper: 1e-4 for 60). The IPFL margin is the paper's 2: on the tuning draw (data
    # seed 0, `python bench/tune_margin.py`, docs/data.md "The IPFL margin") margin 2 gave
    # PAUL 35.4 and IPFL only 34.0 mAP against 35.3 and 33.4 with 0.5 (two model seeds).
    "tutorial": Config(
        name="tutorial",
        data=DataConfig(synth_size="tiny", height=64, width=32),
        model=ModelConfig(arch="small", small_width=32),
        pretrain=PretrainConfig(epochs=8, batch_size=32, lr_step=6, stn_start=4, stn_stop=6),
        adapt=AdaptConfig(epochs=4, batch_size=32, lr=1e-3, lr_step=3, eval_every=2),
        cluster=CPU_CLUSTER,
    ),
    "synth_small": Config(
        name="synth_small",
        data=DataConfig(synth_size="small", height=64, width=32),
        model=ModelConfig(arch="small", small_width=32),
        pretrain=PretrainConfig(epochs=10, batch_size=32, lr_step=8, stn_start=5, stn_stop=8),
        adapt=AdaptConfig(epochs=4, batch_size=32, lr=1e-3, lr_step=3, eval_every=2),
        cluster=CPU_CLUSTER,
    ),
    # A larger synthetic run for a GPU: ResNet-50 at 256x128 from random weights (nothing is
    # downloaded; --set model.weights=PATH loads a local torchvision state dict).
    "synth_gpu": Config(
        name="synth_gpu",
        data=DataConfig(synth_size="small", height=256, width=128, num_workers=4),
        model=ModelConfig(arch="resnet50", weights=None),
        pretrain=PretrainConfig(epochs=30, lr_step=20, stn_start=12, stn_stop=20),
        adapt=AdaptConfig(epochs=20, lr_step=15, eval_every=5),
    ),
    # The paper's settings (docs/paper.md), pretrained on MSMT17.
    "paper_market": _paper("paper_market", "market1501", batch=42, scale=15.0),
    "paper_duke": _paper("paper_duke", "dukemtmcreid", batch=40, scale=5.0),
}


def get_preset(name: str) -> Config:
    """Return the named preset; the error lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}"
        ) from None


def preset_from_env(name: str | None = None) -> Config:
    """The preset to run: ``name`` when given (e.g. a notebook's ``parameters`` cell), else
    the environment variable ``PAULKIT_PRESET``, else chosen by device.

    Without a setting, a machine with a CUDA GPU gets ``paper_market`` when MSMT17 and
    Market-1501 are both readable under :func:`paulkit.paths.data_root` (``PAULKIT_DATA``),
    else the larger synthetic run ``synth_gpu``; anything else (CI, a laptop) gets the small
    CPU preset ``tutorial``.
    """
    name = name or os.environ.get("PAULKIT_PRESET")
    if not name:
        import torch

        if not torch.cuda.is_available():
            name = "tutorial"
        else:
            name = "paper_market" if real_data_present("paper_market") else "synth_gpu"
    return get_preset(name)


def real_data_present(preset: str, root: str | os.PathLike | None = None) -> bool:
    """Whether every real data set a preset reads is found under ``root`` (else
    ``PAULKIT_DATA``, else ``<project>/data``); synthetic domains always count as present."""
    from paulkit import data as D

    cfg = get_preset(preset)
    for name in (cfg.data.source, cfg.data.target):
        if name == "synth":
            continue
        try:
            D.load_dataset(name, root=paths.data_root(root if root is not None else cfg.data.root))
        except D.DatasetError:
            return False
    return True


def _coerce(value: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}: expected true/false, got {value!r}")
    if value.lower() in ("none", "null") and (current is None or isinstance(current, str)):
        return None
    try:
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
    except ValueError:
        kind = type(current).__name__
        raise ValueError(f"--set {key}: expected a number ({kind}), got {value!r}") from None
    return value


# Keys renamed after paulkit 0.1.0 (old -> new); the old names are read, with a deprecation
# warning, until the next release.
RENAMED = {"data.synth_preset": "data.synth_size"}


def override(cfg: Config, *assignments: str) -> Config:
    """Apply ``key=value`` overrides, e.g. ``"adapt.epochs=3"`` or ``"seed=1"``."""
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in RENAMED:
            warnings.warn(
                f"--set {key} is deprecated and goes in the next release: use {RENAMED[key]}",
                DeprecationWarning,
                stacklevel=2,
            )
            key = RENAMED[key]
        parts = key.split(".")
        if len(parts) == 1:
            if parts[0] not in {f.name for f in dataclasses.fields(cfg)} or parts[0] in SECTIONS:
                raise ValueError(f"--set: unknown key {key!r}")
            cfg = replace(cfg, **{parts[0]: _coerce(value, getattr(cfg, parts[0]), key)})
        elif len(parts) == 2 and parts[0] in SECTIONS:
            section = getattr(cfg, parts[0])
            names = {f.name for f in dataclasses.fields(section)}
            if parts[1] not in names:
                raise ValueError(
                    f"--set: unknown key {key!r}; {parts[0]} has: {', '.join(sorted(names))}"
                )
            new = replace(section, **{parts[1]: _coerce(value, getattr(section, parts[1]), key)})
            cfg = replace(cfg, **{parts[0]: new})
        else:
            raise ValueError(f"--set: unknown key {key!r}")
    return cfg


SECTIONS = ("data", "model", "pretrain", "adapt", "cluster")  # the nested config sections

MEMORY_INITS = ("train", "eval")  # the memory initialisation pass: official, or eval mode


def check_memory_init(value: str) -> None:
    """One line naming ``adapt.memory_init`` when it is not one of :data:`MEMORY_INITS`."""
    if value not in MEMORY_INITS:
        raise ValueError(
            f"adapt.memory_init={value!r}: choose 'train' (the official pass) or 'eval'"
        )


def validate(cfg: Config) -> Config:
    """Refuse, before any data is read or any step is trained, a config that cannot train:
    one ``ValueError`` naming the key (e.g. ``adapt.epochs=0: must be at least 1``).

    Checks what the config alone decides (counts, sizes, choices). What depends on the data
    (a batch larger than the training set) is checked by :func:`paulkit.train.pretrain` and
    :func:`paulkit.train.adapt` as soon as the data set is read; a writable ``--out`` by
    :func:`paulkit.utils.check_writable`.
    """
    d, m, p, a = cfg.data, cfg.model, cfg.pretrain, cfg.adapt
    at_least = [
        ("pretrain.epochs", p.epochs, 1),
        ("pretrain.batch_size", p.batch_size, 1),
        ("adapt.epochs", a.epochs, 1),
        ("adapt.batch_size", a.batch_size, 2),  # IPFL and PEDAL compare images of a batch
        ("adapt.num_views", a.num_views, 1),
        ("adapt.eval_every", a.eval_every, 0),
        ("adapt.pedal_k", a.pedal_k, 1),
        ("adapt.ipfl_max_iter", a.ipfl_max_iter, 0),
        ("adapt.ipfl_nearest", a.ipfl_nearest, 1),
        ("data.height", d.height, 1),
        ("data.width", d.width, 1),
        ("data.num_workers", d.num_workers, 0),
        ("data.limit_train", d.limit_train, 0),
        ("model.num_patches", m.num_patches, 1),
        ("model.patch_dim", m.patch_dim, 1),
        ("model.embed_dim", m.embed_dim, 1),
        ("model.small_width", m.small_width, 1),
        ("cpu_threads", cfg.cpu_threads, 0),
    ]
    for key, value, low in at_least:
        if value < low:
            raise ValueError(f"{key}={value}: must be at least {low}")
    for key, value in (
        ("pretrain.lr_new", p.lr_new),
        ("pretrain.lr_backbone", p.lr_backbone),
        ("pretrain.lr_stn", p.lr_stn),
        ("adapt.lr", a.lr),
        ("adapt.pedal_weight", a.pedal_weight),
        ("adapt.ipfl_weight", a.ipfl_weight),
    ):
        if not value >= 0:  # also catches nan
            raise ValueError(f"{key}={value}: must be a number >= 0")
    if not 0 <= a.memory_momentum <= 1:
        raise ValueError(f"adapt.memory_momentum={a.memory_momentum}: must be within 0..1")
    check_memory_init(a.memory_init)
    _validate_cluster(cfg.cluster)
    if a.pedal_weight == 0 and a.ipfl_weight == 0:
        raise ValueError("adapt.pedal_weight and adapt.ipfl_weight are both 0: nothing to train")
    return cfg


def _validate_cluster(c: ClusterConfig) -> None:
    for key, value, low in (
        ("cluster.epochs", c.epochs, 1),
        ("cluster.iters", c.iters, 0),
        ("cluster.num_instances", c.num_instances, 1),
        ("cluster.lr_step", c.lr_step, 1),
        ("cluster.k1", c.k1, 1),
        ("cluster.k2", c.k2, 1),
        ("cluster.min_samples", c.min_samples, 1),
        ("cluster.pad", c.pad, 0),
        ("cluster.eval_every", c.eval_every, 0),
    ):
        if value < low:
            raise ValueError(f"{key}={value}: must be at least {low}")
    if c.batch_size < c.num_instances or c.batch_size % c.num_instances:
        raise ValueError(
            f"cluster.batch_size={c.batch_size}: must be a multiple of cluster.num_instances="
            f"{c.num_instances} (P pseudo-identities x K images)"
        )
    if c.k2 > c.k1:
        raise ValueError(f"cluster.k2={c.k2}: must be at most cluster.k1={c.k1}")
    for key, value in (("cluster.lr", c.lr), ("cluster.weight_decay", c.weight_decay)):
        if not value >= 0:
            raise ValueError(f"{key}={value}: must be a number >= 0")
    for key, value in (("cluster.eps", c.eps), ("cluster.temperature", c.temperature)):
        if not value > 0:
            raise ValueError(f"{key}={value}: must be a number > 0")
    for key, value in (("cluster.momentum", c.momentum), ("cluster.erasing", c.erasing)):
        if not 0 <= value <= 1:
            raise ValueError(f"{key}={value}: must be within 0..1")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# Top-level keys deleted after paulkit 0.1.0, with the only value they ever had in a preset
# (``compile`` was read by nothing).
DELETED = {"compile": False}


def config_from_dict(d: dict[str, Any]) -> Config:
    """The inverse of :func:`config_to_dict`; also reads the config a checkpoint of an older
    paulkit stored (keys of :data:`RENAMED` under their old names, keys of :data:`DELETED`)."""
    sections = {k: dict(d[k]) for k in ("data", "model", "pretrain", "adapt")}
    for old, new in RENAMED.items():
        (section, old_key), new_key = old.split("."), new.split(".")[1]
        if old_key in sections[section]:
            sections[section][new_key] = sections[section].pop(old_key)
    return Config(
        name=d["name"],
        data=DataConfig(**sections["data"]),
        model=ModelConfig(**sections["model"]),
        pretrain=PretrainConfig(**sections["pretrain"]),
        adapt=AdaptConfig(**sections["adapt"]),
        # checkpoints written before the cluster section existed have none: the defaults
        cluster=ClusterConfig(**d.get("cluster", {})),
        **{k: v for k, v in d.items() if k not in ("name", "cluster", *sections, *DELETED)},
    )


def hashed_dict(cfg: Config) -> dict[str, Any]:
    """What :func:`config_hash` hashes: :func:`config_to_dict` with the keys of
    :data:`RENAMED` under their old names and those of :data:`DELETED` with their value, so
    that a rename or a deletion changes no published hash (docs/results.json). Left out:
    the ``cluster`` section (it changes no PAUL phase, and Cluster Contrast's checkpoints
    compare their own settings, :func:`paulkit.cluster.settings`) and ``cpu_threads`` (a
    runtime switch); adding either changed no published hash."""
    d = config_to_dict(cfg)
    d.pop("cluster")
    d.pop("cpu_threads")  # a runtime switch, added after hashes were published
    for old, new in RENAMED.items():
        (section, old_key), new_key = old.split("."), new.split(".")[1]
        d[section] = {old_key if k == new_key else k: v for k, v in d[section].items()}
    return d | DELETED


def config_hash(cfg: Config | dict[str, Any]) -> str:
    """A short stable hash of a config (what a checkpoint was trained with), or of a dict."""
    d = cfg if isinstance(cfg, dict) else hashed_dict(cfg)
    blob = json.dumps(d, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
