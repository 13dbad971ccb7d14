"""What a run records about itself in its output directory, next to metrics.jsonl.

- ``config.yaml``: the config as resolved (file plus command-line overrides), rerunnable with
  ``rlfoundry train <output_dir>/config.yaml``;
- ``run_info.json``: how it ran: rlfoundry's version and git commit, the versions of torch and
  transformers, CPU threads, device, start time, command line, the machine, and the full
  config with every default filled in.

Written by rank 0 when training starts (again on each resume: ``resumed_from`` says from
where). Checkpoints keep their own ``manifest.json``; these are distinct files.
"""

from __future__ import annotations

import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

from rlfoundry.config import RunConfig
from rlfoundry.errors import OutputError
from rlfoundry.system_info import git_commit, hardware, package_versions, version
from rlfoundry.training.storage import describe_write_failure

CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run_info.json"
_command: list[str] | None = None  # set by the CLI: the command as typed, not python's argv


def set_command_line(words: list[str] | None) -> None:
    """The command line ``run_info.json`` records (the CLI passes ``rlfoundry <its args>``;
    default: ``sys.argv``)."""
    global _command
    _command = None if words is None else list(words)


def config_yaml(cfg: RunConfig) -> str:
    """The keys the file and the overrides set, as YAML that ``load_config`` reads back."""
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=True), sort_keys=False)


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_yaml(cfg), encoding="utf-8")
    return path


def run_info(cfg: RunConfig, threads: int, device: torch.device | str,
             resumed_from: str | Path | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """The record of ``run_info.json`` (a plain JSON-able dict)."""
    argv = (_command or sys.argv) if argv is None else argv
    packages = package_versions(("torch", "transformers"))
    return {
        "rlfoundry_version": version(), "git_commit": git_commit(),
        "torch_version": packages["torch"], "transformers_version": packages["transformers"],
        "python_version": sys.version.split()[0],
        "num_threads": threads, "device": str(device),
        "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command_line": shlex.join(argv), "resumed_from": None if resumed_from is None else str(resumed_from),
        "algorithm": cfg.algorithm.name, "hardware": hardware(),
        "config": cfg.model_dump(mode="json"),
    }


def write_run_record(output_dir: str | Path, cfg: RunConfig, threads: int, device: torch.device | str,
                     resumed_from: str | Path | None = None) -> dict[str, Any]:
    """Write ``config.yaml`` and ``run_info.json`` to ``output_dir``; return the run info."""
    out = Path(output_dir)
    info = run_info(cfg, threads, device, resumed_from)
    try:
        save_config(cfg, out / CONFIG_FILE)
        (out / RUN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise OutputError(describe_write_failure("the run record (config.yaml, run_info.json)", out, e)) from e
    return info
