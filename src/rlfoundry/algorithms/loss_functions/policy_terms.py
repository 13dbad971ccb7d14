"""Per-token policy-gradient terms of the GRPO family, as small pure functions.

Each takes the importance ratio ``r`` (``exp(logprobs - old_logprobs)``, with its gradient),
the detached advantages ``A`` (broadcastable to ``r``) and returns the per-token loss ``pg``
whose average the loss class takes (``loss_functions/grpo.py``). Also here: GSPO-token's
per-token ratio and the entropy-based token selection.
"""

from __future__ import annotations

import torch


def clipped_term(ratio: torch.Tensor, adv: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """PPO/GRPO: ``-min(r A, clip(r, 1 - lo, 1 + hi) A)`` (Schulman et al. 2017)."""
    return -torch.minimum(ratio * adv, ratio.clamp(1 - lo, 1 + hi) * adv)


def cispo_term(ratio: torch.Tensor, logprobs: torch.Tensor, adv: torch.Tensor, lo: float,
               hi: float) -> torch.Tensor:
    """CISPO (MiniMax-M1, arXiv:2506.13585): ``-sg(clip(r, 1 - lo, 1 + hi)) A log pi``.

    The importance weight is clipped and detached instead of the update: every token keeps
    its gradient ``-w A grad log pi`` (the hard clip of PPO drops it outside the band)."""
    weight = ratio.detach().clamp(1 - lo, 1 + hi)
    return -weight * adv * logprobs


def sapo_term(ratio: torch.Tensor, adv: torch.Tensor, tau_pos: float,
              tau_neg: float) -> torch.Tensor:
    """SAPO (Gao et al. 2025, arXiv:2511.20347): ``-f(r) A`` with the soft gate
    ``f(r) = sigmoid(tau (r - 1)) * 4 / tau``, ``tau = tau_pos`` where ``A > 0`` and
    ``tau_neg`` otherwise. ``f'(1) = 1``, so on-policy it is the plain policy gradient; far
    off-policy the gradient ``4 sigmoid(x)(1 - sigmoid(x)) r A`` decays smoothly instead of
    being cut at a hard band."""
    tau = torch.where(adv > 0, ratio.new_tensor(tau_pos), ratio.new_tensor(tau_neg))
    return -torch.sigmoid(tau * (ratio - 1)) * (4.0 / tau) * adv


def gspo_token_log_ratio(logprobs: torch.Tensor, old: torch.Tensor, weights: torch.Tensor,
                         clamp: float | None) -> torch.Tensor:
    """GSPO-token (Zheng et al. 2025, arXiv:2507.18071, sec. 4.3): per-token log-ratio
    ``sg(log s_i) + log pi_t - sg(log pi_t)`` with ``log s_i = sum_t w (log pi - old) / n_i``.

    Its value is the sequence ratio ``s_i`` at every token and its gradient that of
    ``s_i * log pi_t``, so per-token advantages can be used. ``clamp`` bounds ``log s_i``."""
    n = weights.sum(-1).clamp(min=1)
    seq = ((logprobs - old) * weights).sum(-1) / n
    if clamp is not None:
        seq = seq.clamp(-clamp, clamp)
    return seq.detach()[:, None] + logprobs - logprobs.detach()


def top_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """Bool ``[B, T]``: valid tokens whose entropy is at or above the ``1 - quantile`` quantile
    of the valid tokens' entropies (Wang et al. 2025, "Beyond the 80/20 rule",
    arXiv:2506.01939: train only on the high-entropy "forking" tokens, ``quantile = 0.2``).
    ``quantile = 1`` keeps every valid token. Computed over this micro-batch's tokens."""
    if quantile >= 1 or not bool(mask.any()):
        return mask
    entropy = entropy.detach()
    if entropy.dtype in (torch.float16, torch.bfloat16):  # torch.quantile wants float32/64
        entropy = entropy.float()
    threshold = torch.quantile(entropy[mask], 1.0 - quantile)
    return mask & (entropy >= threshold)
