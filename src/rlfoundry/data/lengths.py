"""Sequence lengths bounded by the model's context.

A model attends over at most ``max_position_embeddings`` tokens (or its tokenizer's
``model_max_length``, when smaller). Without a bound, one 200k-character prompt makes the
rollout allocate tens of GB, and ``max_new_tokens`` above the context generates positions the
model was never trained on. The trainers call these checks once, when their data is set up:

* GRPO (:func:`tokenize_grpo_prompts`): ``algorithm.sampling.max_new_tokens`` must be below the
  context; prompts are limited to ``context - max_new_tokens`` tokens (and to
  ``data.max_prompt_length`` when set), applying ``data.truncation`` to longer prompts:
  ``truncate_prompt`` keeps a prompt's end, ``drop`` leaves the row out (counted and logged),
  ``error`` raises a :class:`DataError` naming the row (file:line).
* DPO (:func:`check_max_length`): ``data.max_length`` must fit the context; rows longer than
  ``data.max_length`` then follow ``data.truncation`` as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlfoundry.errors import ConfigError

if TYPE_CHECKING:
    from rlfoundry.config.schema import RunConfig
    from rlfoundry.data.prompts import PromptDataset

CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
NO_LIMIT = 10**9  # tokenizers without a limit report a huge model_max_length


def model_context(model: Any, tokenizer: Any = None) -> int | None:
    """Tokens the model can attend over: its config's position limit, or the tokenizer's
    ``model_max_length`` when that is smaller; None when neither says."""
    limits = []
    config = getattr(model, "config", None)
    for name in CONTEXT_ATTRIBUTES:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            limits.append(value)
            break
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < NO_LIMIT:
        limits.append(declared)
    return min(limits) if limits else None


def grpo_prompt_limit(cfg: RunConfig, model: Any, tokenizer: Any = None) -> int | None:
    """Longest prompt in tokens: the context minus ``max_new_tokens``, and
    ``data.max_prompt_length`` when that is smaller. ConfigError when no prompt token fits."""
    context = model_context(model, tokenizer)
    new = cfg.algorithm.sampling.max_new_tokens
    limit = cfg.data.max_prompt_length
    if context is None:
        return limit
    if new >= context:
        raise ConfigError(
            f"algorithm.sampling.max_new_tokens ({new}) must be less than the model's context "
            f"({context} tokens: {_context_source(model, tokenizer)}), leaving room for the "
            "prompt; lower max_new_tokens")
    room = context - new
    return room if limit is None else min(limit, room)


def tokenize_grpo_prompts(cfg: RunConfig, model: Any, tokenizer: Any, train: PromptDataset,
                          evals: PromptDataset | None) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of the train and eval prompts, bounded by :func:`grpo_prompt_limit` under
    ``data.truncation``."""
    limit = grpo_prompt_limit(cfg, model, tokenizer)
    why = _limit_source(cfg, model, tokenizer, limit)
    policy = cfg.data.truncation
    train_ids = train.tokenize(tokenizer, max_prompt_length=limit, truncation=policy, why=why)
    eval_ids = (evals.tokenize(tokenizer, max_prompt_length=limit, truncation=policy, why=why)
                if evals is not None else [])
    return train_ids, eval_ids


def check_max_length(cfg: RunConfig, model: Any, tokenizer: Any = None) -> None:
    """ConfigError when ``data.max_length`` (prompt + completion) exceeds the model's context."""
    context = model_context(model, tokenizer)
    if context is not None and cfg.data.max_length > context:
        raise ConfigError(
            f"data.max_length ({cfg.data.max_length}) is longer than the model's context "
            f"({context} tokens: {_context_source(model, tokenizer)}); set data.max_length to "
            f"{context} or less")


def _context_source(model: Any, tokenizer: Any) -> str:
    config = getattr(model, "config", None)
    parts = [f"{name}={getattr(config, name)}" for name in CONTEXT_ATTRIBUTES
             if isinstance(getattr(config, name, None), int)][:1]
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < NO_LIMIT:
        parts.append(f"tokenizer model_max_length={declared}")
    return ", ".join(parts) or "unknown"


def _limit_source(cfg: RunConfig, model: Any, tokenizer: Any, limit: int | None) -> str:
    if limit is None:
        return ""
    if cfg.data.max_prompt_length == limit:
        return "data.max_prompt_length"
    return (f"the model's context {model_context(model, tokenizer)} minus "
            f"algorithm.sampling.max_new_tokens {cfg.algorithm.sampling.max_new_tokens}")
