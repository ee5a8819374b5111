"""Small shared helpers: seeds, atomic writes, safe loads, and the lock that keeps one run per
output folder. Where a run happens (device, process group) is :mod:`paulkit.runtime`."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:  # POSIX; on Windows run folders are not locked (run_lock says so)
    import fcntl
except ImportError:  # pragma: no cover - not on the tested platforms
    fcntl = None

__all__ = [
    "set_seed",
    "atomic_save",
    "atomic_write_text",
    "load_checkpoint",
    "CheckpointError",
    "RunLockError",
    "run_lock",
    "move_aside",
    "check_writable",
]


def set_seed(seed: int, deterministic: bool = False, cuda: bool = True) -> None:
    """Seed Python's, NumPy's and torch's generators: the one seed helper of paulkit.

    ``deterministic`` also asks torch for deterministic kernels. ``cuda=False`` seeds only
    torch's CPU generator (in DataLoader workers, which must not touch CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if cuda:
        torch.manual_seed(seed)
    else:
        torch.random.default_generator.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _atomic(path: str | os.PathLike, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); a finished file gets the mode any other new
        # file would (0666 less the umask), so a shared output folder stays readable.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash loses nothing."""
    return _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write text atomically (temporary file + rename)."""
    return _atomic(path, lambda f: f.write(text.encode("utf-8")))


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, foreign or mismatched."""


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(..., weights_only=True)`` with errors that say what is wrong (one line,
    and never torch's advice to load with ``weights_only=False``: that runs arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes; a copy or a disk that filled up?): move it "
            "away (or pass --restart, which does) and train again"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle of foreign objects, random bytes
        lines = str(exc).strip().splitlines()
        detail = lines[0] if lines else ""
        if "weights_only" in detail or "Weights only" in detail:
            detail = "it holds objects other than tensors, or is not a torch file at all"
        detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({detail}); it is truncated, corrupt or not a "
            "paulkit checkpoint: move it away (or pass --restart, which does) and train again"
        ) from None


def move_aside(path: str | os.PathLike) -> Path:
    """Rename ``path`` to ``path.old-<YYYYmmdd-HHMMSS>`` (never deleted); returns the new name."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    new = path.with_name(f"{path.name}.old-{stamp}")
    n = 1
    while new.exists():
        n += 1
        new = path.with_name(f"{path.name}.old-{stamp}-{n}")
    os.replace(path, new)
    return new


class RunLockError(RuntimeError):
    """Another process holds the run folder (its PID is in the message)."""


# folder -> [file descriptor, depth]: the locks this process holds (re-entrant)
_HELD: dict[str, list[int]] = {}


def check_writable(folder: str | os.PathLike, what: str = "--out") -> Path:
    """Create ``folder`` (and its parents) and a temporary file in it, or raise a
    ``ValueError`` that says why not: before any work, not at the first checkpoint."""
    folder = Path(folder)
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{what}: {parent} is a file, not a folder; pass a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(
            f"{what}: cannot write in {folder} ({exc.strerror or exc}); pass a folder you can "
            "write to"
        ) from None
    return folder


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Hold ``folder/.lock`` (``fcntl.flock``, with this process's PID in it) while the body
    runs, so that two runs never write into one run folder.

    A second process is refused with :class:`RunLockError` naming the holder's PID. The lock
    dies with its process (the kernel releases it), so a stale ``.lock`` file left by a
    killed run is simply taken over. Re-entrant within one process. ``enabled=False`` (the
    ranks other than 0 under torchrun) does nothing.
    """
    if not enabled or fcntl is None:  # no fcntl (Windows): no lock
        yield
        return
    folder = check_writable(folder)
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    lock = folder / ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise RunLockError(
            f"{folder} is in use by another paulkit run (PID {holder}, lock {lock}); wait "
            "for it to finish, or pass another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            del _HELD[key]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
