"""Scale-out: PAUL on several processes with ``torchrun`` and DistributedDataParallel.

paulkit uses PyTorch's own engine, nothing home-made: ``torchrun`` starts one process per
GPU (or per CPU slot) and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`paulkit.runtime.make_runtime` sees them and joins the process group
(NCCL on CUDA with ``LOCAL_RANK``'s GPU, gloo on the CPU). A plain ``python -m paulkit adapt``
sees none of them and is one process without a group: the same code paths with one rank, for
which every function here is the identity (or the plain one-process pass).

How PAUL stays exact (docs/scaling.md):

- The preset's batch stays the *global* batch: each of the W ranks takes its block of
  ``batch / W`` images (:func:`local_batch`, :func:`rank_blocks`) of every batch of the
  one-process shuffle, which ``paulkit.train`` draws from the run's seed alone, so the ranks'
  batches of a step together are exactly the images one process would have taken, and an
  epoch visits every image once.
- Every rank holds the whole patch memory (N, P, D) and image memory (N, E). At each step
  the batch's indices, first-view patch features and image-level features are all-gathered
  (:func:`all_gather_cat`) and every rank applies the same update in the same order, so the
  memories stay bit-identical without further synchronisation.
- PEDAL runs per rank for its own images against the whole updated bank; IPFL's negatives
  are the gathered centres of the whole global batch (``ipfl_loss(..., owner_offset=)``).
  Gradients flow through each rank's own views only and DDP averages them, which is the
  gradient of the one-process loss (both losses are means over equal shares).
- The memory initialisation pass runs over the global batches like an epoch (features
  gathered); feature extraction for evaluation is sharded over the ranks and gathered
  (:func:`map_shards`); rank 0 evaluates and sends the result to all.
- Each image's augmentation is drawn from (seed, epoch, image) alone, so a rank draws for
  its images exactly what one process would.

Not equivalent to one process: BatchNorm's batch statistics (per rank unless
``Config.sync_bn``).

Taught in: notebooks/06_gpu_training.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

__all__ = [
    "local_batch",
    "rank_blocks",
    "shard_bounds",
    "all_gather_cat",
    "all_gather_uneven",
    "map_shards",
    "evaluate_sharded",
    "wrap",
    "average_stats",
    "broadcast_buffers",
    "broadcast_object",
    "barrier",
]


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier(rt: Any = None) -> None:
    """Wait for every rank (nothing for one process)."""
    if _world() > 1:
        dev = getattr(rt, "device", None)
        if dev is not None and dev.type == "cuda" and dist.get_backend() == "nccl":
            dist.barrier(device_ids=[dev.index])
        else:
            dist.barrier()


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Rank ``src``'s buffers (BatchNorm running statistics) on every rank.

    With per-rank BatchNorm each rank's running statistics follow its own batches (DDP
    copies rank 0's before each forward, not after the last one); paulkit calls this after
    every epoch and before every sharded pass, so all ranks hold what rank 0 saves.
    """
    if _world() > 1:
        for b in model.buffers():
            dist.broadcast(b, src=src)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable object on every rank (``obj`` itself for one process)."""
    if _world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# --------------------------------------------------------------------------- data


def local_batch(batch_size: int, world_size: int, name: str = "batch_size") -> int:
    """Each rank's share of the global batch: ``batch_size / world_size``.

    Raises:
        ValueError: the batch does not divide by the number of processes.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        raise ValueError(
            f"{name} = {batch_size} does not divide by the {world_size} processes: each rank "
            f"takes {name} / WORLD_SIZE images of the global batch; use a multiple of "
            f"{world_size} (e.g. --set {name}={lower or world_size}) or another process count"
        )
    return batch_size // world_size


def rank_blocks(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """Rank ``rank``'s block of each global batch of the one-process loader.

    Step k's images over all ranks are the one-process batch k (``paulkit.train`` draws the
    batches from the run's seed alone), so every image is visited at most once an epoch. A
    last partial batch of r images keeps its first ``world_size * (r // world_size)`` (every
    rank takes the same number of images, as DDP's gradient average assumes); with
    ``r < world_size`` it is left out.
    """
    out = []
    for batch in batches:
        local = len(batch) // world_size
        if local:
            out.append(batch[rank * local : (rank + 1) * local])
    return out


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of rank's contiguous block of ``n`` items; the blocks, in rank
    order, are ``0..n-1`` in order (sizes differ by at most one)."""
    if n < world_size:
        raise ValueError(
            f"{n} item(s) cannot be shared by {world_size} processes; use fewer processes"
        )
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return start, start + per + (rank < extra)


# --------------------------------------------------------------------------- collectives


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order (same shape on all ranks).

    This is ``Runtime.gather`` under torchrun: the batch's indices and features reach every
    process before the memories are updated. No gradient flows through it.

    Shape:
        (b, ...) on each rank -> (W*b, ...)
    """
    if _world() == 1:
        return x
    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(_world())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


def all_gather_uneven(x: torch.Tensor) -> torch.Tensor:
    """:func:`all_gather_cat` for blocks whose first dimension differs between ranks
    (shards of a data set): the sizes are exchanged first and the blocks padded.

    Shape:
        (n_r, ...) on rank r -> (sum_r n_r, ...)
    """
    world = _world()
    if world == 1:
        return x
    x = x.detach().contiguous()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    pad = x.new_zeros((max(counts), *x.shape[1:]))
    pad[: x.shape[0]] = x
    parts = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(parts, pad)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def average_stats(stats: dict[str, float], rt: Any) -> dict[str, float]:
    """An epoch's per-rank statistics made global: the mean over ranks (each rank's value
    is a mean over an equal share, so this is the one-process mean), ``images_per_s`` summed."""
    if getattr(rt, "world_size", 1) == 1:
        return stats
    keys = sorted(stats)
    t = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    out = {k: float(v) / rt.world_size for k, v in zip(keys, t.tolist())}
    if "images_per_s" in out:
        out["images_per_s"] *= rt.world_size
    return out


# --------------------------------------------------------------------------- sharded passes


def map_shards(
    fn: Callable[[Any], Sequence[torch.Tensor]],
    dataset,
    batch_size: int,
    rt: Any,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "shard",
) -> list[torch.Tensor]:
    """Run ``fn`` over this rank's contiguous block of ``dataset`` and gather the results.

    ``fn(batch)`` returns a tuple of tensors with the batch in dim 0; each is concatenated
    over the rank's batches, then over the ranks in rank order (:func:`all_gather_uneven`),
    so row i of every result belongs to item i of ``dataset``, as one process would give.

    Returns:
        The gathered tensors, on ``rt.device``, identical on every rank.
    """
    start, stop = shard_bounds(len(dataset), rt.rank, rt.world_size)
    loader = DataLoader(
        Subset(dataset, range(start, stop)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=rt.pin_memory,
    )
    cols: list[list[torch.Tensor]] = []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        out = fn(batch)
        cols = cols or [[] for _ in out]
        for col, t in zip(cols, out):
            col.append(t.to(rt.device))
    return [all_gather_uneven(torch.cat(col)) for col in cols]


def evaluate_sharded(
    model: nn.Module,
    query,
    gallery,
    rt: Any,
    batch_size: int = 128,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Sharded feature extraction, gathered; rank 0 evaluates and every rank gets its result.

    Args:
        model: the network (not the DDP wrapper); runs ``descriptor`` in eval mode.
        query, gallery: ``paulkit.data.ImageDataset`` s of the target's query and gallery.
        rt: the runtime (``paulkit.runtime.Runtime``) with ``rank``/``world_size``.

    Returns:
        ``RankResult.as_dict()`` of :func:`paulkit.evaluation.evaluate_features`.
    """
    from paulkit import evaluation

    def fn(batch):
        f, pids, camids, _ = evaluation.extract_features(model, [batch], rt.device, False)
        return f, pids, camids

    def extract(dataset):
        return map_shards(fn, dataset, batch_size, rt, num_workers, progress, "features")

    broadcast_buffers(model)  # every shard seen through rank 0's model
    (qf, q_pids, q_camids), (gf, g_pids, g_camids) = extract(query), extract(gallery)
    res = None
    if rt.rank == 0:
        args = [t.cpu() for t in (qf, gf, q_pids, g_pids, q_camids, g_camids)]
        res = evaluation.evaluate_features(*args).as_dict()
    return broadcast_object(res)


# --------------------------------------------------------------------------- model


def wrap(model: nn.Module, rt: Any, sync_bn: bool = False) -> nn.Module:
    """The module the training loop calls: ``model`` itself for one process, else
    ``DistributedDataParallel(model)`` (gradients averaged over the ranks).

    Parameters that do not require gradients (PAUL's frozen patch generator and embedding
    layers: :func:`paulkit.train.adapt` freezes what its optimiser does not train) are
    neither waited for nor sent by DDP; ``sync_bn`` converts the BatchNorm layers to ``SyncBatchNorm`` (CUDA only). Weights,
    state-dict keys and the optimiser's parameters stay those of ``model``: checkpoints are
    written from ``model`` and load in any number of processes.
    """
    if rt.world_size == 1:
        return model
    if sync_bn:
        if rt.device.type != "cuda":
            raise ValueError(
                "sync_bn=True: torch's SyncBatchNorm runs on CUDA only; on the CPU (gloo) "
                "leave it off (per-rank BatchNorm statistics)"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
