"""The ``reward_model`` reward: score GRPO completions with a trained reward model.

``rewards: [{name: reward_model, args: {path: runs/rm/final}}]`` scores each (prompt,
completion) with a sequence-classification model that has one output (``num_labels=1``): the
``final/`` of an ``algorithm.name: reward_model`` run, or any local Hugging Face reward model.
The model is loaded once per (directory, device, dtype) and kept for the process, in eval mode
with gradients off; samples are scored in batches of ``batch_size`` on ``device`` (``auto``:
the GPU of this rank, ``cuda:LOCAL_RANK``, when CUDA is available, else the CPU: the device
the ``hf`` rollout engine generates on). The function runs in the trainer's process (the
model stays loaded; a worker process would reload it every call).

Rows are tokenized as the preference pipeline tokenizes pairs (see
:func:`rlfoundry.models.reward.encode_pairs`), so a model trained here scores GRPO samples in
the layout it was trained on. A missing directory, or a model without a scalar head, is a
``ConfigError`` when the config loads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlfoundry.errors import ConfigError
from rlfoundry.rewards.calls import IN_PROCESS_ATTR
from rlfoundry.rewards.runner import REWARDS

NORMALIZE = ("none", "sigmoid")
DEVICES = ("auto", "cpu", "cuda")
_CACHE: dict[tuple[str, str, str, float], tuple[Any, Any]] = {}


def check_options(path: Any = None, batch_size: Any = 32, normalize: Any = "none",
                  device: Any = "auto", dtype: Any = "float32", max_length: Any = None) -> None:
    """``ConfigError`` for options the reward cannot use, the model directory included
    (run by :func:`~rlfoundry.rewards.resolve_reward`, so when the config loads)."""
    from rlfoundry.models.reward import check_scoring_model

    check_values(path, batch_size, normalize, device, dtype, max_length)
    check_scoring_model(str(path), "reward_model: args.path")


def check_values(path: Any, batch_size: Any, normalize: Any, device: Any, dtype: Any,
                 max_length: Any) -> None:
    """The option checks that need no file system."""
    from rlfoundry.models.loading import DTYPES

    if path is None:
        raise ConfigError("reward_model: args.path is required: the directory of a reward model "
                          "(e.g. the final/ of an algorithm.name: reward_model run)")
    for key, value in (("batch_size", batch_size), ("max_length", max_length)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"reward_model: args.{key} must be an integer >= 1, got {value!r}")
    if batch_size is None:
        raise ConfigError("reward_model: args.batch_size must be an integer >= 1, got None")
    for key, value, allowed in (("normalize", normalize, NORMALIZE), ("device", device, DEVICES),
                                ("dtype", dtype, tuple(DTYPES))):
        if value not in allowed:
            raise ConfigError(f"reward_model: args.{key} must be one of {', '.join(allowed)}, "
                              f"got {value!r}")


def rollout_device(device: str = "auto") -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is available (the rank's GPU), else the CPU."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("reward_model: args.device is 'cuda' but no CUDA device is available")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))


def cached_model(path: str, device: torch.device, dtype: str = "float32"):
    """``(model, tokenizer)`` of the reward model at ``path`` on ``device``, loaded on first
    use and kept (a directory rewritten since is loaded again)."""
    from rlfoundry.models.reward import check_scoring_model, load_scoring_model

    if not Path(path).is_dir():
        check_scoring_model(str(path), "reward_model: args.path")  # raises, naming the option
    directory = Path(path).resolve()
    stamp = max((f.stat().st_mtime for f in directory.iterdir() if f.is_file()), default=0.0)
    key = (str(directory), str(device), dtype, stamp)
    if key not in _CACHE:
        for old in [k for k in _CACHE if k[:3] == key[:3]]:
            del _CACHE[old]
        model, tokenizer = load_scoring_model(str(path), dtype, "reward_model: args.path")
        _CACHE[key] = (model.to(device), tokenizer)
    return _CACHE[key]


@REWARDS.register("reward_model")
def reward_model(
    prompts: Sequence[Any],
    completions: Sequence[str],
    *,
    path: str | None = None,
    batch_size: int = 32,
    normalize: str = "none",
    device: str = "auto",
    dtype: str = "float32",
    max_length: int | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """The score of a trained reward model (``path``: its directory) for each completion.

    ``batch_size`` rows per forward; ``normalize``: ``none`` (the raw score) or ``sigmoid``
    (``sigmoid(score)`` in (0, 1), on the scale of 0/1 rewards it may be weighted with);
    ``device``: ``auto``/``cpu``/``cuda``; ``dtype``: the model's dtype; ``max_length``: rows
    longer than this keep their last tokens (default: no limit)."""
    from rlfoundry.data.prompts import render_prompt
    from rlfoundry.models.reward import score_texts

    check_values(path, batch_size, normalize, device, dtype, max_length)
    where = rollout_device(device)
    model, tokenizer = cached_model(str(path), where, dtype)
    texts = [p if isinstance(p, str) else render_prompt(tokenizer, p) for p in prompts]
    scores = score_texts(model, tokenizer, texts, list(completions), batch_size=batch_size,
                         max_length=max_length, device=where)
    if normalize == "sigmoid":
        scores = torch.sigmoid(scores)
    return [float(s) for s in scores.tolist()]


setattr(reward_model, IN_PROCESS_ATTR, True)  # keep the loaded model (and the GPU) in the trainer
reward_model.check_options = check_options  # type: ignore[attr-defined]  (run by resolve_reward)
