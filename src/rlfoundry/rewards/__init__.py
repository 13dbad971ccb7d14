"""Reward functions for online RL (GRPO): a registry, built-ins and a batch runner.

A reward function is ``fn(prompts, completions, **columns) -> list[float | None]``; see
:mod:`rlfoundry.rewards.runner` for the contract and :func:`compute_rewards` for how several
are weighted and combined, :mod:`rlfoundry.rewards.builtin` for the built-ins, and
:mod:`rlfoundry.rewards.code_execution` for the sandboxed code-execution reward.
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
from rlfoundry.rewards.code_execution import code_execution, extract_code
from rlfoundry.rewards.runner import (
    ON_ERROR,
    REWARDS,
    NonFiniteRewardError,
    RewardError,
    RewardFunction,
    RewardResult,
    RewardSpec,
    Scores,
    compute_rewards,
    resolve_reward,
    resolve_rewards,
)
from rlfoundry.rewards.timeout import RewardTimeout, call_with_timeout

__all__ = [
    "ON_ERROR",
    "REWARDS",
    "THINK_ANSWER_PATTERN",
    "NonFiniteRewardError",
    "RewardError",
    "RewardFunction",
    "RewardResult",
    "RewardSpec",
    "RewardTimeout",
    "Scores",
    "call_with_timeout",
    "code_execution",
    "compute_rewards",
    "extract_code",
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
