"""Log-probability helpers."""

from __future__ import annotations

import torch


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token log-probability of ``labels`` under ``logits``.

    ``logits`` is ``[B, T, V]`` and ``labels`` ``[B, T]`` (valid token ids; any masking is
    the caller's job). The result ``[B, T]`` is ``logits[label] - logsumexp(logits)``, so no
    ``[B, T, V]`` log-softmax copy is kept. Half-precision logits are upcast to float32;
    float32 and float64 are used as they are. No shift is applied: align ``logits[:, t]``
    with the token it predicts before calling.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    picked = torch.gather(logits, -1, labels.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)
