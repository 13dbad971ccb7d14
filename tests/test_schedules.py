import json
import math

import pytest

from rlfoundry.config import load_config
from rlfoundry.errors import ConfigError
from rlfoundry.training.checkpoint import read_state
from rlfoundry.training.schedules import build_schedule
from tests.test_dpo_trainer import float64_trainer, run_config


def test_linear_beta_is_the_seed_adaptive_beta_schedule():
    s = build_schedule({"type": "linear", "initial_beta": 0.2, "final_beta": 0.05}, "beta", 0.1, "x")
    for step in (0, 25, 50, 100):
        assert s.value(step, 100) == pytest.approx(0.2 + (0.05 - 0.2) * step / 100)


def test_warmup_cosine_is_continuous_and_ends_at_final():
    s = build_schedule({"type": "warmup_cosine", "final_beta": 0.01, "warmup_steps": 10}, "beta", 0.1, "x")
    values = [s.value(t, 110) for t in range(111)]
    assert values[0] == pytest.approx(0.01) and values[10] == pytest.approx(0.1)
    assert values[110] == pytest.approx(0.01)
    assert values[60] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert max(abs(a - b) for a, b in zip(values, values[1:])) < 0.01  # no jump at warmup end


def test_reward_gap_controller_follows_the_seed_rule():
    s = build_schedule({"type": "reward_gap"}, "beta", 0.1, "x")
    s.update({"reward_gap": 0.05})
    assert s.value(1, 10) == pytest.approx(0.11)
    s.update({"reward_gap": 0.3})
    assert s.value(2, 10) == pytest.approx(0.11)
    s.update({"reward_gap": 0.9})
    assert s.value(3, 10) == pytest.approx(0.099)
    s.update({"reward_gap": float("nan")})  # a skipped step changes nothing
    assert s.value(4, 10) == pytest.approx(0.099)


def test_schedule_config_errors_name_the_key(tmp_path):
    cfg = run_config(tmp_path)
    cfg["algorithm"] = {"beta_schedule": {"type": "linar"}}
    with pytest.raises(ConfigError, match=r"algorithm.beta_schedule.type: unknown schedule 'linar'.*'linear'"):
        load_config(cfg)
    cfg["algorithm"] = {"beta_schedule": {"type": "linear", "final": 0.1}}
    with pytest.raises(ConfigError, match=r"algorithm.beta_schedule: unknown option\(s\) \['final'\]"):
        load_config(cfg)
    cfg["algorithm"] = {"beta_schedule": {"type": "performance"}}
    with pytest.raises(ConfigError, match="schedules lr, not beta"):
        load_config(cfg)
    cfg["algorithm"] = {"loss": {"type": "nll"}, "beta_schedule": {"type": "linear"}}
    with pytest.raises(ConfigError, match="has no beta"):
        load_config(cfg)


def test_trainer_applies_and_logs_beta_and_lr_controller(tmp_path):
    cfg = run_config(tmp_path, max_steps=4, lr_scheduler="constant", save_every=2)
    cfg["algorithm"] = {"beta": 0.2, "beta_schedule": {"type": "linear", "final_beta": 0.1}}
    cfg["training"]["lr_controller"] = {"type": "performance", "metric": "accuracy",
                                        "low": 2.0, "high": 3.0, "up": 2.0}  # always below: x2
    t = float64_trainer(cfg)
    t.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "beta" in r]
    assert [r["beta"] for r in rows] == pytest.approx([0.2, 0.175, 0.15, 0.125])
    # lr is logged after the update for the next step: doubled each step up to max_scale 10
    assert [r["lr"] for r in rows] == pytest.approx([2e-3, 4e-3, 8e-3, 10e-3])
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(10e-3)
    state = read_state(tmp_path / "checkpoints" / "step_000004")
    assert state["schedules"]["lr"]["attrs"]["current"] == pytest.approx(10.0)
