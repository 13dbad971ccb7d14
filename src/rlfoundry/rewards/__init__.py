"""Reward functions for online RL (GRPO): a registry, built-ins and a batch runner.

A reward function is ``fn(prompts, completions, **columns) -> list[float | None]``; see
:mod:`rlfoundry.rewards.runner` for the contract and :func:`compute_rewards` for how several
are weighted and combined, :mod:`rlfoundry.rewards.builtin` for the built-ins, and
:mod:`rlfoundry.rewards.code_execution` for the sandboxed code-execution reward, and
:mod:`rlfoundry.rewards.calls` / :mod:`rlfoundry.rewards.worker` for where a function runs
(a killable worker process under ``algorithm.reward_timeout``).
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
from rlfoundry.rewards.calls import IN_PROCESS_ATTR, RewardCallError, in_process
from rlfoundry.rewards.code_execution import code_execution, extract_code
from rlfoundry.rewards.reward_model import reward_model
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

# code_execution runs every program in a process of its own that it kills at its own time
# limit; it needs no worker around it (and its threads and sandbox probes stay in one place)
setattr(code_execution, IN_PROCESS_ATTR, True)

__all__ = [
    "ON_ERROR",
    "REWARDS",
    "THINK_ANSWER_PATTERN",
    "NonFiniteRewardError",
    "RewardCallError",
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
    "in_process",
    "length_penalty",
    "math_accuracy",
    "math_equal",
    "overlong_penalty",
    "resolve_reward",
    "reward_model",
    "resolve_rewards",
]
