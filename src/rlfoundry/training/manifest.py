"""``manifest.json``: the size and SHA-256 of every file of a checkpoint (or of ``final/``).

It is written last, synced, and only then is the directory renamed into place, so a published
directory without a valid manifest was damaged after the fact. :func:`verify` recomputes every
checksum and returns what is wrong (file and reason), which lets ``resume: auto`` fall back to
the newest intact checkpoint and tell the user why it skipped the others.

This detects accidental damage (flipped bits, truncation, deleted or added files); it is not a
signature: whoever can write the directory can also rewrite its manifest. The state files are
never unpickled, so a forged checkpoint can change weights but cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT = "rlfoundry-checkpoint"
VERSION = 2
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_all(paths: list[Path]) -> list[str]:
    """SHA-256 of each file, several at once (hashlib releases the GIL on large buffers)."""
    workers = max(1, min(8, os.cpu_count() or 1, len(paths)))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(sha256_file, paths))


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path, info: dict[str, Any] | None = None) -> Path:
    """Hash every file under ``directory`` into ``directory/manifest.json`` (synced)."""
    paths = _files(directory)
    files = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": digest}
             for p, digest in zip(paths, _hash_all(paths))}
    body = {"format": FORMAT, "version": VERSION, **(info or {}), "files": files}
    path = directory / MANIFEST
    with open(path, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of ``directory``; ValueError saying why when it is missing or malformed."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ValueError(f"{MANIFEST}: missing (the checkpoint was not written completely by "
                         f"this version of rlfoundry, or the file was deleted)")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{MANIFEST}: unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("files"), dict):
        raise ValueError(f"{MANIFEST}: not an rlfoundry checkpoint manifest")
    if body.get("version") != VERSION:
        raise ValueError(f"{MANIFEST}: format version {body.get('version')!r}, this rlfoundry "
                         f"reads version {VERSION}")
    return body


def verify(directory: Path, required: tuple[str, ...] = ()) -> list[str]:
    """Problems of ``directory`` against its manifest, each 'file: reason' ([] when intact).
    ``required`` are files (relative paths) the directory must hold whatever the manifest says."""
    try:
        listed = read_manifest(directory)["files"]
    except ValueError as e:
        missing = [f"{r}: missing" for r in required if not (directory / r).is_file()]
        return [str(e), *missing]
    problems = [f"{r}: missing (required, not in the manifest)" for r in required if r not in listed]
    to_hash = []
    for name, entry in sorted(listed.items()):
        path = directory / name
        if not isinstance(entry, dict) or Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"{name}: bad manifest entry")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry.get("size"):
            problems.append(f"{name}: size {path.stat().st_size} bytes, the manifest says "
                            f"{entry.get('size')} (truncated or overwritten)")
        else:
            to_hash.append((name, path, entry.get("sha256")))
    digests = _hash_all([path for _, path, _ in to_hash]) if to_hash else []
    problems += [f"{name}: checksum mismatch (the bytes changed after it was written)"
                 for (name, _, want), got in zip(to_hash, digests) if got != want]
    extra = [p.relative_to(directory).as_posix() for p in _files(directory)]
    problems += [f"{name}: not in the manifest (added after the checkpoint was written)"
                 for name in extra if name not in listed]
    return problems
