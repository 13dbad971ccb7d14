"""What a bug report needs: versions of rlfoundry and its main dependencies, and the hardware.

``rlfoundry env`` prints :func:`format_report`; every run's ``run_info.json`` records the same
facts (see :mod:`rlfoundry.training.run_record`).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "tokenizers", "pydantic", "safetensors", "peft", "vllm")


def version() -> str:
    """rlfoundry's installed version ("unknown" when run from a tree that is not installed)."""
    try:
        return metadata.version("rlfoundry")
    except metadata.PackageNotFoundError:
        return "unknown"


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(directory: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding ``directory`` (default: rlfoundry's own source,
    for an editable install from a clone), with ``+dirty`` when tracked files changed; None
    when it is not a checkout or git is missing."""
    where = str(directory or Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def hardware() -> dict[str, Any]:
    """CPU cores (all, and usable by this process), load average, memory and CUDA devices."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "machine": platform.machine(), "processor": _cpu_model(), "cpu_count": os.cpu_count(),
        "usable_cpus": usable, "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "memory_gib": _memory_gib(), "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cuda_version"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def environment() -> dict[str, Any]:
    """Everything :func:`format_report` prints, as a dict."""
    return {"rlfoundry": version(), "rlfoundry_commit": git_commit(),
            "python": platform.python_version(), "platform": platform.platform(),
            "packages": package_versions(), "hardware": hardware()}


def format_report(env: dict[str, Any] | None = None) -> str:
    """Plain ``- key: value`` lines to paste into a bug report."""
    env = environment() if env is None else env
    lines = [f"- rlfoundry: {env['rlfoundry']}" + (f" (git {env['rlfoundry_commit']})"
                                                   if env["rlfoundry_commit"] else ""),
             f"- python: {env['python']} ({sys.executable})", f"- platform: {env['platform']}"]
    lines += [f"- {name}: {v or 'not installed'}" for name, v in env["packages"].items()]
    lines += [f"- {key}: {value}" for key, value in env["hardware"].items()]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)
