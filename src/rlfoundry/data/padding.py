"""Right-padded (prompt + completion) batches: the one layout every trainer feeds its model."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_prompt_completions(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                           pad_id: int, width: int | None = None):
    """``input_ids``, ``attention_mask`` and ``loss_mask`` (1 on completion tokens), all long
    ``[N, width]`` (default width: the longest prompt + completion), right-padded with ``pad_id``."""
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    width = width or max(lengths)
    input_ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    loss_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, (prompt, completion, n) in enumerate(zip(prompts, completions, lengths)):
        input_ids[row, :n] = torch.tensor(list(prompt) + list(completion), dtype=torch.long)
        attention_mask[row, :n] = 1
        loss_mask[row, len(prompt):n] = 1
    return input_ids, attention_mask, loss_mask
