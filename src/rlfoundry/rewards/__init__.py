"""Reward functions for online RL (GRPO): a registry, built-ins and a batch runner.

A reward function is ``fn(prompts, completions, **columns) -> list[float | None]``; see
:mod:`rlfoundry.rewards.runner` for the contract and :func:`compute_rewards` for how several
are weighted and combined, and :mod:`rlfoundry.rewards.builtin` for the built-ins.
"""

from rlfoundry.rewards.builtin import (
    THINK_ANSWER_PATTERN,
    exact_match,
    extract_answer,
    format_reward,
    length_penalty,
    math_accuracy,
    math_equal,
    overlong_penalty,
)
from rlfoundry.rewards.runner import (
    ON_ERROR,
    REWARDS,
    NonFiniteRewardError,
    RewardError,
    RewardFunction,
    RewardResult,
    RewardSpec,
    compute_rewards,
    resolve_reward,
    resolve_rewards,
)

__all__ = [
    "ON_ERROR",
    "REWARDS",
    "THINK_ANSWER_PATTERN",
    "NonFiniteRewardError",
    "RewardError",
    "RewardFunction",
    "RewardResult",
    "RewardSpec",
    "compute_rewards",
    "exact_match",
    "extract_answer",
    "format_reward",
    "length_penalty",
    "math_accuracy",
    "math_equal",
    "overlong_penalty",
    "resolve_reward",
    "resolve_rewards",
]
