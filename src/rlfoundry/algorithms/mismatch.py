"""Train/inference mismatch: measuring it and correcting the policy gradient for it.

The engine that samples a rollout reports the log-prob of every token it drew
(``Rollout.sampling_logprobs``). The trainer's log-prob of the same token under the same
weights differs (other kernels, precision, batch shapes), so the samples come from a
slightly different policy than the one the loss assumes. With ``lt`` the trainer's
log-prob at rollout time (the old policy) and ``le`` the engine's, per response token:

- ``log_ratio``: ``d = lt - le``; at ``level: sequence`` every token of a sequence gets the
  sequence's summed ``d`` (sequence ratio = ``exp(sum_t d_t)``, the product of the token
  ratios).
- ``mode: tis`` (truncated importance sampling): weight ``w = min(exp(d), threshold)``.
- ``mode: mask``: ``w = 1`` where ``low <= exp(d) <= threshold`` and ``0`` elsewhere
  (``low = low_threshold``, default ``1 / threshold``).

The weight is detached and multiplies the per-token policy-gradient term of the GRPO losses
(``batch["rollout_weights"]``); normalisation (token counts) is unchanged, so a masked
token still counts in its sequence's or the batch's token count.

Logged every step (token means over the step's response tokens, all ranks):
``mismatch/abs_logp_diff`` = mean ``|lt - le|``; ``mismatch/kl`` = the k3 estimate of
KL(engine || trainer) from the engine's samples, mean of ``exp(r) - 1 - r`` with
``r = lt - le``; ``mismatch/weight_mean``; ``mismatch/truncated_frac`` (tis: tokens whose
ratio was cut to ``threshold``) or ``mismatch/masked_frac`` (mask: tokens given weight 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlfoundry.errors import ConfigError

MODES = ("none", "tis", "mask")
LEVELS = ("token", "sequence")


@dataclass(frozen=True)
class RolloutCorrection:
    """``algorithm.rollout_correction``: ``mode`` none | tis | mask, ``level`` token |
    sequence, ``threshold`` (> 1), ``low_threshold`` (mask only; default 1 / threshold)."""

    mode: str = "none"
    level: str = "token"
    threshold: float = 2.0
    low_threshold: float | None = None

    @classmethod
    def from_config(cls, cfg) -> RolloutCorrection:
        out = cls(cfg.mode, cfg.level, float(cfg.threshold),
                  None if cfg.low_threshold is None else float(cfg.low_threshold))
        out.check()
        return out

    @classmethod
    def for_loss(cls, cfg, loss_fn) -> RolloutCorrection:
        """``from_config``, then :func:`check_loss` against the run's loss."""
        out = cls.from_config(cfg)
        check_loss(out, loss_fn)
        return out

    def check(self, path: str = "algorithm.rollout_correction") -> None:
        if self.mode not in MODES:
            raise ConfigError(f"{path}.mode: unknown value {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.level not in LEVELS:
            raise ConfigError(f"{path}.level: unknown value {self.level!r}; choose one of {', '.join(LEVELS)}")
        if not self.threshold > 1:
            raise ConfigError(f"{path}.threshold: must be > 1 (a bound on the trainer/engine "
                              f"probability ratio), got {self.threshold}")
        if self.low_threshold is not None:
            if self.mode != "mask":
                raise ConfigError(f"{path}.low_threshold: only mode 'mask' has a lower bound "
                                  f"(mode is {self.mode!r}); remove it")
            if not 0 <= self.low_threshold < self.threshold:
                raise ConfigError(f"{path}.low_threshold: must be in [0, threshold={self.threshold}), "
                                  f"got {self.low_threshold}")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def low(self) -> float:
        return 1.0 / self.threshold if self.low_threshold is None else self.low_threshold


def log_ratio(trainer_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor,
              level: str = "token") -> torch.Tensor:
    """``[B, T]`` log importance ratio trainer/engine, 0 outside ``mask``; at ``level``
    sequence each token carries its sequence's sum."""
    mask = mask.bool()
    zero = torch.zeros((), dtype=trainer_logp.dtype, device=trainer_logp.device)
    d = torch.where(mask, trainer_logp.detach() - engine_logp.to(trainer_logp.dtype), zero)
    if level == "sequence":
        d = torch.where(mask, d.sum(-1, keepdim=True).expand_as(d), zero)
    elif level != "token":
        raise ConfigError(f"rollout correction level: unknown value {level!r}; choose one of "
                          f"{', '.join(LEVELS)}")
    return d


def correction_weights(trainer_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor,
                       correction: RolloutCorrection) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights, affected)``, both ``[B, T]``: the detached per-token weights (0 outside
    ``mask``) and the response tokens the correction changed (tis: ratio above the
    threshold, cut; mask: ratio outside ``[low, threshold]``, zeroed). Mode ``none`` gives
    weight 1 on every response token."""
    mask = mask.bool()
    ratio = torch.exp(log_ratio(trainer_logp, engine_logp, mask, correction.level))
    if correction.mode == "tis":
        affected = mask & (ratio > correction.threshold)
        weights = ratio.clamp(max=correction.threshold)
    elif correction.mode == "mask":
        affected = mask & ((ratio > correction.threshold) | (ratio < correction.low))
        weights = (~affected).to(ratio.dtype)
    elif correction.mode == "none":
        affected = torch.zeros_like(mask)
        weights = torch.ones_like(ratio)
    else:
        raise ConfigError(f"rollout correction mode: unknown value {correction.mode!r}; "
                          f"choose one of {', '.join(MODES)}")
    weights = torch.where(mask, weights, torch.zeros_like(weights)).detach()
    return weights, affected


def mismatch_sums(trainer_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor,
                  weights: torch.Tensor, affected: torch.Tensor) -> torch.Tensor:
    """float64 ``[5]``: sums over the response tokens of ``|lt - le|``, the k3 term
    ``exp(r) - 1 - r`` (``r = lt - le``), the weights and the affected tokens, and the
    token count. Sums (not means) so micro-batches and ranks add up exactly."""
    mask = mask.bool()
    r = torch.where(mask, trainer_logp.detach().double() - engine_logp.double(), 0.0)
    k3 = torch.where(mask, torch.expm1(r) - r, 0.0)
    return torch.stack([r.abs().sum(), k3.sum(), torch.where(mask, weights.double(), 0.0).sum(),
                        (affected & mask).sum().double(), mask.sum().double()])


class MismatchTally:
    """Adds up :func:`mismatch_sums` over a step's micro-batches; ``metrics`` reduces them
    (``reduce``: e.g. a sum over ranks; every rank must call it) into the logged token means
    and starts over. No response token tallied: no metrics."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None

    def add(self, sums: torch.Tensor) -> None:
        sums = sums.detach()  # stays on its device until the step's metrics are read
        self.sums = sums if self.sums is None else self.sums + sums

    def metrics(self, mode: str, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> dict[str, float]:
        sums = self.sums if self.sums is not None else torch.zeros(5, dtype=torch.float64)
        self.sums = None
        if reduce is not None:
            sums = reduce(sums)
        abs_diff, kl, weight, affected, tokens = sums.tolist()
        if tokens == 0:  # nothing tallied (e.g. a micro_step override that skips it)
            return {}
        n = tokens
        out = {"mismatch/abs_logp_diff": abs_diff / n, "mismatch/kl": kl / n}
        if mode != "none":
            out["mismatch/weight_mean"] = weight / n
            out["mismatch/truncated_frac" if mode == "tis" else "mismatch/masked_frac"] = affected / n
        return out


def check_loss(correction: RolloutCorrection, loss_fn) -> None:
    """A correction needs a loss that applies ``batch["rollout_weights"]`` (one built on
    ``GRPOLossFn``) and no second importance weight (the loss's ``truncated_is_cap``)."""
    if not correction.enabled:
        return
    from rlfoundry.algorithms.loss_functions.grpo import GRPOLossFn
    from rlfoundry.training.schedules import loss_components

    components = loss_components(loss_fn)
    if not any(isinstance(c, GRPOLossFn) for c in components):
        raise ConfigError(f"algorithm.rollout_correction.mode: '{correction.mode}' weights the "
                          f"policy-gradient term of a GRPO-family loss (grpo, dapo, dr_grpo, gspo, "
                          f"...), but the loss {type(loss_fn).__name__} has none; use such a loss "
                          "or set mode: none")
    if any(getattr(c, "truncated_is_cap", None) for c in components):
        raise ConfigError("algorithm.loss.truncated_is_cap and algorithm.rollout_correction both "
                          "weight the policy gradient by the engine/trainer ratio; keep one "
                          "(rollout_correction: {mode: tis, threshold: <cap>} is the same "
                          "correction at token level)")
