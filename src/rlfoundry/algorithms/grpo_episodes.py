"""GRPO on multi-turn episodes: the trainer's side of ``environment:`` (stage 1 for
environments, and their held-out evaluation). The episode loop itself is
:mod:`rlfoundry.environments.episodes`; the scoring and update stages read the Rollout it
makes (``model_mask``, ``episodes``) and need nothing else from here."""

from __future__ import annotations

from typing import Any

from rlfoundry.data.lengths import model_context
from rlfoundry.environments.base import Environment
from rlfoundry.environments.build import build_environment, episode_settings, row_of
from rlfoundry.environments.episodes import EpisodeRunner, EpisodeSettings
from rlfoundry.rollout.base import Rollout, SamplingParams
from rlfoundry.rollout.scoring import decode_responses


def episode_runner(config, environment: Environment | None, backend, tokenizer,
                   sampling: SamplingParams, model) -> EpisodeRunner | None:
    """The run's episode runner: ``environment`` (an instance passed to the trainer) or the
    one ``config.environment`` names; None for single-turn GRPO."""
    env_cfg = config.environment
    if environment is None and env_cfg is None:
        return None
    if environment is None:
        environment = build_environment(env_cfg)
    if not isinstance(environment, Environment):
        from rlfoundry.errors import ConfigError

        raise ConfigError(f"GRPOTrainer(environment=...) needs an Environment instance, got "
                          f"{type(environment).__name__}")
    on_error = config.algorithm.reward_error
    settings = episode_settings(env_cfg, on_error) if env_cfg is not None else EpisodeSettings(on_error=on_error)
    return EpisodeRunner(environment, backend, tokenizer, sampling, settings,
                         context_limit=model_context(model, tokenizer))


def run_episodes(runner: EpisodeRunner, examples: list[Any], group_size: int, generator,
                 params: SamplingParams | None = None) -> Rollout:
    """``group_size`` episodes of each prompt row (``examples``: PromptExample rows)."""
    return runner.run([row_of(ex) for ex in examples], [ex.location for ex in examples],
                      group_size, generator, params)


def greedy_episode_responses(runner: EpisodeRunner, examples: list[Any], sampling: SamplingParams,
                             size: int, generator, dist) -> tuple[list[str], Rollout | None]:
    """Greedy episodes of the held-out rows (each rank its share, gathered in order): the
    final model turns, and (rank 0) the episodes' Rollout for the ``env/...`` metrics."""
    from rlfoundry.rollout.base import concat_rollouts
    from rlfoundry.training import distributed
    from rlfoundry.training.distributed import shard_range

    greedy = SamplingParams(0.0, 1.0, 0, sampling.max_new_tokens, list(sampling.stop_strings))
    share = shard_range(len(examples), dist.rank, dist.world_size)
    parts = [run_episodes(runner, examples[s:min(s + size, share.stop)], 1, generator, greedy)
             for s in range(share.start, share.stop, size)]
    if dist.enabled:
        parts = [p for ranks in distributed.all_gather_object(parts) for p in ranks]
    if not parts:
        return [], None
    rollout = concat_rollouts(parts)
    return decode_responses(rollout, None), rollout


def evaluate_environment(runner: EpisodeRunner, reward_fns: list[tuple[str, Any, float]],
                         examples: list[Any], sampling: SamplingParams, size: int, generator,
                         dist, timeout: float | None, threshold: float = 1.0) -> dict[str, float]:
    """Held-out metrics of greedy episodes (every rank gets rank 0's): ``reward_mean`` (the
    environment's reward plus the reward functions on the final turn), ``reward/<name>``,
    ``accuracy`` (share of episodes whose reward is at least ``threshold``) and ``env/...``."""
    from rlfoundry.rewards import compute_rewards
    from rlfoundry.rollout.scoring import (
        add_environment_rewards,
        episode_metrics,
        nanmean,
        sample_columns,
    )
    from rlfoundry.training import distributed

    responses, rollout = greedy_episode_responses(runner, examples, sampling, size, generator, dist)
    metrics = None
    if dist.is_main and rollout is not None:
        prompts = [str(ex.prompt) for ex in examples]
        result = compute_rewards(reward_fns, prompts, responses, sample_columns(examples, rollout),
                                 on_error="zero", timeout=timeout)
        result = add_environment_rewards(result, rollout)
        total = result.total
        metrics = {"reward_mean": float(nanmean(total)),
                   **{f"reward/{k}": float(nanmean(v)) for k, v in result.per_function.items()},
                   "accuracy": float((total.nan_to_num(nan=-float("inf")) >= threshold).double().mean()),
                   **{k: float(v) for k, v in episode_metrics(rollout).items()}}
    return distributed.broadcast_object(metrics) if dist.enabled else (metrics or {})
