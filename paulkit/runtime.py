"""Where a run happens, chosen once per command: the device, its speed switches (AMP,
channels_last, pinned memory) and, under ``torchrun``, the process group.

- :func:`select_device`: the one place paulkit chooses a device.
- :class:`Runtime` and :func:`make_runtime`: everything that depends on the device; a command
  builds one and passes it down (functions that take ``device`` also take a ``Runtime``).
- :func:`launched`, :func:`setup`, :func:`shutdown`, :func:`env_rank`,
  :func:`quiet_other_ranks`: the torchrun set-up. ``torchrun`` starts one process per GPU (or
  per CPU slot) and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
  ``MASTER_PORT``; :func:`make_runtime` sees them and joins the group. A plain
  ``python -m paulkit adapt`` sees none of them and is one process: the same code paths
  with one rank (the collectives of :mod:`paulkit.distributed` are then the identity).

Taught in: notebooks/06_gpu_training.ipynb (docs/scaling.md for several processes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from paulkit import distributed as ddp

if TYPE_CHECKING:  # the presets are data; the runtime reads four of their switches
    from paulkit.config import Config

__all__ = [
    "select_device",
    "Runtime",
    "make_runtime",
    "launched",
    "setup",
    "shutdown",
    "env_rank",
    "quiet_other_ranks",
]


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The one place paulkit chooses a device: the argument, else ``PAULKIT_DEVICE``,
    else CUDA, then Apple MPS, then the CPU."""
    choice = device if device is not None else os.environ.get("PAULKIT_DEVICE")
    if choice is not None:
        try:
            dev = torch.device(choice)
        except RuntimeError:
            raise ValueError(
                f"device {choice!r} is not a device; use cpu, cuda, cuda:1 or mps"
            ) from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {choice!r} asked for, but CUDA is not available here")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {choice!r} asked for, but Apple MPS is not available here")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# --------------------------------------------------------------------------- torchrun


_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK`` are all set)."""
    return all(k in os.environ for k in _ENV)


def env_rank() -> int:
    """This process's rank from the environment (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def setup(device: str | torch.device | None = None) -> tuple[torch.device, int, int]:
    """Join the process group torchrun describes; returns ``(device, rank, world_size)``.

    The device: ``LOCAL_RANK``'s GPU with NCCL when CUDA is available and ``device`` is None
    or a CUDA device (the index, if any, is replaced by ``LOCAL_RANK``: one GPU per process);
    the CPU with gloo when ``device`` is ``"cpu"`` or there is no GPU. Joining twice (several
    phases in one process) reuses the group.

    Raises:
        ValueError: not launched by torchrun, or a device torch.distributed cannot use (MPS).
    """
    if not launched():
        raise ValueError(
            "paulkit.runtime.setup: RANK, WORLD_SIZE and LOCAL_RANK are not set; start the "
            "command with torchrun (e.g. torchrun --nproc_per_node=2 -m paulkit adapt ...)"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    want = torch.device(device) if device is not None else None
    if want is not None and want.type not in ("cpu", "cuda"):
        raise ValueError(
            f"device={str(want)!r}: several processes run on CUDA (NCCL) or the CPU (gloo); "
            "pass --device cuda or --device cpu"
        )
    if (want is None or want.type == "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} "
                "GPU(s): start at most that many processes per node (--nproc_per_node)"
            )
        dev, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(dev)
    else:
        if want is not None and want.type == "cuda":
            raise ValueError("device='cuda' but CUDA is not available; pass --device cpu")
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        seconds = float(os.environ.get("PAULKIT_DDP_TIMEOUT", "600"))
        try:
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=seconds))
        except (RuntimeError, dist.DistStoreError) as exc:  # the peers never came
            world = os.environ.get("WORLD_SIZE", "?")
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise RuntimeError(
                f"rank {os.environ.get('RANK', '?')} of {world}: the other processes did not "
                f"join at {where} within {seconds:.0f} s ({type(exc).__name__}); start every "
                "rank (torchrun --nproc_per_node=N starts them together) or raise "
                "PAULKIT_DDP_TIMEOUT"
            ) from None
    return dev, dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    """Leave the process group (at the end of a command); nothing when there is none."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def quiet_other_ranks() -> None:
    """Under torchrun, send the standard output of every rank but 0 to ``os.devnull``
    (errors still reach stderr): one process speaks for the job."""
    if env_rank() > 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


# --------------------------------------------------------------------------- runtime


@dataclasses.dataclass
class Runtime:
    """Everything that depends on the device, chosen in one place (:func:`make_runtime`).

    ``gather`` is how a batch's tensors reach every process before the memories are updated:
    the identity for one process, an all-gather under torchrun (``rank`` of ``world_size``
    processes; :mod:`paulkit.distributed`, docs/scaling.md).
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False
    pin_memory: bool = False
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
    rank: int = 0
    world_size: int = 1

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=self.pin_memory)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def make_runtime(
    cfg: Config, device: str | torch.device | Runtime | None = None, distributed: bool | None = None
) -> Runtime:
    """Pick the device (CUDA, then MPS, then CPU, or ``device``) and its speed switches.

    On CUDA: bf16 autocast where supported, else fp16 with a gradient scaler;
    channels_last; pinned memory; ``cudnn.benchmark`` (unless deterministic). On the CPU, in
    one process: ``torch.set_num_threads(cfg.cpu_threads)`` (unless 0), since the thread
    count changes a CPU run's numbers in their last bits and DBSCAN or a long training
    makes those bits visible.

    Under torchrun (``distributed=None`` and RANK/WORLD_SIZE/LOCAL_RANK set, or ``True``)
    the process joins the group: NCCL on LOCAL_RANK's GPU, gloo on the CPU (:func:`setup`),
    and ``gather`` becomes an all-gather.

    A command builds its runtime once and passes it down: every paulkit function that takes
    ``device`` also takes a ``Runtime``, which is returned here as it is.
    """
    if isinstance(device, Runtime):  # built once per command and passed down
        return device
    joined = launched() if distributed is None else distributed
    if joined:
        dev, rank, world = setup(device)
    else:
        dev, rank, world = select_device(device), 0, 1
    rt = Runtime(device=dev, rank=rank, world_size=world)
    if world > 1:
        rt.gather = ddp.all_gather_cat
    if dev.type == "cpu" and world == 1 and cfg.cpu_threads > 0:
        # A CPU result depends on the thread count bit for bit: the run fixes it (cfg).
        # Under torchrun each rank keeps its own (docs/scaling.md sets OMP_NUM_THREADS).
        torch.set_num_threads(cfg.cpu_threads)
    if dev.type == "cuda":
        rt.pin_memory = True
        rt.channels_last = cfg.channels_last
        if not cfg.deterministic:
            torch.backends.cudnn.benchmark = True
        if cfg.amp:
            if torch.cuda.is_bf16_supported():
                rt.amp_dtype = torch.bfloat16
            else:
                rt.amp_dtype = torch.float16
                rt.scaler = torch.amp.GradScaler("cuda")
    return rt
