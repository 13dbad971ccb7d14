"""Logging backends: each one chosen in config records the metrics, read back with its own reader."""

import json
import struct
from pathlib import Path

import pytest

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.config import load_config
from rlfoundry.config.schema import LoggingConfig
from rlfoundry.errors import ConfigError
from rlfoundry.training import backends
from rlfoundry.training.logger import MetricsLogger


def read_wandb_history(run_dir: Path) -> list[dict]:
    """History rows of an offline W&B run, parsed from its ``run-*.wandb`` file.

    The file is a 7-byte header then a LevelDB-style log of 32 KiB blocks: each chunk is a
    4-byte CRC, a 2-byte little-endian length, a 1-byte type (1 full, 2 first, 3 middle,
    4 last) and the payload; each reassembled record is a serialised wandb ``Record``.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    rows, pos, pending, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left for a header: block padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or ".".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def logging_config(*names, **options) -> LoggingConfig:
    return LoggingConfig(backends=list(names), progress_bar=False, **options)


def test_default_backends_and_the_tensorboard_shorthand():
    assert load_config(None).logging.backends == ["jsonl", "tensorboard"]
    assert load_config(None, ["logging.tensorboard=false"]).logging.backends == ["jsonl"]
    assert load_config(None, ["logging.backends=[tensorboard]"]).logging.backends == ["jsonl", "tensorboard"]
    cfg = load_config(None, ["logging.backends=[jsonl]", "logging.tensorboard=true"])
    assert cfg.logging.backends == ["jsonl", "tensorboard"]


def test_unknown_backend_is_rejected_with_its_key_path():
    with pytest.raises(ConfigError, match=r"logging\.backends\.1: .*'tensorboard'"):
        load_config(None, ["logging.backends=[jsonl, tensorbord]"])


def test_missing_optional_package_names_the_key_and_the_extra(monkeypatch):
    monkeypatch.setattr(backends, "is_installed", lambda module: module != "wandb")
    with pytest.raises(ConfigError) as err:
        load_config(None, ["logging.backends=[jsonl, wandb]"])
    assert "logging.backends: 'wandb' needs the 'wandb' package" in str(err.value)
    assert "pip install 'rlfoundry[wandb]'" in str(err.value)
    assert load_config(None, ["logging.backends=[mlflow]"]).logging.backends == ["jsonl", "mlflow"]


def test_tensorboard_backend_writes_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLogger(tmp_path, logging_config("tensorboard"), total_steps=2)
    log.log(0, {"eval/accuracy": 0.5})
    log.log(1, {"loss": 0.7, "nan_metric": float("nan")})
    log.log(2, {"loss": 0.25})
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, pytest.approx(0.7)), (2, 0.25)]
    assert [(e.step, e.value) for e in events.Scalars("eval/accuracy")] == [(0, 0.5)]
    assert "nan_metric" not in events.Tags()["scalars"]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # jsonl always on


def test_mlflow_backend_uses_a_local_file_store_and_continues_on_resume(tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = logging_config("mlflow", mlflow={"experiment_name": "quick"})
    log = MetricsLogger(tmp_path, cfg, total_steps=4, run_config={"training": {"seed": 3}})
    log.log(1, {"loss": 1.5})
    log.log(2, {"loss": 1.0, "eval/accuracy": 0.75})
    log.close()
    resumed = MetricsLogger(tmp_path, cfg, total_steps=4, start_step=2)
    resumed.log(3, {"loss": 0.5})
    resumed.close()

    assert (tmp_path / "mlruns").is_dir()
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("quick")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == (tmp_path / "mlflow_run_id").read_text().strip()
    assert run.info.run_name == tmp_path.name
    assert run.data.params["training.seed"] == "3"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [
        (1, 1.5), (2, 1.0), (3, 0.5)]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "eval/accuracy")] == [0.75]
    assert run.info.status == "FINISHED"


def test_wandb_backend_writes_an_offline_run_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")  # the config's offline mode must win
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = logging_config("wandb", wandb={"project": "quick", "run_name": "demo"})
    log = MetricsLogger(tmp_path, cfg, total_steps=2, run_config={"algorithm": {"name": "dpo"}})
    log.log(1, {"loss": 0.9})
    log.log(2, {"loss": 0.4, "accuracy": 1.0})
    log.close()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    assert run_dir.name.endswith((tmp_path / "wandb_run_id").read_text().strip())
    rows = read_wandb_history(run_dir)
    assert [(r["_step"], r["loss"]) for r in rows] == [(1, 0.9), (2, 0.4)]
    assert rows[-1]["accuracy"] == 1.0


@pytest.mark.slow
def test_a_training_run_logs_to_every_backend_at_once(tmp_path):
    """End to end: a short DPO run with all four backends; each one holds the same losses."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = DPOTrainer(config={
        "data": {"train": "builtin:sort_preferences", "train_size": 16, "eval_size": 8, "max_length": 48},
        "training": {"output_dir": str(tmp_path), "batch_size": 8, "max_steps": 2, "eval_every": 2},
        "logging": {"backends": ["jsonl", "tensorboard", "mlflow", "wandb"], "progress_bar": False},
    })
    trainer.train()
    jsonl = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in jsonl if "loss" in r]
    assert [s for s, _ in losses] == [1, 2]

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("loss")] == losses

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    run = client.get_run((tmp_path / "mlflow_run_id").read_text().strip())
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == losses
    assert run.data.params["algorithm.name"] == "dpo"

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    rows = read_wandb_history(run_dir)
    assert [(r["_step"], r["loss"]) for r in rows if "loss" in r] == losses
    assert any("eval/accuracy" in r for r in rows)
