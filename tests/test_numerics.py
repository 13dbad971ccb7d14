"""NaN/inf in the loss, the rewards and the advantages under on_nonfinite: raise | skip_batch,
with counters; log-ratio and KL clamping; zero-variance groups."""

import math

import pytest
import torch

from rlfoundry.algorithms.advantages import compute_advantages
from rlfoundry.algorithms.grpo import GRPOTrainer
from rlfoundry.algorithms.loss_functions import GRPOLossFn
from rlfoundry.algorithms.loss_functions.grpo import kl_estimate
from rlfoundry.errors import NonFiniteError
from tests.test_dpo_trainer import NaNLoss, float64_trainer, run_config
from tests.test_grpo_trainer import config, params, records, trainer64

CALLS = {"n": 0}


def nan_on_first_call(prompts, completions, **kw):
    """NaN for every sample of the first rollout, a dense reward afterwards."""
    CALLS["n"] += 1
    if CALLS["n"] == 1:
        return [math.nan] * len(completions)
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def inf_reward(prompts, completions, **kw):
    return [math.inf] * len(completions)


def huge_reward(prompts, completions, **kw):
    return [1e308] * len(completions)


def reward_config(tmp_path, name, **training):
    return config(tmp_path, {"rewards": [{"name": f"tests.test_numerics:{name}", "weight": 10.0}]},
                  **training)


@pytest.mark.parametrize("name, match", [
    ("inf_reward", r"step 1: non-finite rewards \(reward 'tests.test_numerics:inf_reward' returned "
                   r"inf for sample '<python>\[row \d+\]#0'"),
    ("huge_reward", r"step 1: non-finite rewards \(the weighted total of .* is inf\)"),
])
def test_nonfinite_rewards_raise_with_step_function_and_sample(tmp_path, name, match):
    t = trainer64(reward_config(tmp_path, name))
    with pytest.raises(NonFiniteError, match=match):
        t.train()
    assert not (tmp_path / "checkpoints").exists()


def test_nonfinite_rewards_skip_the_step_and_are_counted(tmp_path):
    CALLS["n"] = 0
    t = trainer64(reward_config(tmp_path, "nan_on_first_call", max_steps=3,
                                on_nonfinite="skip_batch"))
    before = params(t.model).clone()
    original = t.optimizer_step
    seen = []

    def spy(indices):
        seen.append(params(t.model).clone())
        return original(indices)

    t.optimizer_step = spy
    metrics = t.train()
    recs = records(tmp_path)
    assert recs[0]["skipped_steps"] == 1 and recs[0]["skipped_steps/rewards"] == 1
    assert "loss" not in recs[0]  # nothing was computed for the skipped step
    assert torch.equal(seen[0], before)  # step 2 started from the untouched weights
    assert metrics["skipped_steps"] == 1 and "loss" in recs[2]
    assert not torch.equal(params(t.model), before)  # steps 2 and 3 trained


class InfAdvantages(GRPOTrainer):
    def compute_advantages(self, rewards, groups):
        adv, stats = super().compute_advantages(rewards, groups)
        adv[3] = math.inf
        return adv, stats


def test_nonfinite_advantages_raise_or_skip(tmp_path):
    with pytest.raises(NonFiniteError, match=r"step 1: non-finite advantages \(1 of 16, first sample 3"):
        trainer64(config(tmp_path / "a"), cls=InfAdvantages).train()
    t = trainer64(config(tmp_path / "b", on_nonfinite="skip_batch"), cls=InfAdvantages)
    before = params(t.model).clone()
    metrics = t.train()
    assert metrics["skipped_steps"] == 2 and metrics["skipped_steps/advantages"] == 2
    assert torch.equal(params(t.model), before)


def test_nonfinite_loss_skip_is_counted_by_cause_and_survives_resume(tmp_path):
    cfg = run_config(tmp_path, on_nonfinite="skip_batch", max_steps=2, save_every=1)
    t = float64_trainer(cfg, loss_fn=NaNLoss({}))
    metrics = t.train()
    assert metrics["skipped_steps"] == 2 and metrics["skipped_steps/loss"] == 2
    assert math.isnan(metrics["loss"])  # the bad values are still logged
    cfg["training"].update(resume="auto", max_steps=3)
    resumed = float64_trainer(cfg, loss_fn=NaNLoss({}))
    assert resumed.train()["skipped_steps/loss"] == 3


def test_log_ratio_clamp_keeps_the_loss_finite():
    logp = torch.zeros(2, 3, requires_grad=True)
    batch = {"response_mask": torch.ones(2, 3), "advantages": torch.tensor([-1.0, 1.0]),
             "old_logprobs": torch.full((2, 3), -200.0)}  # log-ratio +200: exp overflows
    loss, metrics = GRPOLossFn({})(batch, {"logprobs": logp})
    assert torch.isfinite(loss) and torch.isfinite(metrics["ratio_mean"])
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    unclamped, _ = GRPOLossFn({"log_ratio_clamp": None})(batch, {"logprobs": logp})
    assert not torch.isfinite(unclamped)
    gspo, _ = GRPOLossFn({"loss_type": "gspo"})(batch, {"logprobs": logp})
    assert torch.isfinite(gspo)


def test_kl_clamp_bounds_the_estimate():
    logp, ref = torch.zeros(4), torch.tensor([-1e4, 1e4, 0.0, 50.0])
    clamped = kl_estimate(logp, ref, "k3", clamp=10.0)
    assert torch.isfinite(clamped).all() and clamped.max() <= math.exp(10)
    assert not torch.isfinite(kl_estimate(logp, ref, "k3", clamp=None)).all()


def test_zero_variance_groups_get_zero_advantage_and_train_finitely(tmp_path):
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, math.nan])
    groups = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])]
    for name in ("grpo", "rloo", "dr_grpo"):
        adv, stats = compute_advantages(name, rewards, groups)
        assert adv[:3].tolist() == [0.0, 0.0, 0.0] and torch.isfinite(adv).all()
    assert stats["frac_zero_std_groups"] == 0.5
    t = trainer64(config(tmp_path, {"rewards": [{"name": "tests.test_numerics:constant"}]}, max_steps=1))
    before = params(t.model).clone()
    metrics = t.train()
    assert metrics["frac_zero_std_groups"] == 1.0 and metrics["loss"] == 0.0
    assert metrics["grad_norm"] == 0.0 and metrics["skipped_steps"] == 0
    assert torch.equal(params(t.model), before)  # no signal, no update (AdamW with zero grads)


def constant(prompts, completions, **kw):
    return [0.5] * len(completions)
