"""Evaluate a model on an environment: what ``rlfoundry eval --environment NAME`` runs.

Each prompt row is played as an episode (greedy for accuracy, ``num_samples`` sampled
episodes per row for pass@k) by the same :class:`EpisodeRunner` GRPO trains with; an
episode's reward is the environment's final reward plus any reward functions on its final
model turn, exactly as in training. An episode is correct when its reward is at least
``threshold``; pass@k uses the unbiased estimator of :func:`rlfoundry.evaluation.pass_at_k`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlfoundry.environments.base import Environment
from rlfoundry.environments.build import row_of
from rlfoundry.environments.episodes import EpisodeRunner, EpisodeSettings
from rlfoundry.errors import ConfigError
from rlfoundry.rewards import compute_rewards
from rlfoundry.rollout import HFSampler, Rollout, SamplingParams, concat_rollouts
from rlfoundry.rollout.scoring import add_environment_rewards, episode_metrics, sample_columns


def play(runner: EpisodeRunner, examples: list[Any], num_samples: int, params: SamplingParams,
         generator: torch.Generator, batch_size: int) -> Rollout:
    """``num_samples`` episodes of each row, ``batch_size`` rows per batch."""
    parts = []
    for start in range(0, len(examples), batch_size):
        rows = examples[start:start + batch_size]
        part = runner.run([row_of(ex) for ex in rows], [ex.location for ex in rows], num_samples,
                          generator, params)
        part.prompt_index = [start + i for i in part.prompt_index]
        parts.append(part)
    return concat_rollouts(parts)


def episode_rewards(rollout: Rollout, examples: list[Any], reward_fns) -> torch.Tensor:
    """Each episode's total reward (environment + reward functions on the final turn; NaN
    where neither gave one)."""
    rows = [examples[i] for i in rollout.prompt_index]
    texts = [e.final_text for e in rollout.episodes]
    ids = [f"{ex.location}#{k}" for k, ex in enumerate(rows)]
    result = compute_rewards(reward_fns, [str(ex.prompt) for ex in rows], texts,
                             sample_columns(rows, rollout), on_error="raise", sample_ids=ids)
    return add_environment_rewards(result, rollout).total


def evaluate_episodes(model, tokenizer, dataset, env: Environment, reward_fns: Sequence = (), *,
                      settings: EpisodeSettings | None = None, ks: Sequence[int] = (),
                      num_samples: int = 0, temperature: float = 1.0, max_new_tokens: int = 64,
                      threshold: float = 1.0, seed: int = 0, batch_size: int = 16, show: int = 3
                      ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy accuracy, mean reward and ``env/...`` metrics, plus pass@k for each k in ``ks``
    from ``num_samples`` sampled episodes per row; returns ``(metrics, samples)`` (the first
    ``show`` greedy episodes' conversations)."""
    from rlfoundry.data.lengths import model_context
    from rlfoundry.evaluation import pass_at_k

    if ks and num_samples < max(ks):
        raise ConfigError(f"--num-samples ({num_samples}) must be at least the largest k ({max(ks)})")
    examples = list(dataset)
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    greedy = SamplingParams(0.0, 1.0, 0, max_new_tokens)
    runner = EpisodeRunner(env, HFSampler(model, tokenizer), tokenizer, greedy, settings,
                           context_limit=model_context(model, tokenizer))
    played = play(runner, examples, 1, greedy, generator, batch_size)
    rewards = episode_rewards(played, examples, list(reward_fns))
    scored = rewards.nan_to_num(nan=float("-inf"))
    metrics = {"num_prompts": float(len(examples)),
               "accuracy": float((scored >= threshold).double().mean()),
               "reward_mean": float(rewards[~torch.isnan(rewards)].mean()) if (~torch.isnan(rewards)).any() else 0.0,
               **{k: float(v) for k, v in episode_metrics(played).items()}}
    if ks:
        sampled = play(runner, examples, num_samples, SamplingParams(temperature, 1.0, 0, max_new_tokens),
                       generator, batch_size)
        correct = (episode_rewards(sampled, examples, list(reward_fns)).nan_to_num(nan=float("-inf"))
                   >= threshold).view(len(examples), num_samples)
        counts = correct.sum(-1).tolist()
        for k in ks:
            metrics[f"pass@{k}"] = sum(pass_at_k(num_samples, c, k) for c in counts) / len(counts)
    samples = [{"row": examples[i].location, "messages": played.episodes[i].messages,
                "outcome": played.episodes[i].outcome, "reward": float(rewards[i])}
               for i in range(min(show, len(examples)))]
    return metrics, samples
