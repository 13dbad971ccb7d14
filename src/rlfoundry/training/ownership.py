"""Who owns an output directory: one run at a time, and only the run that wrote it.

* :class:`OutputLock`: an exclusive ``flock`` on ``<output_dir>/.rlfoundry.lock``, held for the
  whole run (rank 0 only under torchrun). The file's JSON body names the holder (PID, host,
  start time, command), so a second run fails at once with an error that says who holds it.
  A lock whose holder is gone is *stale*: the ``flock`` is free (the kernel drops it when the
  holder dies), or it is still held by an orphaned child while the PID in the body no longer
  exists on this host. A stale lock is taken over with a warning.
* :func:`config_fingerprint` / :func:`config_diff`: the run's resolved config minus the keys a
  resume may legitimately change (:data:`RESUMABLE_KEYS`); a checkpoint of a run with another
  fingerprint is refused at resume with the differing keys.
* :func:`claim`: a fresh run (no ``training.resume``) refuses a directory that holds another
  run's checkpoints or ``final/`` unless ``training.overwrite`` is set, which removes them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

from rlfoundry.errors import CheckpointError, OutputError

logger = logging.getLogger(__name__)

LOCK_FILE = ".rlfoundry.lock"
# keys a resumed run may change without becoming another run (dotted paths; a prefix covers
# its whole section)
RESUMABLE_KEYS = (
    "training.output_dir", "training.max_steps", "training.epochs", "training.resume",
    "training.overwrite", "training.save_every", "training.keep_last", "training.eval_every",
    "training.device", "training.distributed", "training.on_nonfinite", "logging",
    "data.eval", "data.eval_size", "reference.cache_dir", "algorithm.reward_timeout",
    "plugins",  # where the code lives; what it registers is used by name in the config
)


class OutputLock:
    """Context manager: hold ``<directory>/.rlfoundry.lock`` exclusively, or raise
    :class:`OutputError` naming the holder."""

    def __init__(self, directory: str | Path, command: str | None = None) -> None:
        self.path = Path(directory) / LOCK_FILE
        self.command = command if command is not None else " ".join(sys.argv)
        self.fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        for _ in range(5):  # the file may be replaced under us by a takeover; retry on a new one
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK,
                             0o644)
            except OSError as e:
                raise OutputError(f"training.output_dir: cannot open the lock file '{self.path}' "
                                  f"({e.strerror or e}); remove whatever is in its place") from e
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device planted in its place
                os.close(fd)
                raise OutputError(f"training.output_dir: the lock file '{self.path}' is not a "
                                  f"regular file; remove whatever is in its place")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                if not _orphaned(holder):
                    raise OutputError(_held_message(self.path, holder)) from None
                logger.warning("%s: taking over the lock of %s, which no longer runs (its "
                               "flock is kept by a leftover child process)",
                               self.path, _describe(holder))
                _unlink_if_same(self.path, holder)
                continue
            if not _same_file(fd, self.path):  # replaced between open and flock
                os.close(fd)
                continue
            stale = _read_holder(fd)
            if stale:
                logger.warning("%s: taking over a stale lock left by %s (that run ended "
                               "without releasing it)", self.path, _describe(stale))
            self.fd = fd
            self._write_body()
            return
        raise OutputError(f"{self.path}: could not take the output-directory lock (it kept "
                          f"changing); is another run starting in the same directory?")

    def _write_body(self) -> None:
        body = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": self.command}
        data = json.dumps(body).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # an empty body: released cleanly
        except OSError as e:
            logger.warning("%s: could not clear the lock file (%s)", self.path, e)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 1 << 16, 0)
        body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        return body if isinstance(body, dict) else {"unreadable": True}
    except (OSError, ValueError):
        return {"unreadable": True}


def _describe(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "an unknown process (the lock file names no holder)"
    return (f"PID {holder.get('pid')} on host {holder.get('host')!r} (started "
            f"{holder.get('started')}: {holder.get('command')})")


def _held_message(path: Path, holder: dict[str, Any]) -> str:
    return (f"training.output_dir: '{path.parent}' is in use by another run: {_describe(holder)}. "
            f"Wait for it to finish, stop it, or choose another training.output_dir. (The lock "
            f"is {path}; it is released when that process exits.)")


def _orphaned(holder: dict[str, Any]) -> bool:
    """The flock is held, but the process named in the lock is gone from this host."""
    pid, host = holder.get("pid"), holder.get("host")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or host != socket.gethostname():
        return False  # a forged or garbled body: never guess that the holder is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _unlink_if_same(path: Path, holder: dict[str, Any]) -> None:
    """Remove the lock file an orphan holds, unless another run has replaced it meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        if _read_holder(fd) == holder:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)


# ---- config fingerprints ----------------------------------------------------------------------
def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened config entries that define a run (everything not in RESUMABLE_KEYS)."""
    return {k: v for k, v in _flatten(config).items() if not _resumable(k)}


def config_fingerprint(config: dict[str, Any]) -> str:
    """SHA-256 of :func:`identity` (the JSON form of the resolved config)."""
    text = json.dumps(identity(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def config_diff(saved: dict[str, Any], current: dict[str, Any], limit: int = 10) -> list[str]:
    """'key: saved -> current' for each identity key that differs."""
    a, b = identity(saved), identity(current)
    missing = object()
    lines = [f"{k}: {_short(a.get(k, missing))} -> {_short(b.get(k, missing))}"
             for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def _short(value: Any) -> str:
    text = "(unset)" if not isinstance(value, (str, int, float, bool, list, dict, type(None))) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_same_run(checkpoint: Path, saved: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """CheckpointError when the run that wrote ``checkpoint`` had another identity."""
    if saved is None:
        raise CheckpointError(f"checkpoint '{checkpoint}' holds no run config; cannot tell "
                              f"whether it belongs to this run")
    diff = config_diff(saved, current)
    if diff:
        raise CheckpointError(
            f"checkpoint '{checkpoint}' belongs to a run with another config; resuming would "
            f"mix two runs. Differences (checkpoint -> now):\n  " + "\n  ".join(diff) +
            f"\nRestore those settings to resume, or start a new run in another "
            f"training.output_dir (to start from these weights, set model.name_or_path to "
            f"'{checkpoint / 'model'}').")


# ---- fresh runs -----------------------------------------------------------------------------
def previous_run(output_dir: Path) -> list[Path]:
    """What another run left in ``output_dir``: its checkpoints (step_*) and final/."""
    found = sorted((output_dir / "checkpoints").glob("step_*")) if (output_dir / "checkpoints").is_dir() else []
    return found + ([output_dir / "final"] if (output_dir / "final").exists() else [])


# what a directory written by rlfoundry holds (the manifest; older versions: the state file or
# the model's config): --overwrite deletes nothing else, whatever its name (a symlinked
# checkpoints/ or final/ may lead anywhere)
OUTPUT_MARKERS = ("manifest.json", "trainer_state.pt", "config.json", "model/config.json",
                  "adapter_config.json", "model/adapter_config.json")


def _looks_like_output(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir():
        return True  # removing a link or a stray file deletes nothing behind it
    return any((path / marker).is_file() for marker in OUTPUT_MARKERS)


def claim(output_dir: Path, overwrite: bool, resuming: bool = False) -> list[Path]:
    """For a fresh run (or ``resume: auto`` with no checkpoint to resume): refuse ``output_dir``
    when it holds another run (unless ``overwrite``, which deletes that run's checkpoints and
    final/); return what was deleted."""
    found = previous_run(output_dir)
    if not found:
        return []
    if not overwrite:
        shown = ", ".join(p.name for p in found[-3:])
        options = ("it has no checkpoint to resume from; set" if resuming else
                   "set training.resume=auto to continue it,")
        raise OutputError(
            f"training.output_dir: '{output_dir}' already holds another run ({len(found)} "
            f"checkpoint/final directories, e.g. {shown}); {options} training.overwrite=true "
            f"(--overwrite) to delete it and start over, or choose another training.output_dir.")
    strange = [p for p in found if not _looks_like_output(p)]
    if strange:
        raise OutputError(
            f"training.overwrite: '{strange[0]}' does not look like a checkpoint or final model "
            f"of rlfoundry (no {', '.join(OUTPUT_MARKERS)}), so it is not deleted; delete it by "
            f"hand or choose another training.output_dir")
    for path in found:
        trash = path.with_name(f".trash_{path.name}_{os.getpid()}")
        try:
            os.replace(path, trash)
            if trash.is_dir() and not trash.is_symlink():
                shutil.rmtree(trash)
            else:
                trash.unlink()
        except OSError as e:
            raise OutputError(f"training.overwrite: could not delete '{path}' ({e.strerror or e}); "
                              f"delete it by hand or choose another training.output_dir") from e
    logger.warning("training.overwrite: deleted the previous run in %s (%d directories)",
                   output_dir, len(found))
    return found
