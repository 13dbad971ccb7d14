"""Same seed, same config: two runs write byte-identical metrics.jsonl (wall-clock figures
live in timings.jsonl)."""

import json

import pytest

from rlfoundry.cli import main
from tests.test_fault_injection import DPO, GRPO, write_config


@pytest.mark.parametrize("base", [DPO, GRPO], ids=["dpo", "grpo"])
def test_two_runs_write_identical_metrics(tmp_path, base):
    cfg = json.loads(json.dumps(base))
    cfg["training"].update(max_steps=3, save_every=None, eval_every=3)
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert main(["train", str(write_config(tmp_path / f"{run.name}.yaml", cfg, run))]) == 0
    a, b = ((r / "metrics.jsonl").read_bytes() for r in runs)
    assert a == b
    records = [json.loads(line) for line in a.decode().splitlines()]
    assert any("eval/reward_mean" in r or "eval/accuracy" in r for r in records)
    timings = [(r / "timings.jsonl").read_text() for r in runs]
    assert all(t.count("step_seconds") == 3 for t in timings)
