"""Logging backends: where step metrics go besides metrics.jsonl.

``logging.backends`` names them: ``jsonl`` (always on, written by the
:class:`~rlfoundry.training.logger.MetricsLogger` itself), ``tensorboard``, ``mlflow`` (a
local file store under the output directory unless a tracking URI is given) and ``wandb``
(offline unless ``logging.wandb.mode: online``). Each backend is a small object with
``log(step, metrics)`` and ``close()``; the optional packages are checked when the config
loads, so a missing one fails before any model is built.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from rlfoundry.config.schema import LoggingConfig, MLflowConfig, WandbConfig
from rlfoundry.errors import ConfigError

# backend -> (module it imports, pip extra that installs it)
OPTIONAL_PACKAGES = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
RUN_ID_FILES = {"mlflow": "mlflow_run_id", "wandb": "wandb_run_id"}


class LoggingBackend(Protocol):
    """Receives every record the trainer logs (train steps and ``eval/...`` records)."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_backends(cfg: LoggingConfig) -> list[str]:
    """The backends a config asks for, in order and without repeats: ``jsonl`` first, the
    ``tensorboard`` shorthand applied. Raises ConfigError when an optional package is missing."""
    names = ["jsonl", *cfg.backends]
    if cfg.tensorboard is True:
        names.append("tensorboard")
    elif cfg.tensorboard is False:
        names = [n for n in names if n != "tensorboard"]
    names = list(dict.fromkeys(names))
    for name in names:
        if name in OPTIONAL_PACKAGES:
            module, extra = OPTIONAL_PACKAGES[name]
            if not is_installed(module):
                raise ConfigError(
                    f"logging.backends: '{name}' needs the '{module}' package, which is not "
                    f"installed; pip install 'rlfoundry[{extra}]' or remove '{name}' from "
                    f"logging.backends")
    return names


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def finite_numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The entries that are finite real numbers (what scalar backends can plot)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _saved_run_id(output_dir: Path, name: str, start_step: int) -> str | None:
    """The run id a backend wrote for this output directory, when resuming (else None)."""
    path = output_dir / RUN_ID_FILES[name]
    if start_step > 0 and path.is_file():
        return path.read_text(encoding="utf-8").strip() or None
    return None


def _save_run_id(output_dir: Path, name: str, run_id: str) -> None:
    (output_dir / RUN_ID_FILES[name]).write_text(run_id + "\n", encoding="utf-8")


class TensorBoardBackend:
    """Event files under ``<output_dir>/tensorboard`` (``tensorboard --logdir``)."""

    def __init__(self, output_dir: Path, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step or None)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in finite_numbers(metrics).items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class MLflowBackend:
    """One MLflow run; the flattened run config is logged as its parameters.

    The default tracking URI is a file store in the output directory. MLflow 3 keeps file
    stores behind the ``MLFLOW_ALLOW_FILE_STORE`` switch; it is turned on for ``file:`` URIs
    (unless the user set it). A resumed run continues the MLflow run it started.
    """

    def __init__(self, cfg: MLflowConfig, output_dir: Path, start_step: int = 0,
                 run_config: Mapping[str, Any] | None = None):
        from mlflow.tracking import MlflowClient

        uri = cfg.tracking_uri or (output_dir.resolve() / "mlruns").as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.tracking_uri = uri
        experiment = self.client.get_experiment_by_name(cfg.experiment_name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(cfg.experiment_name))
        run_id = _saved_run_id(output_dir, "mlflow", start_step)
        if run_id is None:
            run = self.client.create_run(experiment_id, run_name=cfg.run_name or output_dir.resolve().name)
            run_id = run.info.run_id
            _save_run_id(output_dir, "mlflow", run_id)
            self._log_params(run_id, run_config or {})
        self.run_id = run_id

    def _log_params(self, run_id: str, run_config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:500]) for k, v in flatten(run_config).items()]
        for start in range(0, len(params), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(run_id, params=params[start:start + 100])

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(k, v, now, step) for k, v in finite_numbers(metrics).items()]
        if values:
            self.client.log_batch(self.run_id, metrics=values)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbBackend:
    """One Weights & Biases run, offline by default: everything is written under
    ``<dir>/wandb/offline-run-*`` and nothing touches the network (``wandb sync`` uploads it
    later); the explicit ``mode`` argument overrides a ``WANDB_MODE`` set in the environment.
    A resumed run continues the W&B run it started."""

    def __init__(self, cfg: WandbConfig, output_dir: Path, start_step: int = 0,
                 run_config: Mapping[str, Any] | None = None):
        import wandb

        directory = Path(cfg.dir) if cfg.dir else output_dir
        directory.mkdir(parents=True, exist_ok=True)
        run_id = _saved_run_id(output_dir, "wandb", start_step)
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, name=cfg.run_name or output_dir.resolve().name,
            dir=str(directory), mode=cfg.mode, config=dict(run_config or {}), tags=cfg.tags or None,
            id=run_id, resume="allow" if run_id else None,
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        _save_run_id(output_dir, "wandb", self.run.id)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(finite_numbers(metrics), step=step)

    def close(self) -> None:
        import wandb

        self.run.finish()
        if wandb.run is None:  # finish() can return before the run file is flushed; the
            wandb.teardown()   # teardown waits for wandb's service to write everything out


def open_backends(cfg: LoggingConfig, output_dir: str | Path, start_step: int = 0,
                  run_config: Mapping[str, Any] | None = None) -> list[LoggingBackend]:
    """Open every backend ``cfg`` names besides ``jsonl`` (which the MetricsLogger writes)."""
    output_dir = Path(output_dir)
    opened: list[LoggingBackend] = []
    try:
        for name in resolve_backends(cfg):
            if name == "tensorboard":
                opened.append(TensorBoardBackend(output_dir, start_step))
            elif name == "mlflow":
                opened.append(MLflowBackend(cfg.mlflow, output_dir, start_step, run_config))
            elif name == "wandb":
                opened.append(WandbBackend(cfg.wandb, output_dir, start_step, run_config))
    except BaseException:
        for backend in opened:
            backend.close()
        raise
    return opened
