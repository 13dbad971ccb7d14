"""Evaluate a model: accuracy and pass@k on prompts with a reward, preference accuracy on pairs.

What ``rlfoundry eval`` and the quickstart call. Generation goes through the same
:class:`~rlfoundry.rollout.HFSampler` GRPO trains with, scoring through the same reward
functions (:func:`~rlfoundry.rewards.compute_rewards`), and pair scoring through the same
per-sequence log-probs DPO trains on, so an evaluation reads exactly like a training run's
``eval/...`` metrics.

- accuracy: the share of prompts whose greedy completion scores at least ``threshold``;
- pass@k: from ``n`` sampled completions per prompt of which ``c`` score at least
  ``threshold``, the unbiased estimator ``1 - C(n - c, k) / C(n, k)`` (Chen et al. 2021,
  "Evaluating Large Language Models Trained on Code"), averaged over prompts;
- preference accuracy: the share of pairs the model ranks chosen over rejected (ties count
  one half): by DPO's implicit reward ``(log pi - log pi_ref)(chosen) - (...)(rejected)``
  when a reference model is given, else by the plain log-probs ``log pi(chosen)`` vs
  ``log pi(rejected)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlfoundry.algorithms.loss_functions.dpo import preference_accuracy as _wins
from rlfoundry.algorithms.reference import sequence_logps
from rlfoundry.data import PreferenceDataset, PromptDataset, collate_preference, render_prompt
from rlfoundry.data.lengths import model_context
from rlfoundry.data.prompts import tokenize_prompt
from rlfoundry.errors import ConfigError, DataError
from rlfoundry.rewards import compute_rewards
from rlfoundry.rollout import HFSampler, SamplingParams

BUILTIN = "builtin:"
RewardFns = Sequence[tuple[str, Any, float]]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``n`` samples, ``c`` correct; ``1 - C(n-c, k)/C(n, k)``,
    computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` to stay exact for large ``n``."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _split_builtin(spec: str) -> str | None:
    return spec[len(BUILTIN):] if spec.startswith(BUILTIN) else None


def first_rows(dataset, limit: int | None):
    """``dataset`` cut to its first ``limit`` rows (rows keep their file locations)."""
    if limit is not None:
        dataset.examples = dataset.examples[:limit]
    return dataset


def load_prompts(spec: str, limit: int | None = None) -> PromptDataset:
    """Prompt rows from a file or a built-in set (its held-out ``eval`` split)."""
    return _load_rows(spec, limit, "--prompts", PromptDataset)


def load_pairs(spec: str, limit: int | None = None) -> PreferenceDataset:
    """Preference rows from a file or a built-in set (its held-out ``eval`` split)."""
    return _load_rows(spec, limit, "--pairs", PreferenceDataset)


def _load_rows(spec: str, limit: int | None, option: str, cls):
    """``cls`` rows for the CLI ``option`` from a file or a built-in set of the right kind."""
    from rlfoundry.data.synthetic import builtin_dataset, builtin_kind

    name = _split_builtin(spec)
    if name is None:
        if not Path(spec).is_file():
            raise DataError(f"{option}: '{spec}' is no file and no built-in set (builtin:NAME); "
                            f"relative paths are read from the working directory, {Path.cwd()}")
        return first_rows(cls.from_rows(Path(spec)), limit)
    preference = builtin_kind(name) == "preference"
    if preference and cls is PromptDataset:
        raise ConfigError(f"{option}: 'builtin:{name}' is a preference set; pass it to --pairs")
    if not preference and cls is PreferenceDataset:
        raise ConfigError(f"{option}: 'builtin:{name}' is not a preference set "
                          f"(try builtin:sort_preferences)")
    return cls.from_rows(builtin_dataset(name, "eval", limit, seed=0))


def generate(model, tokenizer, prompts: Sequence[list[int]], num_samples: int,
             params: SamplingParams, seed: int = 0, batch_size: int = 64) -> list[str]:
    """``num_samples`` completions per prompt (prompt-major), decoded without special tokens."""
    sampler = HFSampler(model, tokenizer)
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rollout = sampler.generate(list(prompts[start:start + batch_size]), num_samples, params, generator)
        texts += tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
    return texts


def score(reward_fns: RewardFns, dataset: PromptDataset, prompts: list[str], completions: list[str],
          num_samples: int) -> torch.Tensor:
    """Total rewards ``[P, num_samples]`` (NaN where no reward function gave one)."""
    examples = [ex for ex in dataset for _ in range(num_samples)]
    keys = dict.fromkeys(k for ex in examples for k in ex.extras)
    columns = {k: [ex.extras.get(k) for ex in examples] for k in keys}
    ids = [f"{ex.location}#{i % num_samples}" for i, ex in enumerate(examples)]
    repeated = [p for p in prompts for _ in range(num_samples)]
    result = compute_rewards(reward_fns, repeated, completions, columns, on_error="raise", sample_ids=ids)
    return result.total.view(len(dataset), num_samples)


def evaluate_prompts(model, tokenizer, dataset: PromptDataset, reward_fns: RewardFns, *,
                     ks: Sequence[int] = (), num_samples: int = 0, temperature: float = 1.0,
                     top_p: float = 1.0, max_new_tokens: int = 64, threshold: float = 1.0,
                     seed: int = 0, batch_size: int = 64, show: int = 3
                     ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy accuracy and mean reward, plus pass@k for each k in ``ks`` from ``num_samples``
    sampled completions per prompt; returns ``(metrics, samples)`` where ``samples`` are the
    first ``show`` prompts with their greedy completions."""
    if ks and num_samples < max(ks):
        raise ConfigError(f"--num-samples ({num_samples}) must be at least the largest k ({max(ks)})")
    names = ", ".join(name for name, _, _ in reward_fns)
    context = model_context(model, tokenizer)
    if context is not None and max_new_tokens >= context:
        raise ConfigError(f"--max-new-tokens ({max_new_tokens}) must be less than the model's "
                          f"context ({context} tokens)")
    token_ids = dataset.tokenize(tokenizer, None if context is None else context - max_new_tokens)
    prompts = [render_prompt(tokenizer, ex.prompt) for ex in dataset]
    greedy = generate(model, tokenizer, token_ids, 1, SamplingParams(0.0, 1.0, 0, max_new_tokens),
                      seed, batch_size)
    rewards = score(reward_fns, dataset, prompts, greedy, 1)[:, 0]
    valid = ~torch.isnan(rewards)
    if not valid.any():
        raise DataError(f"no prompt got a reward from {names}; the rows need the columns the "
                        "reward reads (e.g. 'answer' for math_accuracy)")
    metrics = {"num_prompts": float(int(valid.sum())),
               "accuracy": float((rewards[valid] >= threshold).double().mean()),
               "reward_mean": float(rewards[valid].mean())}
    if ks:
        params = SamplingParams(temperature, top_p, 0, max_new_tokens)
        sampled = generate(model, tokenizer, token_ids, num_samples, params, seed, batch_size)
        correct = (score(reward_fns, dataset, prompts, sampled, num_samples) >= threshold)[valid]
        counts = correct.sum(-1).tolist()
        for k in ks:
            metrics[f"pass@{k}"] = sum(pass_at_k(num_samples, c, k) for c in counts) / len(counts)
    samples = [{"prompt": prompts[i], "answer": dataset[i].extras.get("answer"),
                "completion": greedy[i], "reward": None if math.isnan(r) else r}
               for i, r in enumerate(rewards[:show].tolist())]
    return metrics, samples


@torch.no_grad()
def pair_margins(model, tokenizer, dataset: PreferenceDataset, reference=None, *,
                 max_length: int = 512, batch_size: int = 16) -> torch.Tensor:
    """Per pair, how much more the model prefers chosen over rejected ``[N]`` (float64): the
    implicit-reward margin against ``reference``, or the log-prob margin without one."""
    pairs = dataset.tokenize(tokenizer, max_length=max_length)
    if not pairs:
        raise DataError("no preference pairs left after tokenization")
    margins = []
    for start in range(0, len(pairs), batch_size):
        batch = collate_preference(pairs[start:start + batch_size], tokenizer.pad_token_id or 0)
        b = batch["input_ids"].shape[0] // 2
        logps = sequence_logps(model, batch).double().cpu()
        if reference is not None:
            logps = logps - sequence_logps(reference, batch).double().cpu()
        margins.append(logps[:b] - logps[b:])
    return torch.cat(margins)


def preference_accuracy(model, tokenizer, dataset: PreferenceDataset, reference=None, *,
                        max_length: int = 512, batch_size: int = 16) -> dict[str, float]:
    """Share of pairs ranked chosen-over-rejected (ties count one half; implicit reward vs
    ``reference``, or plain log-probs without one) and the mean margin."""
    return margin_metrics(pair_margins(model, tokenizer, dataset, reference, max_length=max_length,
                                       batch_size=batch_size))


def margin_metrics(margin: torch.Tensor) -> dict[str, float]:
    """:func:`preference_accuracy`'s figures from per-pair margins."""
    return {"num_pairs": float(margin.numel()),
            "preference_accuracy": float(_wins(margin, torch.zeros_like(margin))),
            "margin_mean": float(margin.mean())}


def pair_samples(model, tokenizer, dataset: PreferenceDataset, margins: torch.Tensor, *,
                 show: int = 3, max_new_tokens: int = 64) -> list[dict[str, Any]]:
    """The first ``show`` pairs with the model's greedy generation for their prompt (what the
    model writes, beside what it was asked to prefer) and their margin."""
    examples = list(dataset)[:show]
    if not examples:
        return []
    context = model_context(model, tokenizer)
    if context is not None and max_new_tokens >= context:
        raise ConfigError(f"--max-new-tokens ({max_new_tokens}) must be less than the model's "
                          f"context ({context} tokens)")
    limit = None if context is None else context - max_new_tokens
    ids = [tokenize_prompt(tokenizer, ex.prompt, limit) for ex in examples]
    completions = generate(model, tokenizer, ids, 1, SamplingParams(0.0, 1.0, 0, max_new_tokens))
    return [{"prompt": ex.prompt, "completion": c, "chosen": ex.chosen, "rejected": ex.rejected,
             "margin": float(m)} for ex, c, m in zip(examples, completions, margins.tolist())]
