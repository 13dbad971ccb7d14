"""Metrics out: metrics.jsonl (one object per step), the configured logging backends
(TensorBoard, MLflow, W&B: :mod:`rlfoundry.training.backends`), a console progress bar."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rlfoundry.config.schema import LoggingConfig
from rlfoundry.training.backends import open_backends

PROGRESS_KEYS = ("loss", "accuracy", "reward_gap", "reward_mean", "grad_norm")


class MetricsLogger:
    def __init__(self, output_dir: str | Path, cfg: LoggingConfig, total_steps: int,
                 start_step: int = 0, run_config: Mapping[str, Any] | None = None,
                 desc: str = "train"):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        if start_step == 0 and self.path.exists():
            self.path.unlink()
        elif start_step > 0 and self.path.exists():
            _truncate_after(self.path, start_step)
        self._file = self.path.open("a", encoding="utf-8")
        try:
            self._backends = open_backends(cfg, self.dir, start_step, run_config)
        except BaseException:
            self._file.close()
            raise
        self._bar = tqdm(total=total_steps, initial=start_step, disable=not cfg.progress_bar,
                         dynamic_ncols=True, desc=desc)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **metrics}
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        for backend in self._backends:
            backend.log(step, metrics)
        if not k_is_eval(metrics):
            self._bar.update(step - self._bar.n)
            shown = {k: f"{metrics[k]:.4g}" for k in PROGRESS_KEYS if k in metrics}
            self._bar.set_postfix(shown, refresh=False)

    def write(self, text: str) -> None:
        self._bar.write(text)

    def close(self) -> None:
        self._bar.close()
        self._file.close()
        for backend in self._backends:
            backend.close()


class NullLogger:
    """The logger of ranks other than 0 under torchrun: metrics are written once, by rank 0."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def write(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def k_is_eval(metrics: dict[str, Any]) -> bool:
    return bool(metrics) and all(k.startswith("eval/") for k in metrics)


def _truncate_after(path: Path, step: int) -> None:
    """On resume, drop records of steps after the checkpoint so the log has no duplicates."""
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
