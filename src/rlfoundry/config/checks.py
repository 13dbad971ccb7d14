"""Option combinations that cannot work, rejected when the config loads (with key paths).

Checks that need a registry (losses, rewards, groupings) live in each trainer's
``validate_config``; these only read the config itself.
"""

from __future__ import annotations

from rlfoundry.config.schema import RunConfig
from rlfoundry.errors import ConfigError


def check_combinations(cfg: RunConfig, kind: str) -> None:
    """Raise :class:`ConfigError` for the first impossible combination, naming its keys.
    ``kind`` is the trainer's kind ('dpo', 'grpo', 'sft' or a custom one)."""
    data, algo = cfg.data, cfg.algorithm
    if kind != "grpo" and data.max_prompt_length is not None and data.max_prompt_length >= data.max_length:
        raise ConfigError(
            f"data.max_prompt_length ({data.max_prompt_length}) must be less than data.max_length "
            f"({data.max_length}), so that a completion fits after the prompt (GRPO limits "
            f"completions with algorithm.sampling.max_new_tokens instead)"
        )
    if cfg.reference.precompute and kind != "dpo":
        raise ConfigError(
            f"reference.precompute: precomputed reference log-probs are a DPO feature, and "
            f"algorithm '{algo.name}' is a {kind} trainer; remove reference.precompute"
        )
    if kind != "grpo":
        return
    if algo.sampling.temperature == 0:
        raise ConfigError(
            "algorithm.sampling.temperature: 0 (greedy) makes all completions of a prompt the "
            "same, so every group has zero reward variance and zero advantage; use a temperature "
            "> 0 (evaluation is greedy anyway)"
        )
    adv = algo.advantage
    if "scale_rewards" in adv.model_fields_set and adv.estimator in ("rloo", "dr_grpo"):
        raise ConfigError(
            f"algorithm.advantage.scale_rewards applies to the 'grpo' estimator only; estimator "
            f"'{adv.estimator}' never scales rewards, so remove scale_rewards"
        )
