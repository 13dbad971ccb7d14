"""The output directory's health: is it writable, and what to tell the user when a write fails.

Disk-full errors do not arrive in one shape: ``open``/``write`` raise ``OSError(ENOSPC)``,
safetensors raises its own ``SafetensorError`` and ``torch.save`` a ``RuntimeError``. The
messages here therefore report the free space of the disk as well as the error itself.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

from rlfoundry.errors import OutputError

RESUME_HINT = "rerun the same command with training.resume=auto"
LOW_SPACE = 1 << 20  # below this many free bytes a failed write is taken for a full disk


def check_writable(directory: str | Path, key: str = "training.output_dir") -> Path:
    """Create ``directory`` and prove a file can be written and synced there, or raise
    :class:`OutputError` naming the config key (called before any training time is spent)."""
    directory = Path(directory)
    probe = directory / f".write_test_{os.getpid()}_{threading.get_ident()}"  # runs in threads too
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise OutputError(
            f"{key}: cannot write to '{directory}' ({e.strerror or e}); "
            f"{_hint(e, directory)}"
        ) from e
    return directory


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the disk holding ``path`` (its nearest existing ancestor), or None."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def is_virtual_filesystem(path: str | Path) -> bool:
    """Whether ``path`` (its nearest existing ancestor) is on a file system with no storage
    behind it, such as /proc or /sys: it reports 0 bytes in total, so its "free space" of 0
    says nothing about a full disk."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).total == 0
    except OSError:
        return False


def describe_write_failure(what: str, where: str | Path, error: BaseException) -> str:
    """'could not write <what> under <where> (<error>); <free space>; <what to do>'."""
    free = free_bytes(where)
    space = f"{_human(free)} free on that disk" if free is not None else "free space unknown"
    return (f"could not write {what} under '{where}' ({type(error).__name__}: {error}); {space}. "
            f"{_hint(error, where)}")


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or its cause) reports a full disk, whatever its type."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "os error 28" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _hint(error: BaseException, where: str | Path) -> str:
    if not is_disk_full(error) and is_virtual_filesystem(where):
        return ("The directory is not writable: it is on a virtual file system of the kernel "
                "(such as /proc or /sys), not on a disk; choose another training.output_dir.")
    free = free_bytes(where)
    if is_disk_full(error) or (free is not None and free < LOW_SPACE):
        return (f"The disk is full: free space or set training.output_dir to another disk, then "
                f"{RESUME_HINT}.")
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "The directory is not writable: fix its permissions or choose another training.output_dir."
    if isinstance(error, OSError) and error.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"A file is in the way of '{where}': remove it or choose another training.output_dir."
    return f"Fix the cause above, then {RESUME_HINT}."


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
