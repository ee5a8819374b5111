"""Training: supervised source pretraining, AdaBN, and unsupervised PAUL adaptation.

One readable function per phase and per epoch, no engine: :func:`pretrain` and :func:`adapt`
loop over :func:`pretrain_epoch` / :func:`adapt_epoch`, write a checkpoint atomically after
every epoch, and return ``(model, history)``. They never plot (``paulkit.viz`` does).

Taught in: notebooks/05_source_pretraining.ipynb, notebooks/06_gpu_training.ipynb.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from paulkit import config as C
from paulkit import data as D
from paulkit import distributed as ddp
from paulkit import losses, memory, models, paths, utils
from paulkit.runtime import Runtime, env_rank, make_runtime

__all__ = [
    "build_model",
    "source_records",
    "target_dataset",
    "pretrain_lrs",
    "pretrain_epoch",
    "pretrain",
    "adapt_batchnorm",
    "clean_target_loader",
    "epoch_batches",
    "seed_key",
    "SeededSamples",
    "MEMORY_INITS",
    "init_memories",
    "paul_step",
    "Accumulator",
    "adapt_epoch",
    "adaptation_model",
    "adapt",
    "evaluate_model",
    "phase_hash",
    "phase_settings",
    "data_identity",
    "check_checkpoint",
    "CheckpointMismatch",
    "checkpoint_path",
    "train_or_load",
    "load_model",
]

CHECKPOINT_FORMAT = "paulkit-checkpoint/1"


# --------------------------------------------------------------------------- data and model


log = logging.getLogger("paulkit")


def _dataset(name: str, root: str | None, cfg: C.Config, role: str):
    if name == "synth":
        ds = D.load_dataset(f"synth-{role}", size=cfg.data.synth_size, seed=cfg.data.synth_seed)
        what = f"synthetic {role} (size {cfg.data.synth_size}, data seed {cfg.data.synth_seed})"
    else:
        ds = D.load_dataset(name, root=paths.data_root(root))
        what = ds.name + (f" ({ds.layout} layout)" if hasattr(ds, "layout") else "")
    st = ds.stats()  # the folders actually read, so a wrong --data shows at once (the CLI prints)
    log.info(
        "%s: %s read from %s: train %d images / %d ids, query %d / %d, gallery %d / %d",
        role,
        what,
        ds.root,
        st["train"]["images"],
        st["train"]["ids"],
        st["query"]["images"],
        st["query"]["ids"],
        st["gallery"]["images"],
        st["gallery"]["ids"],
    )
    return ds


def source_records(cfg: C.Config, use_target_labels: bool = False) -> list[D.ImageRecord]:
    """Labelled training records for supervised training.

    ``use_target_labels=True`` is the *oracle* only: supervised training on the target's own
    training labels, used for the reference row of the results table and nowhere else.
    """
    if use_target_labels:
        return target_train(cfg, target_dataset(cfg))
    return _limit(_dataset(cfg.data.source, cfg.data.root, cfg, "source").train, cfg)


def _limit(records: list, cfg: C.Config) -> list:
    n = cfg.data.limit_train
    return records[:n] if n else records


def target_train(cfg: C.Config, target) -> list[D.ImageRecord]:
    """The target's training records used for adaptation (``data.limit_train`` applied)."""
    return _limit(target.train, cfg)


def target_dataset(cfg: C.Config):
    """The target data set (its ``train`` labels are read by evaluation and the oracle only)."""
    return _dataset(cfg.data.target, cfg.data.root, cfg, "target")


def build_model(
    cfg: C.Config,
    num_classes: int | None = None,
    pretrain: bool = False,
    backbone_weights: bool = True,
) -> nn.Module:
    """PatchNet as the config describes it; ``backbone_weights=False`` skips loading
    ``cfg.model.weights`` (for a model whose weights come from a checkpoint next)."""
    m = cfg.model
    return models.PatchNet(
        num_classes=num_classes,
        arch=m.arch,
        weights=m.weights if backbone_weights else None,
        num_patches=m.num_patches,
        patch_dim=m.patch_dim,
        embed_dim=m.embed_dim,
        pretrain=pretrain,
        small_width=m.small_width,
    )


# Random streams: every draw of a run comes from a seed made of (cfg.seed, stream, epoch, ...)
# alone, never from a generator that something else may have advanced (a progress bar
# iterating the loader, the number of DataLoader workers or threads, a resume).
_SHUFFLE, _AUGMENT, _EPOCH = 0, 1, 2
INIT_EPOCH = -1  # the epoch slot of the memory initialisation pass (its own shuffle)


def seed_key(*parts: int) -> int:
    """A 64-bit seed determined by ``parts`` alone (``numpy.random.SeedSequence``)."""
    entropy = [int(p) + 2**31 for p in parts]  # SeedSequence wants non-negative integers
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, drop_last: bool
) -> list[list[int]]:
    """The shuffled batches of one epoch: a permutation drawn from ``(seed, epoch)`` alone.

    The last batch keeps the ``n % batch_size`` remaining images unless ``drop_last``.
    """
    g = torch.Generator().manual_seed(seed_key(seed, _SHUFFLE, epoch))
    order = torch.randperm(n, generator=g).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


class SeededSamples(torch.utils.data.Dataset):
    """A dataset whose item ``i`` in epoch ``epoch`` draws its random augmentation from
    ``(seed, epoch, i)`` alone: Python's, NumPy's and torch's CPU generators are seeded before
    each item. So the views do not depend on the worker that loads an item, on the number of
    workers, on the process (torchrun) or on what ran before."""

    def __init__(self, dataset, seed: int, epoch: int = 0) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        utils.set_seed(seed_key(self.seed, _AUGMENT, self.epoch, index), cuda=False)
        return self.dataset[index]


def _train_loader(
    dataset, batch_size: int, rt: Runtime, cfg: C.Config, epoch: int, drop_last: bool
) -> DataLoader:
    """The shuffled loader of one epoch (or of :data:`INIT_EPOCH`); under torchrun, this
    rank's block of every global batch (:func:`paulkit.distributed.rank_blocks`)."""
    batches = epoch_batches(len(dataset), batch_size, cfg.seed, epoch, drop_last)
    batches = ddp.rank_blocks(batches, rt.rank, rt.world_size)  # all of them for one process
    return DataLoader(
        SeededSamples(dataset, cfg.seed, epoch),
        batch_sampler=batches,
        num_workers=cfg.data.num_workers,
        pin_memory=rt.pin_memory,
        generator=torch.Generator().manual_seed(0),  # never the global generator
        persistent_workers=False,
    )


def _eval_loader(dataset, batch_size: int, rt: Runtime, cfg: C.Config) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        pin_memory=rt.pin_memory,
    )


def _seed_epoch(cfg: C.Config, epoch: int) -> None:
    # Anything outside the loaders that draws from the global generators (nothing in
    # paulkit's losses today) depends only on (seed, epoch), the same on every rank.
    utils.set_seed(seed_key(cfg.seed, _EPOCH, epoch))


def _progress(iterable, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


# --------------------------------------------------------------------------- pretraining


def pretrain_lrs(p: C.PretrainConfig, epoch: int) -> dict[str, float]:
    """docs/paper.md's per-group schedule for pretraining epoch ``epoch`` (0-based)."""
    decay = 0.1 if epoch >= p.lr_step else 1.0
    return {
        "new": p.lr_new * decay,
        "backbone": p.lr_backbone * decay,
        "stn": p.lr_stn if p.stn_start <= epoch < p.stn_stop else 0.0,
    }


def _pretrain_optimizer(model: nn.Module, p: C.PretrainConfig) -> torch.optim.Optimizer:
    groups = model.param_groups()
    new = list(groups["new"]) + list(groups.get("embed", []))
    return torch.optim.SGD(
        [
            {"params": groups["backbone"], "name": "backbone", "lr": p.lr_backbone},
            {"params": groups["stn"], "name": "stn", "lr": 0.0},
            {"params": new, "name": "new", "lr": p.lr_new},
        ],
        lr=p.lr_new,
        momentum=p.momentum,
        weight_decay=p.weight_decay,
    )


def pretrain_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    rt: Runtime,
    p: C.PretrainConfig,
    progress: bool = True,
    desc: str = "pretrain",
) -> dict[str, float]:
    """One epoch of per-patch cross-entropy + ``triplet_weight`` x triplet on true pairs."""
    model.train()
    acc = Accumulator()
    bar = _progress(loader, progress, desc)
    for img, img2, pid in bar:
        x = rt.to_device(torch.cat([img, img2]))
        pids = torch.cat([pid, pid]).to(rt.device)
        with rt.autocast():
            out = model(x)
        ce = losses.patch_cross_entropy(out.logits.float(), pids)
        tri = losses.triplet_loss(out.embedding.float(), pids, margin=p.triplet_margin)
        loss = ce + p.triplet_weight * tri
        optimizer.zero_grad(set_to_none=True)
        _backward_step(loss, optimizer, rt)
        hit = (out.logits.float().mean(1).argmax(1) == pids).float().mean()
        acc.add(x.shape[0], loss=loss, ce=ce, triplet=tri, acc=hit)
        if progress:
            bar.set_postfix(loss=f"{acc.mean('loss'):.3f}")
    return acc.means()


def _backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, rt: Runtime) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss became {float(loss.detach())}; lower the learning rate")
    if rt.scaler is not None:
        rt.scaler.scale(loss).backward()
        rt.scaler.step(optimizer)
        rt.scaler.update()
    else:
        loss.backward()
        optimizer.step()


def _set_lrs(optimizer: torch.optim.Optimizer, lrs: dict[str, float]) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lrs[group["name"]]


def pretrain(
    cfg: C.Config,
    device: str | torch.device | Runtime | None = None,
    checkpoint: str | Path | None = None,
    use_target_labels: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    restart: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Supervised pretraining (docs/paper.md "Supervised pretraining").

    Args:
        cfg: the run's config (``cfg.pretrain`` and ``cfg.data.source``).
        device: overrides the automatic choice: a device name, or the command's
            :class:`paulkit.runtime.Runtime` (built once and passed down).
        checkpoint: file written atomically after every epoch; an existing one with the same
            settings is resumed, one with other settings refused (:func:`check_checkpoint`),
            and its folder locked while this runs.
        use_target_labels: train on the target's labels instead (the oracle row only).
        progress: show a progress bar.
        stop_after: stop after this many epochs in total (to simulate an interruption).
        restart: move an existing ``checkpoint`` aside and start afresh.

    Returns:
        ``(model, history)``; history has per-epoch lists ``epoch``, ``loss``, ``ce``,
        ``triplet``, ``acc``, ``lr`` and ``images_per_s``.
    """
    C.validate(cfg)
    with _run_folder_lock(checkpoint):
        return _pretrain(cfg, device, checkpoint, use_target_labels, progress, stop_after, restart)


def _pretrain(cfg, device, checkpoint, use_target_labels, progress, stop_after, restart):
    utils.set_seed(cfg.seed, cfg.deterministic)
    rt = make_runtime(cfg, device)
    p = cfg.pretrain
    ddp.local_batch(p.batch_size, rt.world_size, "pretrain.batch_size")  # before any work
    progress = progress and rt.rank == 0
    records = source_records(cfg, use_target_labels)
    _check_batch(len(records), p.batch_size, rt.world_size, p.drop_last, "pretrain.batch_size")
    num_classes = max(r.pid for r in records) + 1
    model = build_model(cfg, num_classes=num_classes, pretrain=True).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _pretrain_optimizer(model, p)
    net = ddp.wrap(model, rt, cfg.sync_bn)  # DistributedDataParallel under torchrun
    history: dict[str, Any] = {k: [] for k in ("epoch", "loss", "ce", "triplet", "acc", "lr")}
    history["images_per_s"] = []
    phase = "oracle" if use_target_labels else "pretrain"
    start = 0
    state = _try_resume(checkpoint, cfg, phase, restart)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start = state["history"], state["epoch"]
    tf = D.transforms.train_transform(cfg.data.height, cfg.data.width)
    dataset = D.PairDataset(records, tf, include_self=p.partner_includes_self)
    for epoch in range(start, p.epochs):
        if stop_after is not None and epoch >= stop_after:
            break
        _seed_epoch(cfg, epoch)
        lrs = pretrain_lrs(p, epoch)
        _set_lrs(optimizer, lrs)
        loader = _train_loader(dataset, p.batch_size, rt, cfg, epoch, p.drop_last)
        stats = pretrain_epoch(
            net, loader, optimizer, rt, p, progress, desc=f"{phase} {epoch + 1}/{p.epochs}"
        )
        stats = ddp.average_stats(stats, rt)
        ddp.broadcast_buffers(model)  # rank 0's BatchNorm statistics on every rank
        history["epoch"].append(epoch + 1)
        history["lr"].append(lrs["new"])
        for k in ("loss", "ce", "triplet", "acc", "images_per_s"):
            history[k].append(stats[k])
        if checkpoint is not None and rt.rank == 0:
            _save(checkpoint, cfg, phase, epoch + 1, model, optimizer, history, num_classes)
    ddp.barrier(rt)
    return model, history


# --------------------------------------------------------------------------- AdaBN


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (the rest is not needed)."""


@torch.no_grad()
def adapt_batchnorm(
    model: nn.Module,
    loader: DataLoader,
    device: str | torch.device | Runtime | None = None,
    progress: bool = True,
    exact: bool = True,
) -> nn.Module:
    """AdaBN: re-estimate every BatchNorm's running statistics on ``loader``.

    No gradients and no labels (only the images of each batch are used); no parameter and
    no other buffer changes. Each layer's running mean and running variance become the exact
    mean and unbiased variance of its inputs over *all* images (float64 sums, every image
    weighted alike).

    ``exact=True`` (the default) estimates the layers one at a time in the order the forward
    pass runs them, with the network in eval mode and every earlier layer already holding
    its new statistics (the pass stops at the layer being estimated): each layer then sees
    exactly the inputs it will see at test time, and the result does not depend on how the
    images are ordered or batched. It costs about half a forward pass over the data per
    BatchNorm layer. ``exact=False`` is the usual one-pass form: one train-mode pass in which
    the layers normalise with each batch's own statistics, so deeper layers' inputs (and
    the result) depend on which images share a batch.

    Args:
        model: any module; its BatchNorm layers are updated in place.
        loader: batches whose first element is images (B, C, H, W) or views (B, num, C, H, W).
        device: where to run (default: the model's device).
        progress: show a progress bar.
        exact: layer by layer (order-free) or one train-mode pass.

    Taught in: notebooks/06_gpu_training.ipynb.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    tracked = {m: m.num_batches_tracked.clone() for m in bns if m.num_batches_tracked is not None}

    def images(batch):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return (x.flatten(0, 1) if x.dim() == 5 else x).to(dev)

    def run(layers: list[nn.Module], stop: nn.Module | None, train_mode: bool, desc: str) -> None:
        sums = {m: [0, 0.0, 0.0] for m in layers}

        def hook(module, inputs):
            x = inputs[0].detach().double().transpose(0, 1).flatten(1)  # (C, N*H*W)
            acc = sums[module]
            acc[0] += x.shape[1]
            acc[1] = acc[1] + x.sum(1)
            acc[2] = acc[2] + (x * x).sum(1)
            if module is stop:
                raise _Stop

        handles = [m.register_forward_pre_hook(hook) for m in layers]
        try:
            model.train(train_mode)
            for batch in _progress(loader, progress, desc):
                try:
                    model(images(batch))
                except _Stop:
                    pass
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        for m, (n, s1, s2) in sums.items():
            if n < 2:
                raise ValueError(
                    "AdaBN needs at least two values per channel; the loader was empty"
                )
            mean = s1 / n
            var = (s2 - n * mean * mean) / (n - 1)
            m.running_mean.copy_(mean.to(m.running_mean.dtype))
            m.running_var.copy_(var.clamp_min(0).to(m.running_var.dtype))
            if m in tracked:
                m.num_batches_tracked.copy_(tracked[m])

    if not exact:
        run(bns, None, train_mode=True, desc="AdaBN")
        return model
    # The order the forward pass calls the layers in, read from one eval-mode batch.
    order: list[nn.Module] = []
    handles = [
        m.register_forward_pre_hook(lambda mod, _: order.append(mod) if mod not in order else None)
        for m in bns
    ]
    try:
        model.eval()
        first = next(iter(loader), None)
        if first is None:
            raise ValueError("AdaBN needs at least two values per channel; the loader was empty")
        model(images(first))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for i, layer in enumerate(order):  # a layer the forward never calls keeps its statistics
        run([layer], layer, train_mode=False, desc=f"AdaBN {i + 1}/{len(order)}")
    return model


def clean_target_loader(cfg: C.Config, rt: Runtime | None = None, target=None) -> DataLoader:
    """The target's training images with the test transform (no augmentation, no labels
    used), in file order: what AdaBN re-estimates the BatchNorm statistics on. ``target``:
    the data set when the caller has already read it (else it is read here)."""
    rt = rt or make_runtime(cfg)
    tf = D.transforms.test_transform(cfg.data.height, cfg.data.width)
    records = target_train(cfg, target if target is not None else target_dataset(cfg))
    return _eval_loader(D.ImageDataset(records, tf), 2 * cfg.adapt.batch_size, rt, cfg)


# --------------------------------------------------------------------------- adaptation


def _adapt_optimizer(model: nn.Module, a: C.AdaptConfig) -> torch.optim.Optimizer:
    # The patch generator is frozen and the embedding weights are not updated (docs/paper.md):
    # both are left out of the optimiser.
    groups = model.param_groups()
    params = list(groups["backbone"]) + list(groups["new"])
    return torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)


MEMORY_INITS = C.MEMORY_INITS


@torch.no_grad()
def init_memories(
    model: nn.Module,
    dataset,
    rt: Runtime,
    cfg: C.Config,
    progress: bool = True,
) -> tuple[memory.PatchMemory, memory.ImageMemory]:
    """The memory initialisation pass before the first epoch (docs/paper.md "Unsupervised
    training"): fill the patch memory; leave the image memory empty.

    As the official code runs it (``cfg.adapt.memory_init="train"``, the default): one
    no-grad pass in **train mode** over the shuffled training loader with every view of each
    image (its own shuffle, :data:`INIT_EPOCH`), the patch memory filled from the first
    views. Train mode means the BatchNorm layers normalise with each batch's statistics and
    their running statistics move towards the target's, as in the official pass.
    ``memory_init="eval"`` runs the same pass in eval mode instead (the source model's
    BatchNorm statistics; running statistics unchanged): a named deviation, reported as an
    ablation in docs/results.md.

    The image memory starts with no centre: each centre is created on the image's first
    visit during training as the mean of its views (so on that visit IPFL pulls the views
    towards each other with equal and opposite pulls).
    Under torchrun each rank runs its block of every global batch and the features are
    gathered, so every rank fills the same slots; rank 0's BatchNorm statistics are then
    broadcast.
    """
    m, a = cfg.model, cfg.adapt
    C.check_memory_init(a.memory_init)
    pm = memory.PatchMemory(len(dataset), m.num_patches, m.patch_dim, a.memory_momentum)
    im = memory.ImageMemory(len(dataset), m.num_patches * m.embed_dim, a.memory_momentum)
    pm, im = pm.to(rt.device), im.to(rt.device)
    was_training = model.training
    model.train(a.memory_init == "train")
    loader = _train_loader(dataset, a.batch_size, rt, cfg, INIT_EPOCH, drop_last=False)
    for views, index in _progress(loader, progress, "memory init"):
        b, num = views.shape[:2]
        x = rt.to_device(views.flatten(0, 1))  # image-major, as in training
        with rt.autocast():
            out = model(x)
        first = out.patch_feats.float().view(b, num, *out.patch_feats.shape[1:])[:, 0]
        pm.update(rt.gather(index.to(rt.device)), rt.gather(first))
    ddp.broadcast_buffers(model)
    model.train(was_training)
    return pm, im


def paul_step(
    feats: torch.Tensor,
    emb: torch.Tensor,
    index: torch.Tensor,
    patch_memory: memory.PatchMemory,
    image_memory: memory.ImageMemory,
    a: C.AdaptConfig,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rank: int = 0,
) -> dict[str, torch.Tensor]:
    """What one PAUL step does after the forward pass (docs/paper.md "Unsupervised training"):
    update both memories from the batch, then ``pedal_weight`` x PEDAL + ``ipfl_weight`` x
    IPFL. Training, ``bench/bench_step.py``, ``bench/bench_scaling.py`` and torchrun all call
    this one function; the backward pass and the optimiser step are the caller's.

    Args:
        feats: patch features of every view, image-major (view v of image i at ``i*num + v``).
        emb: image-level features (embeddings) of every view, in the same order.
        index: the batch images' data set indices (this process's images).
        patch_memory, image_memory: updated in place, before the losses (as the official code).
        a: the adaptation settings (weights, PEDAL's scale and k, IPFL's margin and ranking,
            ``num_views``).
        gather: brings every process's tensors before the memories are updated (all-gather
            under torchrun, :attr:`paulkit.runtime.Runtime.gather`); None for one process.
        rank: this process's rank: its images' centres follow those of the ranks before it.

    Returns:
        ``{"loss", "pedal", "ipfl"}``: the weighted total (with gradient) and the two losses
        (a loss whose weight is 0 is not computed and reads 0).

    Shape:
        - feats: (B * num_views, P, D); emb: (B * num_views, E); index: (B,)
    """
    num = a.num_views
    b = index.shape[0]
    if feats.shape[0] != b * num or emb.shape[0] != b * num:
        raise ValueError(
            f"paul_step: {b} indices x {num} views = {b * num} rows expected, got feats "
            f"{tuple(feats.shape)} and emb {tuple(emb.shape)}; pass every view, image-major"
        )
    gather = gather or (lambda x: x)
    feats, emb = feats.float(), emb.float()
    first = feats.view(b, num, *feats.shape[1:])[:, 0]
    # Memories first, before the loss; with several processes `gather` brings every
    # process's batch so that all memories apply the same update.
    every_index = gather(index)
    patch_memory.update(every_index, gather(first.detach()))
    centers = image_memory.update(every_index, gather(emb.detach()), num_views=num)
    zero = torch.zeros((), device=feats.device)
    loss, pedal, ipfl = zero, zero, zero
    if a.pedal_weight:
        pedal = losses.pedal_loss(first, patch_memory.bank, index, a.pedal_scale, a.pedal_k)
        loss = loss + a.pedal_weight * pedal
    if a.ipfl_weight:
        own = rank * b  # this rank's images among the global batch's centres
        ipfl = losses.ipfl_loss(
            emb, centers, num, a.ipfl_margin, a.ipfl_max_iter, a.ipfl_nearest, owner_offset=own
        )
        loss = loss + a.ipfl_weight * ipfl
    return {"loss": loss, "pedal": pedal, "ipfl": ipfl}


class Accumulator:
    """Running sums of an epoch's statistics, reported as means over the batches (d2l's
    ``Accumulator``); ``images_per_s`` is the epoch's throughput."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.batches, self.images, self.t0 = 0, 0, time.perf_counter()

    def add(self, images: int, **values: torch.Tensor | float) -> None:
        for k, v in values.items():
            v = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.batches += 1
        self.images += images

    def mean(self, key: str) -> float:
        return self.sums[key] / max(self.batches, 1)

    def means(self) -> dict[str, float]:
        out = {k: v / max(self.batches, 1) for k, v in self.sums.items()}
        out["images_per_s"] = self.images / max(time.perf_counter() - self.t0, 1e-9)
        return out


def adapt_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    patch_memory: memory.PatchMemory,
    image_memory: memory.ImageMemory,
    rt: Runtime,
    a: C.AdaptConfig,
    progress: bool = True,
    desc: str = "adapt",
) -> dict[str, float]:
    """One epoch of PAUL: the forward pass, :func:`paul_step`, backward and the optimiser
    step for every batch."""
    model.train()
    acc = Accumulator()
    bar = _progress(loader, progress, desc)
    for views, index in bar:
        x = rt.to_device(views.flatten(0, 1))  # image-major: view v of image i at i*num + v
        with rt.autocast():
            out = model(x)
        step = paul_step(
            out.patch_feats,
            out.embedding,
            index.to(rt.device),
            patch_memory,
            image_memory,
            a,
            rt.gather,
            rt.rank,
        )
        optimizer.zero_grad(set_to_none=True)
        _backward_step(step["loss"], optimizer, rt)
        acc.add(views.shape[0], **step)
        if progress:
            bar.set_postfix(loss=f"{acc.mean('loss'):.3f}")
    return acc.means()


def _attach_memories(model: nn.Module, pm: memory.PatchMemory, im: memory.ImageMemory) -> None:
    # Plain attributes (not registered submodules): the memories travel with the model for
    # the explorer but stay out of its state_dict (checkpoints store them separately).
    model.__dict__["patch_memory"] = pm
    model.__dict__["image_memory"] = im


def adaptation_model(pretrained: nn.Module | dict, cfg: C.Config) -> nn.Module:
    """The unsupervised-stage PatchNet (no classifier, no ReLU) with pretrained weights."""
    state = pretrained.state_dict() if isinstance(pretrained, nn.Module) else pretrained
    model = build_model(cfg, num_classes=None, pretrain=False, backbone_weights=False)
    models.load_pretrained(model, state)
    return model


def adapt(
    cfg: C.Config,
    pretrained: nn.Module | dict,
    device: str | torch.device | Runtime | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    restart: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Unsupervised PAUL adaptation on the target's training images, without their labels.

    The direct-transfer model (epoch 0) is evaluated first, as the official code does; then
    every ``cfg.adapt.eval_every`` epochs and after the last one. Loss weights of 0 give the
    ablations (PEDAL only: ``ipfl_weight=0``; IPFL only: ``pedal_weight=0``).

    ``checkpoint`` is resumed, refused or locked as in :func:`pretrain`; ``restart`` moves
    it aside first.

    Returns:
        ``(model, history)``; history has per-epoch lists ``epoch``, ``loss``, ``pedal``,
        ``ipfl``, ``lr``, ``images_per_s`` and ``eval``: a list of ``{"epoch": e, **metrics}``.
    """
    C.validate(cfg)
    with _run_folder_lock(checkpoint):
        return _adapt(cfg, pretrained, device, checkpoint, progress, stop_after, restart)


def _adapt(cfg, pretrained, device, checkpoint, progress, stop_after, restart):
    utils.set_seed(cfg.seed, cfg.deterministic)
    rt = make_runtime(cfg, device)
    a = cfg.adapt
    ddp.local_batch(a.batch_size, rt.world_size, "adapt.batch_size")  # before any work
    progress = progress and rt.rank == 0
    target = target_dataset(cfg)
    # Adaptation reads only the images of target.train: MultiViewDataset never yields a pid.
    train_set = D.MultiViewDataset(
        target_train(cfg, target),
        D.transforms.train_transform(cfg.data.height, cfg.data.width),
        D.transforms.pseudo_pair_transform(cfg.data.height, cfg.data.width),
        num_views=a.num_views,
    )
    _check_batch(len(train_set), a.batch_size, rt.world_size, a.drop_last, "adapt.batch_size")
    model = adaptation_model(pretrained, cfg).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _adapt_optimizer(model, a)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for p in model.parameters():  # frozen: no gradient is computed for them at all
        if id(p) not in trained:
            p.requires_grad_(False)
    net = ddp.wrap(model, rt, cfg.sync_bn)  # DistributedDataParallel under torchrun
    history: dict[str, Any] = {k: [] for k in ("epoch", "loss", "pedal", "ipfl", "lr")}
    history["images_per_s"], history["eval"] = [], []
    every = a.eval_every
    state = _try_resume(checkpoint, cfg, "adapt", restart)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start = state["history"], state["epoch"]
        mom = a.memory_momentum
        pm = memory.PatchMemory(len(train_set), cfg.model.num_patches, cfg.model.patch_dim, mom)
        im = memory.ImageMemory(len(train_set), cfg.model.num_patches * cfg.model.embed_dim, mom)
        pm.load_state_dict(state["patch_memory"])
        im.load_state_dict(state["image_memory"])
        pm, im = pm.to(rt.device), im.to(rt.device)
    else:
        start = 0
        if every:
            history["eval"].append({"epoch": 0, **evaluate_model(model, target, cfg, rt, progress)})
        pm, im = init_memories(model, train_set, rt, cfg, progress)
    for epoch in range(start, a.epochs):
        if stop_after is not None and epoch >= stop_after:
            break
        _seed_epoch(cfg, epoch)
        lr = a.lr * (0.1 if epoch >= a.lr_step else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loader = _train_loader(train_set, a.batch_size, rt, cfg, epoch, a.drop_last)
        stats = adapt_epoch(
            net, loader, optimizer, pm, im, rt, a, progress, f"adapt {epoch + 1}/{a.epochs}"
        )
        stats = ddp.average_stats(stats, rt)
        ddp.broadcast_buffers(model)  # rank 0's BatchNorm statistics on every rank
        if a.final_adabn and epoch + 1 == a.epochs:  # "PAUL + AdaBN" (not in the paper)
            adapt_batchnorm(model, clean_target_loader(cfg, rt, target), rt.device, progress)
        history["epoch"].append(epoch + 1)
        history["lr"].append(lr)
        for k in ("loss", "pedal", "ipfl", "images_per_s"):
            history[k].append(stats[k])
        if every and ((epoch + 1) % every == 0 or epoch + 1 == a.epochs):
            history["eval"].append(
                {"epoch": epoch + 1, **evaluate_model(model, target, cfg, rt, progress)}
            )
        if checkpoint is not None and rt.rank == 0:
            _save(checkpoint, cfg, "adapt", epoch + 1, model, optimizer, history, None, pm, im)
    _attach_memories(model, pm, im)  # for the explorer; plain attributes, not in state_dict
    ddp.barrier(rt)
    return model, history


# --------------------------------------------------------------------------- evaluation


def evaluate_model(
    model: nn.Module,
    target,
    cfg: C.Config,
    rt: Runtime | str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Rank-1/5/10, mAP (step and trapezoid) and mINP on the target's query/gallery.

    One path for one process and for torchrun: each rank extracts its shard of the query and
    the gallery, rank 0 evaluates (:func:`paulkit.distributed.evaluate_sharded`; with one
    process the shard is the whole set)."""
    rt = make_runtime(cfg, rt)
    tf = D.transforms.test_transform(cfg.data.height, cfg.data.width)
    qs, gs = D.ImageDataset(target.query, tf), D.ImageDataset(target.gallery, tf)
    w, show = cfg.data.num_workers, progress and rt.rank == 0
    return ddp.evaluate_sharded(model, qs, gs, rt, 128, w, show)


# --------------------------------------------------------------------------- checkpoints


# What a phase's checkpoint depends on. Left out on purpose: where the data lives
# (data.root: a path, the same data set anywhere), how it is read (data.num_workers: the
# random streams are keyed by seed, epoch and item, so workers change nothing), when the
# model is evaluated (adapt.eval_every), runtime switches (amp, channels_last, sync_bn,
# cpu_threads), and the phase's own number of epochs: more epochs continue a checkpoint;
# fewer than it holds are refused (see train_or_load).
_NOT_HASHED = {
    "name",
    "data.root",
    "data.num_workers",
    "data.source",
    "data.target",
    "data.synth_size",
    "data.synth_seed",
    "adapt.eval_every",
    "amp",
    "channels_last",
    "sync_bn",
    "cpu_threads",
}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in ("data", "model", "pretrain", "adapt"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


_FINGERPRINTS: dict[tuple[str, str], dict[str, Any]] = {}


def data_identity(cfg: C.Config, role: str) -> dict[str, Any]:
    """What identifies the data set ``role`` ("source" or "target") reads, wherever it lives.

    Synthetic data: the generator's version, the domain's knobs (digest), size and data
    seed. A real data set: its name and a fingerprint of its training split (image and
    identity counts and a hash of the sorted file names), never its path, so moving the
    folder, a trailing slash or ``--data`` versus ``PAULKIT_DATA`` change nothing.
    """
    name = cfg.data.source if role == "source" else cfg.data.target
    if name == "synth":
        return {
            "name": "synth",
            "generator": D.synth.GENERATOR_VERSION,
            "knobs": D.synth.DOMAINS[role].digest(),
            "preset": cfg.data.synth_size,  # the size, under its old name: same hashes
            "seed": cfg.data.synth_seed,
        }
    key = (name, str(paths.data_root(cfg.data.root).resolve()))
    if key not in _FINGERPRINTS:
        ds = _dataset(name, cfg.data.root, cfg, role)
        names = sorted(Path(r.path).name for r in ds.train)
        digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
        _FINGERPRINTS[key] = {
            "name": ds.name,
            "train_images": len(ds.train),
            "train_ids": ds.num_train_pids,
            "files": digest,
        }
    return dict(_FINGERPRINTS[key])


def phase_settings(cfg: C.Config, phase: str) -> dict[str, Any]:
    """The settings that define the model a phase produces, as flat ``key: value`` pairs
    (what :func:`phase_hash` hashes and what a checkpoint stores to name differences).

    Pretraining reads the source data set, the oracle the target's, adaptation both (and
    depends on the whole pretraining, its epochs included). With ``adapt.final_adabn`` the
    last epoch differs from the others, so ``adapt.epochs`` is part of adaptation's settings.
    """
    flat = _flatten(C.config_to_dict(cfg))
    sections = ("data.", "model.", "pretrain.") + (("adapt.",) if phase == "adapt" else ())
    keep = {
        k: v
        for k, v in flat.items()
        if (k.startswith(sections) or k in ("seed", "deterministic")) and k not in _NOT_HASHED
    }
    if phase in ("pretrain", "oracle"):
        keep.pop("pretrain.epochs")
    elif not cfg.adapt.final_adabn:
        keep.pop("adapt.epochs")
    roles = {"pretrain": ["source"], "oracle": ["target"]}.get(phase, ["source", "target"])
    for role in roles:
        keep[f"data.{role}"] = data_identity(cfg, role)
    keep["phase"] = phase
    return keep


def phase_hash(cfg: C.Config, phase: str) -> str:
    """Hash of :func:`phase_settings`: a checkpoint is reused only when it matches.

    With the embedded synthetic data it covers the generator's version and the knobs of the
    domains the phase reads (source for pretraining, target for the oracle, both for
    adaptation), so a checkpoint trained on other synthetic data is never reused.
    """
    return C.config_hash(phase_settings(cfg, phase))


def _legacy_phase_hash(cfg: C.Config, phase: str) -> str:
    # The hash of paulkit 9947c09 and before (whole data section, epochs, eval cadence), so
    # that checkpoints written then, which do not store their settings, are still recognised.
    d = C.hashed_dict(cfg)  # the keys under their names of then
    keep = {"data", "model", "pretrain", "seed", "deterministic"}
    if phase == "adapt":
        keep |= {"adapt"}
    d = {k: v for k, v in d.items() if k in keep}
    roles = {"pretrain": ["source"], "oracle": ["target"]}.get(phase, ["source", "target"])
    names = {"source": cfg.data.source, "target": cfg.data.target}
    synthetic = [r for r in roles if names[r] == "synth"]
    if synthetic:
        d["synth"] = [D.synth.GENERATOR_VERSION] + [D.synth.DOMAINS[r].digest() for r in synthetic]
    return C.config_hash(d)


def _epochs(cfg: C.Config, phase: str) -> tuple[int, str]:
    if phase == "adapt":
        return cfg.adapt.epochs, "adapt.epochs"
    return cfg.pretrain.epochs, "pretrain.epochs"


def _short(v: Any) -> str:
    text = repr(v) if not isinstance(v, dict) else "{" + ", ".join(f"{k}={v[k]}" for k in v) + "}"
    return text if len(text) <= 60 else text[:57] + "..."


class CheckpointMismatch(utils.CheckpointError):
    """A checkpoint that belongs to other settings (or more epochs); it is never deleted."""


def _choices(path: Path) -> str:
    return (
        f"use another --out (out=...) to keep both, or --restart (restart=True) to move "
        f"{path.name} aside to {path.name}.old-<time> and train again; nothing is deleted"
    )


def check_checkpoint(state: dict, cfg: C.Config, phase: str, path: str | Path) -> None:
    """Raise :class:`CheckpointMismatch` unless the checkpoint at ``path`` (already read as
    ``state``) can be resumed or loaded for ``cfg``'s ``phase``. The message names the keys
    that differ and the choices."""
    path = Path(path)
    if state.get("phase") != phase:
        raise CheckpointMismatch(
            f"{path} holds a {state.get('phase')!r} checkpoint, not {phase!r}; " + _choices(path)
        )
    stored = state.get("settings")
    if stored is None:  # written by an older paulkit: only its hash is known
        if state.get("config_hash") != _legacy_phase_hash(cfg, phase):
            raise CheckpointMismatch(
                f"{path} was written by an older paulkit for other settings (it stores no "
                "settings to compare key by key); " + _choices(path)
            )
    else:
        want = phase_settings(cfg, phase)
        keys = sorted(set(stored) | set(want))
        diff = [k for k in keys if stored.get(k) != want.get(k)]
        if diff:
            shown = "; ".join(
                f"{k}: {_short(stored.get(k))} in the checkpoint, {_short(want.get(k))} now"
                for k in diff[:4]
            )
            more = f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""
            raise CheckpointMismatch(
                f"{path} was trained with other settings: {shown}{more}; " + _choices(path)
            )
    epochs, key = _epochs(cfg, phase)
    if state["epoch"] > epochs:
        raise CheckpointMismatch(
            f"{path} holds {state['epoch']} epochs, more than {key}={epochs} asks for; set "
            f"{key}={state['epoch']} to use it, or " + _choices(path)
        )


def _save(path, cfg, phase, epoch, model, optimizer, history, num_classes, pm=None, im=None):
    state = {
        "format": CHECKPOINT_FORMAT,
        "phase": phase,
        "config": C.config_to_dict(cfg),
        "settings": phase_settings(cfg, phase),
        "config_hash": phase_hash(cfg, phase),
        "epoch": epoch,
        "num_classes": num_classes,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": history,
        "rng": {"torch": torch.get_rng_state()},
    }
    if pm is not None:
        state["patch_memory"] = pm.state_dict()
        state["image_memory"] = im.state_dict()
    utils.atomic_save(state, path)


def _check(state: Any, path: Path) -> dict:
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise utils.CheckpointError(
            f"{path} is not a paulkit checkpoint (no '{CHECKPOINT_FORMAT}' format tag); point "
            "at a file written by paulkit.train, or move it away (--restart does) to train again"
        )
    return state


def _try_resume(checkpoint, cfg: C.Config, phase: str, restart: bool = False) -> dict | None:
    """The checkpoint's state to resume from; None to start afresh (no file, or ``restart``,
    which first moves the file aside). A checkpoint of other settings is refused, never
    overwritten."""
    if checkpoint is None or not (Path(checkpoint).exists() or Path(checkpoint).is_symlink()):
        return None
    if restart:
        if env_rank() == 0:
            moved = utils.move_aside(checkpoint)
            print(f"--restart: moved {paths.shown_path(checkpoint)} aside to {moved.name}")
        ddp.barrier()
        return None
    state = _check(utils.load_checkpoint(checkpoint), Path(checkpoint))
    check_checkpoint(state, cfg, phase, checkpoint)
    return state


def _run_folder_lock(checkpoint):
    if checkpoint is None:
        return contextlib.nullcontext()
    return utils.run_lock(Path(checkpoint).parent, enabled=env_rank() == 0)


def _check_batch(n: int, batch_size: int, world_size: int, drop_last: bool, key: str) -> None:
    if batch_size > n and drop_last:
        raise ValueError(
            f"{key}={batch_size} is larger than the {n} training images: every batch would be "
            f"dropped and nothing trained; lower {key} (or raise data.limit_train)"
        )
    if world_size > 1 and n < world_size:
        raise ValueError(f"{n} training images cannot feed {world_size} processes")


def checkpoint_path(
    cfg: C.Config, phase: str, tag: str = "", out: str | Path | None = None
) -> Path:
    """Where :func:`train_or_load` keeps a phase's checkpoint for this preset and seed."""
    root = Path(out) if out is not None else paths.output_root()
    suffix = f"-{tag}" if tag else ""
    run = f"seed{cfg.seed}"
    if cfg.data.synth_seed and "synth" in (cfg.data.source, cfg.data.target):
        run = f"data{cfg.data.synth_seed}-{run}"  # a held-out synthetic draw
    return root / cfg.name / run / f"{phase}{suffix}.pt"


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model stored in a paulkit checkpoint; returns ``(model, checkpoint)``."""
    path = Path(path)
    state = _check(utils.load_checkpoint(path), path)
    cfg = C.config_from_dict(state["config"])
    if state["phase"] == "adapt":
        model = build_model(cfg, None, pretrain=False, backbone_weights=False)
    else:
        model = build_model(cfg, state["num_classes"], pretrain=True, backbone_weights=False)
    models.load_pretrained(model, state["model"])
    model = model.to(device)
    if "patch_memory" in state:
        n = state["patch_memory"]["bank"].shape[0]
        pm = memory.PatchMemory(n, cfg.model.num_patches, cfg.model.patch_dim)
        im = memory.ImageMemory(n, cfg.model.num_patches * cfg.model.embed_dim)
        pm.load_state_dict(state["patch_memory"])
        im.load_state_dict(state["image_memory"])
        _attach_memories(model, pm.to(device), im.to(device))
    return model, state


def train_or_load(
    cfg: C.Config,
    phase: str = "adapt",
    tag: str = "",
    device: str | torch.device | Runtime | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    pretrained: nn.Module | None = None,
    restart: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a finished checkpoint of ``phase`` whose settings match; else train (resuming a
    partial one).

    ``phase`` is ``"pretrain"``, ``"oracle"`` (supervised on the target's labels: the
    reference row only) or ``"adapt"`` (which first gets its pretrained model the same way).

    What paulkit promises about the checkpoint (docs/reliability.md):

    - it is reused when :func:`phase_settings` match: the data set's identity, not its
      path; not ``data.num_workers`` nor ``adapt.eval_every``;
    - more epochs than it holds continue it; fewer are refused (the key is named);
    - one that belongs to other settings is refused with :class:`CheckpointMismatch`, which
      names the differing keys; it is **never deleted**. ``restart=True`` (``--restart``)
      moves this phase's file aside (``<name>.old-<time>``) and trains again; for the
      pretraining that adaptation needs, a mismatching file is moved aside too, a matching
      one is reused;
    - the run folder is locked while this runs (:func:`paulkit.utils.run_lock`): a second
      process writing there is refused with the holder's PID.
    """
    if phase not in ("pretrain", "oracle", "adapt"):
        raise ValueError(f"phase must be 'pretrain', 'oracle' or 'adapt', got {phase!r}")
    C.validate(cfg)
    path = checkpoint_path(cfg, phase, tag, out)
    with _run_folder_lock(path):
        return _train_or_load(cfg, phase, path, device, out, progress, pretrained, restart)


def _train_or_load(cfg, phase, path, device, out, progress, pretrained, restart):
    epochs, _ = _epochs(cfg, phase)
    rt = make_runtime(cfg, device)  # built once here unless the command passed its own
    if path.exists() and not restart:
        state = _check(utils.load_checkpoint(path), path)
        check_checkpoint(state, cfg, phase, path)
        if state["epoch"] >= epochs:
            model, _ = load_model(path, rt.device)
            print(f"loaded {phase} checkpoint {paths.shown_path(path)} (epoch {state['epoch']})")
            return model, state["history"]
        print(
            f"resuming {phase} from {paths.shown_path(path)} at epoch {state['epoch']} of {epochs}"
        )
    if phase in ("pretrain", "oracle"):
        return pretrain(
            cfg, rt, path, use_target_labels=phase == "oracle", progress=progress, restart=restart
        )
    if pretrained is None:
        try:
            pretrained, _ = train_or_load(cfg, "pretrain", device=rt, out=out, progress=progress)
        except CheckpointMismatch:
            if not restart:
                raise
            pretrained, _ = train_or_load(
                cfg, "pretrain", device=rt, out=out, progress=progress, restart=True
            )
    return adapt(cfg, pretrained, rt, path, progress=progress, restart=restart)
