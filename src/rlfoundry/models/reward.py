"""Reward models: a transformer with a scalar head (``num_labels=1``) that scores a sequence.

A reward model is a Hugging Face sequence-classification model: its score of a right-padded
row is the head's output at the row's last non-padding token (the transformers convention,
which needs ``config.pad_token_id``). :func:`build_reward_model` makes one to train (from a
built-in size or a local causal-LM / reward-model directory); :func:`load_scoring_model`
opens a trained one to score with; :func:`score_texts` scores (prompt, completion) texts
tokenized the way preference pairs are (prompt with the tokenizer's default special tokens,
completion without them plus EOS), so training and scoring see the same token layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rlfoundry.errors import ConfigError
from rlfoundry.models.loading import DTYPES, is_builtin
from rlfoundry.models.tiny import BUILTIN_PREFIX, SIZES, build_model


def build_reward_model(name_or_path: str, tokenizer, dtype: str = "float32", seed: int = 0,
                       key: str = "model.name_or_path") -> torch.nn.Module:
    """A sequence-classification model with a scalar head to train: ``builtin:tiny`` /
    ``builtin:small`` (random init; the same backbone config as the built-in causal LM), or a
    local directory (a causal LM gets a new head, seeded by ``seed``; a reward model keeps its)."""
    from transformers import AutoModelForSequenceClassification, Qwen2ForSequenceClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if is_builtin(name_or_path):
            size = name_or_path[len(BUILTIN_PREFIX):]
            if size not in SIZES:
                raise ConfigError(f"{key}: unknown built-in model '{name_or_path}'; choose from "
                                  f"{[BUILTIN_PREFIX + s for s in SIZES]}")
            config = build_model(size, tokenizer, seed=seed).config
            config.num_labels = 1
            model = Qwen2ForSequenceClassification(config)
        else:
            _require_dir(name_or_path, key)
            labels = _num_labels(name_or_path)
            if labels not in (None, 1):
                raise ConfigError(f"{key}: '{name_or_path}' is a classifier with {labels} labels; a "
                                  f"reward model needs one scalar output (num_labels=1)")
            try:
                model = AutoModelForSequenceClassification.from_pretrained(
                    name_or_path, num_labels=1, dtype=DTYPES[dtype])
            except ValueError as e:  # an architecture with no sequence-classification class
                raise ConfigError(f"{key}: '{name_or_path}' cannot get a sequence-classification "
                                  f"head in transformers ({e})") from None
    _set_pad_token(model, tokenizer)
    return model.to(DTYPES[dtype])


def load_scoring_model(path: str, dtype: str = "float32", key: str = "path"):
    """``(model, tokenizer)`` of a trained reward model directory (``final/`` of a
    ``reward_model`` run, or any local sequence-classification model with ``num_labels=1``),
    in eval mode with gradients off. A missing directory, or a model without a scalar
    sequence-classification head, is a ``ConfigError`` naming ``key``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    check_scoring_model(path, key)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=DTYPES[dtype])
    _set_pad_token(model, tokenizer)
    model.eval().requires_grad_(False)
    return model, tokenizer


def check_scoring_model(path: str, key: str = "path") -> None:
    """Raise ``ConfigError`` unless ``path`` is a local model directory whose config names a
    ``...ForSequenceClassification`` architecture with ``num_labels == 1`` (reads config.json
    only)."""
    _require_dir(path, key)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key}: '{path}' has no readable config.json ({e})") from None
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in archs) or config.num_labels != 1:
        raise ConfigError(
            f"{key}: '{path}' is not a reward model: it needs a sequence-classification head with "
            f"one output (architectures {archs or 'unknown'}, num_labels {config.num_labels}). "
            f"Train one with algorithm.name: reward_model (docs/reward_models.md)")


def encode_pairs(tokenizer, prompts: Sequence[str], completions: Sequence[str],
                 max_length: int | None = None) -> list[list[int]]:
    """Token ids of ``prompt + completion`` rows as the preference pipeline builds them: the
    prompt with the tokenizer's default special tokens (none added when it already starts with
    the BOS text, e.g. a rendered chat template), the completion without them plus EOS. Rows
    over ``max_length`` keep their end (the completion and the prompt's last tokens)."""
    from rlfoundry.data.prompts import encode

    bos = getattr(tokenizer, "bos_token", None)
    rows = []
    completion_ids = encode(tokenizer, list(completions), special=False, data_text=True)
    eos = tokenizer.eos_token_id
    for prompt, completion in zip(prompts, completion_ids):
        special = not (bos and prompt.startswith(bos))
        ids = encode(tokenizer, [prompt], special=special, data_text=special)[0]
        tail = completion if (eos is None or (completion and completion[-1] == eos)) else [*completion, eos]
        row = ids + tail
        rows.append(row[-max_length:] if max_length and len(row) > max_length else row)
    return rows


@torch.inference_mode()
def score_texts(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], *,
                batch_size: int = 32, max_length: int | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Scalar scores ``[N]`` (float32, on the CPU) of ``(prompt, completion)`` rows, in
    right-padded batches of ``batch_size`` rows on ``device`` (default: the model's)."""
    from rlfoundry.data.padding import pad_prompt_completions

    device = torch.device(device) if device is not None else next(model.parameters()).device
    rows = encode_pairs(tokenizer, prompts, completions, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ids, attn, _ = pad_prompt_completions(chunk, [[] for _ in chunk], pad)
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
        out.append(logits.reshape(len(chunk), -1)[:, 0].float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _num_labels(path: str) -> int | None:
    """``num_labels`` of a directory's sequence-classification config (None for other models)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.name_or_path: '{path}' has no readable config.json ({e})") from None
    archs = getattr(config, "architectures", None) or []
    return config.num_labels if any(a.endswith("ForSequenceClassification") for a in archs) else None


def _set_pad_token(model, tokenizer) -> None:
    """The scalar is read at the last non-padding token, so the model must know the pad id."""
    if getattr(model.config, "pad_token_id", None) is None and tokenizer is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _require_dir(path: str, key: str) -> None:
    if not isinstance(path, (str, Path)) or not str(path) or not Path(path).is_dir():
        raise ConfigError(f"{key}: {str(path)!r} is not a local directory; give the path of a "
                          f"reward model (e.g. the final/ directory of an algorithm.name: "
                          f"reward_model run) or of a local Hugging Face model")
