"""Group-relative advantage estimators against hand-computed values."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from rlfoundry.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    clip_advantages,
    compute_advantages,
    group_reward_stats,
)
from rlfoundry.errors import ConfigError, DataError

NAN = float("nan")
EPS = 1e-4
# index: 0  1  2  3  | 4    5    6    | 7    8   | 9   | 10 (in no group)
REWARDS = [1.0, 0.0, 0.0, 1.0, NAN, 2.0, 5.0, 3.0, 3.0, 7.0, 4.0]
GROUPS = [[0, 1, 2, 3], [4, 5, 6], [7, 8], [9]]


def run(name: str, **options) -> list[float]:
    rewards = torch.tensor(REWARDS, dtype=torch.float64)
    groups = [torch.tensor(g) for g in GROUPS]
    out = ADVANTAGE_ESTIMATORS.get(name)(rewards, groups, **options)
    assert out.shape == rewards.shape and out.dtype == torch.float64
    return out.tolist()


def check(got: list[float], expected: list[float]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, abs=1e-12, rel=1e-12)


# Expected values, from the formulas. Group 0: mean 0.5, unbiased std sqrt(1/3).
# Group 1: the NaN sample is excluded; valid {2, 5}: mean 3.5, unbiased std sqrt(4.5).
# Group 2 {3, 3} has zero std and group 3 is a singleton: advantage 0. Sample 10: 0.
S0, S1 = math.sqrt(1 / 3), math.sqrt(4.5)
TAIL = [0.0, 0.0, 0.0, 0.0]  # samples 7, 8, 9, 10


def test_grpo_group_scaling():
    a, b = 0.5 / (S0 + EPS), 1.5 / (S1 + EPS)
    check(run("grpo"), [a, -a, -a, a, 0.0, -b, b] + TAIL)
    assert statistics.stdev([1, 0, 0, 1]) == pytest.approx(S0)  # unbiased, as documented
    check(run("grpo", scale_rewards="group"), run("grpo"))


def test_grpo_batch_scaling():
    valid = [1.0, 0.0, 0.0, 1.0, 2.0, 5.0, 3.0, 3.0, 7.0]  # grouped, non-NaN rewards
    s = statistics.stdev(valid)
    check(
        run("grpo", scale_rewards="batch"),
        [0.5 / (s + EPS), -0.5 / (s + EPS), -0.5 / (s + EPS), 0.5 / (s + EPS), 0.0]
        + [-1.5 / (s + EPS), 1.5 / (s + EPS)]
        + TAIL,
    )


def test_grpo_no_scaling_and_dr_grpo():
    expected = [0.5, -0.5, -0.5, 0.5, 0.0, -1.5, 1.5] + TAIL
    check(run("grpo", scale_rewards="none"), expected)
    check(run("dr_grpo"), expected)


def test_grpo_custom_eps():
    check(run("grpo", eps=0.5)[:2], [0.5 / (S0 + 0.5), -0.5 / (S0 + 0.5)])


def test_rloo():
    # r_i minus the mean of the other valid rewards of its group
    expected = [
        1 - (0 + 0 + 1) / 3,
        0 - (1 + 0 + 1) / 3,
        0 - (1 + 0 + 1) / 3,
        1 - (1 + 0 + 0) / 3,
        0.0,  # NaN reward
        2 - 5,
        5 - 2,
    ] + TAIL
    check(run("rloo"), expected)
    check(run("rloo")[:4], [2 / 3, -2 / 3, -2 / 3, 2 / 3])


def test_all_nan_group_and_no_groups():
    rewards = torch.tensor([NAN, NAN, 1.0], dtype=torch.float64)
    for name in ("grpo", "rloo", "dr_grpo"):
        out = ADVANTAGE_ESTIMATORS.get(name)(rewards, [torch.tensor([0, 1])])
        assert out.tolist() == [0.0, 0.0, 0.0]
        assert ADVANTAGE_ESTIMATORS.get(name)(rewards, []).tolist() == [0.0, 0.0, 0.0]
    stats = group_reward_stats(rewards, [])
    assert all(v.item() == 0 for v in stats.values())


def test_exactly_constant_group_gets_zero():
    # 0.1 * 3 / 3 != 0.1 in floating point: still exactly 0, not (tiny / eps)
    rewards = torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64)
    out = ADVANTAGE_ESTIMATORS.get("grpo")(rewards, [torch.tensor([0, 1, 2])])
    assert out.tolist() == [0.0, 0.0, 0.0]


def test_group_reward_stats():
    rewards = torch.tensor(REWARDS, dtype=torch.float64)
    stats = group_reward_stats(rewards, [torch.tensor(g) for g in GROUPS])
    assert stats["num_groups"].item() == 4
    assert stats["mean_group_size"].item() == pytest.approx((4 + 3 + 2 + 1) / 4)
    assert stats["frac_zero_std_groups"].item() == pytest.approx(2 / 4)  # {3, 3} and {7}
    assert stats["reward_std_mean"].item() == pytest.approx((S0 + S1 + 0 + 0) / 4, abs=1e-12)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_clip_advantages():
    adv = torch.tensor([-3.0, -0.5, 0.0, 2.0, 10.0])
    assert clip_advantages(adv, None) is adv
    assert clip_advantages(adv, 2.5).tolist() == [-2.5, -0.5, 0.0, 2.0, 2.5]
    for bad in (0, -1.0, True, "2"):
        with pytest.raises(ConfigError, match="advantage clip"):
            clip_advantages(adv, bad)


def test_compute_advantages():
    rewards = torch.tensor(REWARDS, dtype=torch.float64)
    groups = [torch.tensor(g) for g in GROUPS]
    adv, stats = compute_advantages("dr_grpo", rewards, groups, clip=1.0)
    check(adv.tolist(), [0.5, -0.5, -0.5, 0.5, 0.0, -1.0, 1.0] + TAIL)
    assert stats["num_groups"].item() == 4
    adv, _ = compute_advantages("grpo", rewards, groups, scale_rewards="none")
    check(adv.tolist(), [0.5, -0.5, -0.5, 0.5, 0.0, -1.5, 1.5] + TAIL)
    with pytest.raises(ConfigError, match="did you mean 'scale_rewards'"):
        compute_advantages("grpo", rewards, groups, scale_reward="none")
    with pytest.raises(ConfigError, match="has no option 'scale_rewards'"):
        compute_advantages("rloo", rewards, groups, scale_rewards="none")
    with pytest.raises(ConfigError, match="did you mean 'rloo'"):
        compute_advantages("rlooo", rewards, groups)
    with pytest.raises(ConfigError, match="did you mean 'batch'"):
        compute_advantages("grpo", rewards, groups, scale_rewards="btach")


def test_registry_docs_and_input_checks():
    described = ADVANTAGE_ESTIMATORS.describe()
    assert set(described) == {"grpo", "rloo", "dr_grpo", "grpo_loo_std", "reinforce_pp", "process"}
    assert "Shao" in described["grpo"] and "Ahmadian" in described["rloo"]
    assert "Liu" in described["dr_grpo"] and "Hu et al" in described["reinforce_pp"]
    rewards = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(DataError, match="disjoint"):
        ADVANTAGE_ESTIMATORS.get("grpo")(rewards, [torch.tensor([0, 1]), torch.tensor([1, 2])])
    with pytest.raises(DataError, match="outside"):
        ADVANTAGE_ESTIMATORS.get("grpo")(rewards, [torch.tensor([0, 3])])
    with pytest.raises(DataError, match="1-D"):
        ADVANTAGE_ESTIMATORS.get("rloo")(rewards[None], [torch.tensor([0])])
    # integer rewards are promoted to float
    out = ADVANTAGE_ESTIMATORS.get("dr_grpo")(torch.tensor([1, 3]), [torch.tensor([0, 1])])
    assert out.tolist() == [-1.0, 1.0]
