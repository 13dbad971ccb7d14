"""Online DPO: pair ranking, config checks, and the trainer (exact accumulation, resume,
all-tie steps, learning from its own samples)."""

import math
from pathlib import Path

import pytest
import torch

from rlfoundry.algorithms.online_dpo import OnlineDPOTrainer, ranked_pairs
from rlfoundry.config import load_config
from rlfoundry.errors import ConfigError
from rlfoundry.models import build_model, build_tokenizer
from rlfoundry.rollout import Rollout
from rlfoundry.training.logger import NullLogger
from rlfoundry.training.sampler import EpochSampler
from tests.crashing import train_until_crash

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "configs"


def ones(prompts, completions, **kw):
    """Reward: the share of '1' characters in the completion."""
    return [c.count("1") / max(len(c), 1) for c in completions]


def char_sum(prompts, completions, **kw):
    """A deterministic, rarely tied reward."""
    return [float(sum(map(ord, c)) % 11) for c in completions]


def run_config(path, **training):
    return {
        "algorithm": {"name": "online_dpo", "loss": {"type": "dpo", "beta": 0.1},
                      "sampling": {"temperature": 1.0, "max_new_tokens": 4}},
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"train": "builtin:max", "train_size": 32, "eval_size": 8},
        "training": {"output_dir": str(path), "batch_size": 8, "max_steps": 2, "learning_rate": 1e-3,
                     "seed": 0, **training},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def make_trainer(cfg, reward=char_sum, dtype=torch.float64):
    tok = build_tokenizer()
    model = build_model("tiny", tok, seed=0).to(dtype)
    return OnlineDPOTrainer(model=model, tokenizer=tok, config=cfg, reward_fns=[("r", reward)])


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ---------------------------------------------------------------- ranking


def test_ranked_pairs_choose_the_higher_reward_and_skip_ties():
    rollout = Rollout(prompt_index=[0, 0, 1, 1, 2, 2, 3, 3], prompt_ids=[[1], [1], [2], [2], [3], [3], [4], [4]],
                      completion_ids=[[5], [6], [7], [8], [9], [9], [10], [11]],
                      sampling_logprobs=[[0.0]] * 8, truncated=[False] * 8)
    rewards = torch.tensor([0.0, 1.0, 2.0, 2.0, 0.0, 1.0, 3.0, math.nan], dtype=torch.float64)
    pairs, ties = ranked_pairs(rollout, rewards, [f"row{i // 2}" for i in range(8)])
    # prompt 1: equal rewards; prompt 2: identical completions; prompt 3: a NaN reward
    assert ties == 3 and len(pairs) == 1
    (p,) = pairs
    assert (p.prompt_ids, p.chosen_ids, p.rejected_ids, p.location) == ([1], [6], [5], "row0")
    assert p.extras == {"reward_chosen": 1.0, "reward_rejected": 0.0}


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("algorithm,message", [
    ({"group_size": 4}, "algorithm.group_size: online_dpo samples exactly 2"),
    ({"clip_ratio": 0.2}, "algorithm.clip_ratio: a GRPO option that online_dpo does not use"),
    ({"loss": {"type": "grpo"}}, "algorithm.loss"),
    ({"sampling": {"temperature": 0.0}}, "temperature"),
])
def test_config_errors_name_the_key(tmp_path, algorithm, message):
    cfg = run_config(tmp_path)
    cfg["algorithm"].update(algorithm)
    with pytest.raises(ConfigError, match=message):
        load_config(cfg)


def test_builtin_tasks_get_their_default_reward_and_others_need_one(tmp_path):
    cfg = load_config(run_config(tmp_path))
    assert [r.name for r in cfg.algorithm.rewards] == ["math_accuracy"]
    raw = run_config(tmp_path)
    raw["data"]["train"] = [{"prompt": "a"}]
    with pytest.raises(ConfigError, match="algorithm.rewards: online_dpo ranks"):
        load_config(raw)


# ---------------------------------------------------------------- the trainer


def test_accumulation_is_exact(tmp_path):
    full = make_trainer(run_config(tmp_path / "a"))
    m_full = full.train()
    acc = make_trainer(run_config(tmp_path / "b", micro_batch_size=2))
    m_acc = acc.train()
    assert m_full["pairs"] == m_acc["pairs"] > 0  # the same samples: sampling ignores micro-batching
    assert m_acc["grad_norm"] == pytest.approx(m_full["grad_norm"], rel=1e-9)
    assert m_acc["loss"] == pytest.approx(m_full["loss"], rel=1e-9)
    assert torch.allclose(params(full.model), params(acc.model), rtol=0, atol=1e-8)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    straight = make_trainer(run_config(tmp_path / "s", max_steps=4, save_every=2))
    straight.train()
    cfg = run_config(tmp_path / "c", max_steps=4, save_every=2)
    train_until_crash(make_trainer(cfg), after_step=3)
    cfg["training"]["resume"] = "auto"
    resumed = make_trainer(cfg)
    resumed.train()
    assert torch.equal(params(straight.model), params(resumed.model))


def test_a_step_where_every_prompt_ties_changes_nothing(tmp_path):
    trainer = make_trainer(run_config(tmp_path, max_steps=1), reward=lambda p, c, **kw: [1.0] * len(c))
    before = params(trainer.model).clone()
    metrics = trainer.train()
    assert metrics["pairs"] == 0 and metrics["ties"] == 8
    assert math.isfinite(metrics["loss"]) and metrics["skipped_steps"] == 0
    assert torch.equal(before, params(trainer.model))


def test_the_reference_is_live_and_the_loss_is_dpo_on_sampled_pairs(tmp_path):
    trainer = make_trainer(run_config(tmp_path, max_steps=1))
    trainer.setup_data()
    trainer.sampler = EpochSampler(len(trainer.train_prompts), 8, 0)
    trainer.logger = NullLogger()
    indices = trainer.next_batch()
    assert trainer.ref_model is not None and sorted(indices) == list(range(len(trainer.train_pairs)))
    batch = trainer.to_device(trainer.collate(indices))
    loss, metrics = trainer.micro_step(batch)
    # policy == reference before any update: every DPO margin is 0, the loss log 2
    assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-12)
    for p in trainer.train_pairs:
        assert p.extras["reward_chosen"] > p.extras["reward_rejected"]


@pytest.mark.slow
def test_online_dpo_raises_the_reward_of_its_own_samples(tmp_path):
    cfg = run_config(tmp_path, max_steps=25, eval_every=25, batch_size=16, learning_rate=3e-3)
    cfg["data"].update(train_size=64, eval_size=16)
    trainer = make_trainer(cfg, reward=ones, dtype=torch.float32)
    trainer.train()
    assert trainer.last_eval["reward_mean"] > trainer.initial_eval["reward_mean"] + 0.2


def test_example_config_trains_from_the_cli(tmp_path):
    import json

    from rlfoundry.cli import main

    code = main(["train", str(EXAMPLES / "online_dpo_max.yaml"), f"training.output_dir={tmp_path}",
                 "model.name_or_path=builtin:tiny", "training.max_steps=2", "training.eval_every=2",
                 "training.batch_size=4", "data.train_size=8", "data.eval_size=4",
                 "logging.progress_bar=false", "logging.tensorboard=false"])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/accuracy" in r for r in rows) and any("pairs" in r for r in rows)
