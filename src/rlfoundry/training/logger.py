"""Metrics out: metrics.jsonl (one object per step), timings.jsonl, the configured logging
backends (TensorBoard, MLflow, W&B: :mod:`rlfoundry.training.backends`), a progress bar.

metrics.jsonl holds only values that the seed determines, so two runs of the same config
write identical files; wall-clock figures (``step_seconds``, tokens per second) go to
timings.jsonl (and to the backends under ``time/``). On resume both files are cut back to the
checkpoint's step (a line torn by a kill is dropped), so a resumed run's files read as if the
run had never stopped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rlfoundry.config.schema import LoggingConfig
from rlfoundry.errors import OutputError
from rlfoundry.safe_text import escape_control
from rlfoundry.training.backends import open_backends
from rlfoundry.training.storage import describe_write_failure

logger = logging.getLogger(__name__)

PROGRESS_KEYS = ("loss", "accuracy", "reward_gap", "reward_mean", "grad_norm")


class MetricsLogger:
    def __init__(self, output_dir: str | Path, cfg: LoggingConfig, total_steps: int,
                 start_step: int = 0, run_config: Mapping[str, Any] | None = None,
                 desc: str = "train"):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self.timings_path = self.dir / "timings.jsonl"
        self._file = _open_log(self.path, start_step)
        self._timings = None
        try:
            self._timings = _open_log(self.timings_path, start_step)
            self._backends = open_backends(cfg, self.dir, start_step, run_config)
        except BaseException:
            self._file.close()
            if self._timings is not None:
                self._timings.close()
            raise
        self._bar = tqdm(total=total_steps, initial=start_step, disable=not cfg.progress_bar,
                         dynamic_ncols=True, desc=desc)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        _append(self._file, {"step": step, **metrics})
        for backend in self._backends:
            backend.log(step, metrics)
        if not k_is_eval(metrics):
            self._bar.update(step - self._bar.n)
            shown = {k: f"{metrics[k]:.4g}" for k in PROGRESS_KEYS if k in metrics}
            self._bar.set_postfix(shown, refresh=False)

    def log_timings(self, step: int, timings: dict[str, Any]) -> None:
        """Wall-clock figures of a step, to timings.jsonl (and TensorBoard under ``time/``)."""
        _append(self._timings, {"step": step, **timings})
        for backend in self._backends:
            backend.log(step, {f"time/{k}": v for k, v in timings.items()})

    def write(self, text: str) -> None:
        """A message line on the console (above the progress bar). Control characters are
        escaped: messages quote reward exceptions and completions, which a model writes."""
        self._bar.write(escape_control(text))

    def close(self) -> None:
        self._bar.close()
        self._file.close()
        self._timings.close()
        for backend in self._backends:
            backend.close()


class NullLogger:
    """The logger of ranks other than 0 under torchrun: metrics are written once, by rank 0."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def log_timings(self, step: int, timings: dict[str, Any]) -> None:
        pass

    def write(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def k_is_eval(metrics: dict[str, Any]) -> bool:
    return bool(metrics) and all(k.startswith("eval/") for k in metrics)


def _open_log(path: Path, start_step: int):
    """Open a JSON-lines log for appending: a fresh file for a new run, the file cut back to
    ``start_step`` for a resumed one."""
    try:
        if path.exists():
            if start_step == 0:
                path.unlink()
            else:
                _truncate_after(path, start_step)
        return path.open("a", encoding="utf-8")
    except OSError as e:
        raise OutputError(describe_write_failure(f"'{path.name}'", path.parent, e)) from e


def _append(file, record: dict[str, Any]) -> None:
    try:
        file.write(json.dumps(record, allow_nan=True) + "\n")
        file.flush()
    except OSError as e:
        raise OutputError(describe_write_failure(f"'{Path(file.name).name}'", Path(file.name).parent, e)) from e


def _truncate_after(path: Path, step: int) -> None:
    """On resume, drop records of steps after the checkpoint so the log has no duplicates.

    A line that is not valid JSON can only be the last one, torn by a kill mid-write; it is
    dropped with a warning. The file is rewritten atomically (temporary file + rename).
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s:%d: dropped a torn record (%d characters) written when the run "
                           "was interrupted", path, number, len(line))
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
