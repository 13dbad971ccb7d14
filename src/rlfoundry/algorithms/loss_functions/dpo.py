"""Direct preference losses: DPO and its pairwise relatives (IPO, SimPO, ORPO, ...).

A loss is called as ``loss_fn(batch, model_outputs) -> (loss, metrics)`` and accepts the
policy's log-probs in one of two forms:

(a) per-sequence log-probs: ``model_outputs["policy_chosen_logps"]`` and
    ``model_outputs["policy_rejected_logps"]`` ``[B]``, each the sum of the token
    log-probs over the response. Length-normalised variants (``sigmoid_norm``, ``simpo``,
    ``orpo`` and ``rpo_alpha > 0``) also need ``batch["chosen_token_counts"]`` and
    ``batch["rejected_token_counts"]`` ``[B]``.
(b) logits: ``model_outputs["chosen_logits"]`` / ``["rejected_logits"]`` ``[B, T, V]`` with
    ``batch["chosen_input_ids"]`` / ``["rejected_input_ids"]`` ``[B, T]`` and optional
    ``batch["chosen_loss_mask"]`` / ``["rejected_loss_mask"]`` ``[B, T]`` (1 = response
    token; without a mask every token counts). Logits at position ``t`` predict token
    ``t + 1``; a sequence's log-prob is the sum over the masked predicted tokens and its
    token count is the number of those tokens.

Form (a) wins when both are present. Reference log-probs always come from the batch
(``batch["reference_chosen_logps"]`` / ``["reference_rejected_logps"]`` ``[B]``, summed like
the policy's); reference-free variants, or ``reference_free: true``, need none.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import torch
import torch.nn.functional as F

from rlfoundry.algorithms.loss_functions.empty import empty_batch_result, is_empty
from rlfoundry.algorithms.loss_functions.options import NumberChecks, check_loss_options
from rlfoundry.algorithms.loss_functions.registry import LossFunctionRegistry
from rlfoundry.errors import ConfigError, DataError
from rlfoundry.ops.logprobs import logprobs_from_logits
from rlfoundry.registry import did_you_mean


def preference_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                        atol: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Fraction of pairs whose chosen reward is higher; ties (``|chosen - rejected| <= atol``,
    per pair or for all) count one half, so an untrained policy, whose rewards are all 0 up
    to rounding, scores 0.5 rather than 0 or 1."""
    margin = chosen_rewards - rejected_rewards
    ties = (margin.abs() <= atol).double()
    wins = (margin > 0).double() * (1 - ties)
    return (wins + 0.5 * ties).mean().to(chosen_rewards.dtype)


TIE_EPS = 64  # margins within this many machine epsilons of the log-probs' size are ties


def tie_tolerance(*logps: torch.Tensor | None, beta: float) -> torch.Tensor:
    """Per pair, the implicit-reward margin that rounding alone can produce: ``beta x TIE_EPS
    x eps(dtype) x (sum of |log-probs| of the pair)``. The policy and the reference compute
    the same log-prob in different batches, shards or kernels, so at step 1 (policy equal to
    reference) their rewards differ by ~1e-15 (float64) rather than being exactly 0."""
    present = [t for t in logps if t is not None]
    size = sum(t.detach().abs() for t in present)
    return abs(beta) * TIE_EPS * torch.finfo(present[0].dtype).eps * size


class DPOLossConfig(TypedDict, total=False):
    """Keys of ``algorithm.loss`` for :class:`DPOLossFn` (all optional)."""

    # beta: strength of the implicit KL penalty towards the reference (alias: ``beta``);
    # for orpo it is the weight lambda of the odds-ratio term. Default 0.1.
    reference_policy_kl_penalty: float
    # Which pairwise loss to use, one of DPO_LOSS_TYPES. Default "sigmoid" (plain DPO).
    loss_type: str
    # Probability that a preference label is flipped, in [0, 0.5); used by sigmoid (cDPO),
    # robust, sigmoid_norm and simpo, and as epsilon by exo_pair. Default 0.0 (exo_pair:
    # 1e-3, and a value below 1e-3 is rejected there).
    label_smoothing: float
    # Treat the reference log-probs as zero (no reference model needed). Default False.
    reference_free: bool
    # Weight of an NLL term on the chosen response (RPO, Pang et al. 2024):
    # NLL = -chosen_logps / chosen_token_count, mean over pairs. Default 0.0 (off).
    rpo_alpha: float
    # SimPO target reward margin gamma. Default 0.5.
    simpo_gamma: float
    # DiscoPOP temperature tau of the sigmoid that mixes its two components. Default 0.05.
    discopop_tau: float
    # bco_pair: decay of the exponential moving average of the rewards used as the
    # shift delta (delta <- decay * delta + (1 - decay) * batch mean). Default 0.99.
    bco_running_mean_decay: float


DPO_LOSS_TYPES: tuple[str, ...] = (
    "sigmoid",
    "robust",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
    "simpo",
    "orpo",
)

_DEFAULTS: dict[str, Any] = {
    "reference_policy_kl_penalty": 0.1,
    "loss_type": "sigmoid",
    "label_smoothing": 0.0,
    "reference_free": False,
    "rpo_alpha": 0.0,
    "simpo_gamma": 0.5,
    "discopop_tau": 0.05,
    "bco_running_mean_decay": 0.99,
}
# Numeric keys: (predicate, the requirement as the error message states it).
_NUMBER_CHECKS: NumberChecks = {
    "reference_policy_kl_penalty": (False, lambda v: v > 0, "must be > 0"),
    "label_smoothing": (False, lambda v: 0 <= v < 0.5, "must be in [0, 0.5)"),
    "rpo_alpha": (False, lambda v: v >= 0, "must be >= 0"),
    "simpo_gamma": (False, lambda v: True, "must be a finite number"),
    "discopop_tau": (False, lambda v: v > 0, "must be > 0"),
    "bco_running_mean_decay": (False, lambda v: 0 <= v < 1, "must be in [0, 1)"),
}
_REFERENCE_FREE_TYPES = frozenset({"simpo", "orpo"})
_LENGTH_NORMALISED_TYPES = frozenset({"sigmoid_norm", "simpo", "orpo"})
_LABEL_SMOOTHING_TYPES = ("sigmoid", "robust", "exo_pair", "sigmoid_norm", "simpo")
_LN2 = math.log(2.0)
EXO_MIN_EPSILON = 1e-3  # exo_pair's smallest label_smoothing (its epsilon; log(eps) in the loss)


def validate_dpo_loss_config(
    cfg: Mapping[str, Any] | None,
    path: str = "algorithm.loss",
    *,
    extra_keys: Iterable[str] = (),
    allow_unknown: bool = False,
) -> dict[str, Any]:
    """Return ``cfg`` with defaults filled in, or raise ``ConfigError`` naming the key path.

    ``beta`` is accepted as an alias of ``reference_policy_kl_penalty``; a ``type`` key (the
    registry name) is dropped. ``extra_keys`` are passed through unchecked. Other unknown
    keys are rejected, unless ``allow_unknown`` (user subclasses reading their own keys), in
    which case only close misspellings of the known keys are rejected.
    """
    out = check_loss_options(cfg, path, _DEFAULTS, _NUMBER_CHECKS, extra_keys=extra_keys,
                             allow_unknown=allow_unknown)
    if not isinstance(out["reference_free"], bool):
        value = out["reference_free"]
        raise ConfigError(
            f"{path}.reference_free: must be true or false, got {value!r} ({type(value).__name__})"
        )
    loss_type = out["loss_type"]
    if not isinstance(loss_type, str) or loss_type not in DPO_LOSS_TYPES:
        raise ConfigError(
            f"{path}.loss_type: unknown loss type {loss_type!r}"
            f"{did_you_mean(loss_type, DPO_LOSS_TYPES)}; choose one of: {', '.join(DPO_LOSS_TYPES)}"
        )
    if out["label_smoothing"] > 0 and loss_type not in _LABEL_SMOOTHING_TYPES:
        raise ConfigError(
            f"{path}.label_smoothing: loss_type '{loss_type}' does not use label smoothing "
            f"(only {', '.join(_LABEL_SMOOTHING_TYPES)} do); remove it or set it to 0"
        )
    given = isinstance(cfg, Mapping) and "label_smoothing" in cfg
    if loss_type == "exo_pair" and not given:
        out["label_smoothing"] = EXO_MIN_EPSILON
    if loss_type == "exo_pair" and out["label_smoothing"] < EXO_MIN_EPSILON:
        raise ConfigError(
            f"{path}.label_smoothing: loss_type 'exo_pair' uses it as its epsilon and needs "
            f"a value in [{EXO_MIN_EPSILON}, 0.5) (its loss has log(epsilon), which diverges "
            f"at 0), got {out['label_smoothing']!r}; set e.g. label_smoothing: 0.001"
        )
    return out


# ----------------------------------------------------------------------------------------
# Per-type losses: pure functions of the pair statistics, returning per-pair losses [B].
# ----------------------------------------------------------------------------------------


@dataclass
class _Pairs:
    """Per-pair inputs of one call (summed log-probs ``[B]``) and the loss settings."""

    beta: float
    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_counts: torch.Tensor | None
    rejected_counts: torch.Tensor | None
    label_smoothing: float
    simpo_gamma: float
    discopop_tau: float
    bco_delta: float = 0.0

    @property
    def chosen_ratio(self) -> torch.Tensor:  # cl = pc - rc
        return self.chosen - self.ref_chosen

    @property
    def rejected_ratio(self) -> torch.Tensor:  # rl = pr - rr
        return self.rejected - self.ref_rejected

    @property
    def margin(self) -> torch.Tensor:  # h = (pc - pr) - (rc - rr)
        return self.chosen_ratio - self.rejected_ratio

    @property
    def avg_chosen(self) -> torch.Tensor:
        return self.chosen / self.chosen_counts

    @property
    def avg_rejected(self) -> torch.Tensor:
        return self.rejected / self.rejected_counts

    @property
    def norm_margin(self) -> torch.Tensor:  # h on length-averaged policy and reference
        return (self.chosen - self.ref_chosen) / self.chosen_counts - (
            self.rejected - self.ref_rejected
        ) / self.rejected_counts


def _smoothed_logistic(z: torch.Tensor, ls: float) -> torch.Tensor:
    """-(1 - ls) log sigma(z) - ls log sigma(-z): logistic loss with flipped-label rate ls."""
    return -(1 - ls) * F.logsigmoid(z) - ls * F.logsigmoid(-z)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate to the last bits for every x < 0 (Maechler 2012):
    ``log(-expm1(x))`` for ``x > -ln 2``, ``log1p(-exp(x))`` below. Exactly 0 has no finite
    value (an empty response's average log-prob): inputs above ``-tiny`` (the dtype's smallest
    normal number) are set to ``-tiny``, which leaves every negative float of interest alone."""
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near = x > -_LN2
    a = torch.log(-torch.expm1(torch.where(near, x, torch.full_like(x, -_LN2))))
    b = torch.log1p(-torch.exp(torch.where(near, torch.full_like(x, -_LN2), x)))
    return torch.where(near, a, b)


def _sigmoid(p: _Pairs) -> torch.Tensor:
    return _smoothed_logistic(p.beta * p.margin, p.label_smoothing)


def _robust(p: _Pairs) -> torch.Tensor:
    z, ls = p.beta * p.margin, p.label_smoothing
    return (-(1 - ls) * F.logsigmoid(z) + ls * F.logsigmoid(-z)) / (1 - 2 * ls)


def _hinge(p: _Pairs) -> torch.Tensor:
    return torch.relu(1 - p.beta * p.margin)


def _ipo(p: _Pairs) -> torch.Tensor:
    return (p.margin - 1 / (2 * p.beta)) ** 2


def _exo_pair(p: _Pairs) -> torch.Tensor:
    z, eps = p.beta * p.margin, p.label_smoothing
    return torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(eps)
    )


def _nca_pair(p: _Pairs) -> torch.Tensor:
    c, r = p.beta * p.chosen_ratio, p.beta * p.rejected_ratio
    return -F.logsigmoid(c) - 0.5 * F.logsigmoid(-c) - 0.5 * F.logsigmoid(-r)


def _bco_pair(p: _Pairs) -> torch.Tensor:
    c, r = p.beta * p.chosen_ratio, p.beta * p.rejected_ratio
    return -F.logsigmoid(c - p.bco_delta) - F.logsigmoid(-(r - p.bco_delta))


def _sppo_hard(p: _Pairs) -> torch.Tensor:
    half = 1 / (2 * p.beta)
    return (p.chosen_ratio - half) ** 2 + (p.rejected_ratio + half) ** 2


def _apo_zero(p: _Pairs) -> torch.Tensor:
    return (1 - torch.sigmoid(p.beta * p.chosen_ratio)) + torch.sigmoid(p.beta * p.rejected_ratio)


def _apo_down(p: _Pairs) -> torch.Tensor:
    return torch.sigmoid(p.beta * p.chosen_ratio) + (1 - torch.sigmoid(p.beta * p.margin))


def _discopop(p: _Pairs) -> torch.Tensor:
    # (1 - m) * -log sigma(z) + m * exp(-z) with m = sigma(z / tau); the second product is
    # evaluated as exp(log sigma(z / tau) - z) so it stays finite for very negative z.
    z, tau = p.beta * p.margin, p.discopop_tau
    return torch.sigmoid(-z / tau) * -F.logsigmoid(z) + torch.exp(F.logsigmoid(z / tau) - z)


def _sigmoid_norm(p: _Pairs) -> torch.Tensor:
    return _smoothed_logistic(p.beta * p.norm_margin, p.label_smoothing)


def _simpo(p: _Pairs) -> torch.Tensor:
    z = p.beta * (p.avg_chosen - p.avg_rejected) - p.simpo_gamma
    return _smoothed_logistic(z, p.label_smoothing)


def _orpo(p: _Pairs) -> torch.Tensor:
    a_c, a_r = p.avg_chosen, p.avg_rejected
    log_odds = (a_c - a_r) - (_log1mexp(a_c) - _log1mexp(a_r))
    return -a_c - p.beta * F.logsigmoid(log_odds)


_LOSSES: dict[str, Callable[[_Pairs], torch.Tensor]] = {
    "sigmoid": _sigmoid,
    "robust": _robust,
    "hinge": _hinge,
    "ipo": _ipo,
    "exo_pair": _exo_pair,
    "nca_pair": _nca_pair,
    "bco_pair": _bco_pair,
    "sppo_hard": _sppo_hard,
    "apo_zero": _apo_zero,
    "apo_down": _apo_down,
    "discopop": _discopop,
    "sigmoid_norm": _sigmoid_norm,
    "simpo": _simpo,
    "orpo": _orpo,
}


def _sequence_logps(
    logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs ``[B]`` of ``input_ids[:, 1:]`` and their token counts ``[B]``."""
    token_logps = logprobs_from_logits(logits[:, :-1], input_ids[:, 1:])
    if mask is None:
        weights = torch.ones_like(token_logps)
    else:
        weights = mask[:, 1:].to(token_logps.dtype)
    return (token_logps * weights).sum(-1), weights.sum(-1)


def _float(x: Any, like: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` as a tensor with ``like``'s dtype and device (else float32 or float64)."""
    if like is not None:
        return torch.as_tensor(x, device=like.device).to(like.dtype)
    t = torch.as_tensor(x)
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


@LossFunctionRegistry.register("dpo")
class DPOLossFn:
    """Direct preference loss on (chosen, rejected) pairs: DPO and its relatives.

    With policy log-probs ``pc, pr`` and reference log-probs ``rc, rr`` of the chosen and
    rejected responses, the DPO margin is ``h = (pc - pr) - (rc - rr)`` and plain DPO
    (``loss_type: sigmoid``) minimises ``-log sigma(beta * h)``, mean over pairs, where
    ``beta = reference_policy_kl_penalty``. ``rpo_alpha > 0`` adds ``rpo_alpha`` times the
    length-normalised NLL of the chosen response. Implicit rewards are
    ``beta * (policy - reference)`` (for simpo/orpo: ``beta * average log-prob``; for
    sigmoid_norm: on length-averaged log-probs). With ``cl = pc - rc``, ``rl = pr - rr``,
    ``ls = label_smoothing`` and ``avg = logps / token_count``:

    - ``sigmoid``: ``-(1-ls) log sigma(beta h) - ls log sigma(-beta h)`` (DPO; cDPO if ls > 0)
    - ``robust``: ``[-(1-ls) log sigma(beta h) + ls log sigma(-beta h)] / (1 - 2 ls)``
    - ``hinge``: ``relu(1 - beta h)`` (SLiC)
    - ``ipo``: ``(h - 1/(2 beta))^2`` on summed log-probs, as in the IPO paper (TRL
      length-averages the log-probs for ipo; pass averaged log-probs to get that)
    - ``exo_pair``: ``sigma(z)(log sigma(z) - log(1-e)) + sigma(-z)(log sigma(-z) - log e)``,
      ``z = beta h``, ``e = ls`` (``label_smoothing``, which exo_pair requires in
      ``[1e-3, 0.5)``: ``log e`` diverges as ``e -> 0``)
    - ``nca_pair``: ``-log sigma(beta cl) - log sigma(-beta cl)/2 - log sigma(-beta rl)/2``
    - ``bco_pair``: ``-log sigma(beta cl - d) - log sigma(-(beta rl - d))``, ``d`` a running mean
      of the rewards (see below)
    - ``sppo_hard``: ``(cl - 1/(2 beta))^2 + (rl + 1/(2 beta))^2``
    - ``apo_zero``: ``1 - sigma(beta cl) + sigma(beta rl)``
    - ``apo_down``: ``sigma(beta cl) + 1 - sigma(beta (cl - rl))``
    - ``discopop``: ``(1 - m)(-log sigma(z)) + m exp(-z)``, ``z = beta h``,
      ``m = sigma(z / discopop_tau)``
    - ``sigmoid_norm``: ``sigmoid`` with ``h`` on length-averaged log-probs
    - ``simpo``: logistic loss on ``z = beta (avg_c - avg_r) - simpo_gamma`` (reference-free)
    - ``orpo``: ``-avg_c - beta log sigma(log_odds)``, ``log_odds = (avg_c - avg_r) -
      (log(1 - exp(avg_c)) - log(1 - exp(avg_r)))`` (reference-free; beta is lambda)

    bco_pair keeps state: ``bco_running_mean`` (``None`` until the first call) is updated
    once per call made with gradients enabled, ``d <- decay d + (1 - decay) m`` with ``m`` the
    mean of this batch's detached rewards ``beta cl`` and ``beta rl`` (the first call sets
    ``d = m``), and the updated value is used. Calls under ``torch.no_grad()`` (evaluation)
    use it without changing it. ``state_dict()`` / ``load_state_dict()`` checkpoint it.

    ``beta`` is read from ``self.reference_policy_kl_penalty`` on every call, so a subclass
    may change it between calls (e.g. a beta schedule). Subclasses may accept config keys of
    their own (listed in ``extra_config_keys`` or read from ``self.cfg``).

    An empty micro-batch (no pairs) gives a zero loss inside the graph and the metric
    ``empty_batches`` (``loss_functions/empty.py``), never NaN.
    """

    reduction = "sequence"
    extra_config_keys: tuple[str, ...] = ()
    _builtin = True  # built-in classes reject unknown config keys; subclasses do not
    _fixed_loss_type: str | None = None

    def __init__(self, cfg: DPOLossConfig | Mapping[str, Any] | None = None) -> None:
        if cfg is not None and not isinstance(cfg, Mapping):
            raise ConfigError(
                f"algorithm.loss: must be a mapping of loss options, got {type(cfg).__name__}"
            )
        cfg = dict(cfg or {})
        fixed = self._fixed_loss_type
        if fixed is not None:
            given = cfg.setdefault("loss_type", fixed)
            if given != fixed:
                raise ConfigError(
                    f"algorithm.loss.loss_type: {given!r} conflicts with the loss registered "
                    f"as '{fixed}'; drop loss_type, or use type: dpo with loss_type: {given}"
                )
        strict = type(self).__dict__.get("_builtin", False)
        self.cfg: dict[str, Any] = validate_dpo_loss_config(
            cfg, extra_keys=self.extra_config_keys, allow_unknown=not strict
        )
        self.reference_policy_kl_penalty: float = self.cfg["reference_policy_kl_penalty"]
        self.loss_type: str = self.cfg["loss_type"]
        self.label_smoothing: float = self.cfg["label_smoothing"]
        self.reference_free: bool = self.cfg["reference_free"]
        self.rpo_alpha: float = self.cfg["rpo_alpha"]
        self.simpo_gamma: float = self.cfg["simpo_gamma"]
        self.discopop_tau: float = self.cfg["discopop_tau"]
        self.bco_running_mean_decay: float = self.cfg["bco_running_mean_decay"]
        self.bco_running_mean: float | None = None

    @property
    def beta(self) -> float:
        """Alias of ``reference_policy_kl_penalty``."""
        return self.reference_policy_kl_penalty

    @beta.setter
    def beta(self, value: float) -> None:
        self.reference_policy_kl_penalty = value

    @property
    def requires_reference(self) -> bool:
        """Whether calls need reference log-probs in the batch."""
        return not (self.reference_free or self.loss_type in _REFERENCE_FREE_TYPES)

    @property
    def needs_token_counts(self) -> bool:
        return self.loss_type in _LENGTH_NORMALISED_TYPES or self.rpo_alpha > 0

    def state_dict(self) -> dict[str, Any]:
        """Loss state to checkpoint (``{}`` for stateless loss types)."""
        return {"bco_running_mean": self.bco_running_mean} if self.loss_type == "bco_pair" else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "bco_running_mean" in state:
            value = state["bco_running_mean"]
            self.bco_running_mean = None if value is None else float(value)

    # ------------------------------------------------------------------ inputs

    def _policy_logps(self, batch, model_outputs):
        """(chosen, rejected, chosen_counts, rejected_counts) from either input form."""
        if "policy_chosen_logps" in model_outputs or "policy_rejected_logps" in model_outputs:
            for key in ("policy_chosen_logps", "policy_rejected_logps"):
                if key not in model_outputs:
                    raise DataError(f"model_outputs['{key}'] is missing (the pair is incomplete)")
            chosen = _float(model_outputs["policy_chosen_logps"])
            rejected = _float(model_outputs["policy_rejected_logps"], chosen)
            counts = [
                None if batch.get(k) is None else _float(batch[k], chosen)
                for k in ("chosen_token_counts", "rejected_token_counts")
            ]
            return chosen, rejected, counts[0], counts[1]
        if "chosen_logits" in model_outputs or "rejected_logits" in model_outputs:
            out = []
            for side in ("chosen", "rejected"):
                if f"{side}_logits" not in model_outputs:
                    raise DataError(f"model_outputs['{side}_logits'] is missing")
                if f"{side}_input_ids" not in batch:
                    raise DataError(
                        f"batch['{side}_input_ids'] is missing: needed with "
                        f"model_outputs['{side}_logits'] to score the {side} tokens"
                    )
                out.append(
                    _sequence_logps(
                        model_outputs[f"{side}_logits"],
                        batch[f"{side}_input_ids"],
                        batch.get(f"{side}_loss_mask"),
                    )
                )
            (chosen, chosen_counts), (rejected, rejected_counts) = out
            return chosen, rejected, chosen_counts, rejected_counts
        raise DataError(
            "model_outputs needs 'policy_chosen_logps' and 'policy_rejected_logps' (summed "
            "response log-probs [B]) or 'chosen_logits' and 'rejected_logits' [B, T, V]; "
            f"got keys {sorted(model_outputs)}"
        )

    def _reference_logps(self, batch, chosen):
        if not self.requires_reference:
            zeros = torch.zeros_like(chosen)
            return zeros, zeros
        refs = []
        for key in ("reference_chosen_logps", "reference_rejected_logps"):
            if batch.get(key) is None:
                raise DataError(
                    f"batch['{key}'] is missing: loss_type '{self.loss_type}' compares the "
                    "policy to a reference model; provide reference log-probs, or set "
                    "reference_free: true, or use a reference-free loss (simpo, orpo)"
                )
            refs.append(_float(batch[key], chosen).detach())
        return refs[0], refs[1]

    def _update_bco_mean(self, beta: float, chosen_ratio, rejected_ratio) -> float:
        batch_mean = float(beta * torch.cat([chosen_ratio, rejected_ratio]).detach().mean())
        prev, decay = self.bco_running_mean, self.bco_running_mean_decay
        new = batch_mean if prev is None else decay * prev + (1 - decay) * batch_mean
        if torch.is_grad_enabled():
            self.bco_running_mean = new
        return new

    # ------------------------------------------------------------------ call

    def __call__(
        self, batch: Mapping[str, Any], model_outputs: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss_type, beta = self.loss_type, float(self.reference_policy_kl_penalty)
        chosen, rejected, chosen_counts, rejected_counts = self._policy_logps(batch, model_outputs)
        if chosen.shape != rejected.shape or chosen.dim() != 1:
            raise DataError(
                f"chosen and rejected log-probs must both have shape [B]; got "
                f"{tuple(chosen.shape)} and {tuple(rejected.shape)}"
            )
        if is_empty(chosen):  # a mean over no pairs would be NaN: see loss_functions/empty.py
            return empty_batch_result(self, chosen, rejected)
        if self.needs_token_counts:
            why = (
                f"loss_type '{loss_type}'"
                if loss_type in _LENGTH_NORMALISED_TYPES
                else "rpo_alpha > 0"
            )
            for key, value in (
                ("chosen_token_counts", chosen_counts),
                ("rejected_token_counts", rejected_counts),
            ):
                if value is None:
                    raise DataError(
                        f"batch['{key}'] is missing: {why} length-normalises log-probs; provide "
                        "chosen_token_counts and rejected_token_counts (response tokens per "
                        "sequence [B]), or pass logits with loss masks"
                    )
            # An empty response would divide by zero; count at least one token.
            chosen_counts, rejected_counts = (
                chosen_counts.clamp(min=1),
                rejected_counts.clamp(min=1),
            )
        ref_chosen, ref_rejected = self._reference_logps(batch, chosen)

        pairs = _Pairs(
            beta=beta,
            chosen=chosen,
            rejected=rejected,
            ref_chosen=ref_chosen,
            ref_rejected=ref_rejected,
            chosen_counts=chosen_counts,
            rejected_counts=rejected_counts,
            label_smoothing=self.label_smoothing,
            simpo_gamma=self.simpo_gamma,
            discopop_tau=self.discopop_tau,
        )
        if loss_type == "bco_pair":
            pairs.bco_delta = self._update_bco_mean(beta, pairs.chosen_ratio, pairs.rejected_ratio)
        loss = _LOSSES[loss_type](pairs).mean()
        nll = -pairs.avg_chosen.mean() if self.needs_token_counts else None
        if self.rpo_alpha > 0:
            loss = loss + self.rpo_alpha * nll

        if loss_type in _REFERENCE_FREE_TYPES:
            chosen_rewards, rejected_rewards = beta * pairs.avg_chosen, beta * pairs.avg_rejected
        elif loss_type == "sigmoid_norm":
            chosen_rewards = beta * pairs.chosen_ratio / chosen_counts
            rejected_rewards = beta * pairs.rejected_ratio / rejected_counts
        else:
            chosen_rewards, rejected_rewards = (
                beta * pairs.chosen_ratio,
                beta * pairs.rejected_ratio,
            )
        chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
        metrics = {
            "loss": loss.detach(),
            "chosen_rewards_mean": chosen_rewards.mean(),
            "rejected_rewards_mean": rejected_rewards.mean(),
            "reward_gap": (chosen_rewards - rejected_rewards).mean(),
            "accuracy": preference_accuracy(chosen_rewards, rejected_rewards),
            "logps_chosen": chosen.detach().mean(),
            "logps_rejected": rejected.detach().mean(),
        }
        if nll is not None and (self.rpo_alpha > 0 or loss_type == "orpo"):
            metrics["nll_loss"] = nll.detach()
        if loss_type == "bco_pair":
            metrics["bco_running_mean"] = torch.tensor(pairs.bco_delta, dtype=chosen.dtype)
        return loss, metrics


# One registry name per loss type, so ``type: ipo`` works; name -> first docstring line.
_VARIANT_DOCS = {
    "sigmoid": "DPO sigmoid loss (Rafailov et al. 2023); cDPO with label_smoothing (Mitchell 2023).",
    "robust": "Robust DPO for noisy preference labels (Chowdhury et al. 2024).",
    "hinge": "SLiC hinge loss on the DPO margin (Zhao et al. 2023).",
    "ipo": "IPO: squared loss pulling the DPO margin to 1/(2 beta) (Azar et al. 2023).",
    "exo_pair": "EXO: pairwise reverse-KL preference loss (Ji et al. 2024).",
    "nca_pair": "NCA: pairwise noise-contrastive alignment (Chen et al. 2024).",
    "bco_pair": "BCO: binary classifier optimisation with a running reward shift (Jung et al. 2024).",
    "sppo_hard": "SPPO with hard labels (Wu et al. 2024).",
    "apo_zero": "APO-zero: anchored preference optimisation, raise chosen (D'Oosterlinck et al. 2024).",
    "apo_down": "APO-down: anchored preference optimisation, lower both (D'Oosterlinck et al. 2024).",
    "discopop": "DiscoPOP: log-ratio modulated logistic/exponential loss (Chris Lu et al. 2024).",
    "sigmoid_norm": "DPO sigmoid loss on length-averaged log-probs.",
    "simpo": "SimPO: reference-free length-normalised margin loss (Meng et al. 2024).",
    "orpo": "ORPO: reference-free odds-ratio loss plus chosen NLL (Hong et al. 2024).",
}
for _name in DPO_LOSS_TYPES:
    _cls = type(
        f"DPO_{_name}",
        (DPOLossFn,),
        {
            "__doc__": f"{_VARIANT_DOCS[_name]}\n\n"
            f"``DPOLossFn`` with ``loss_type: {_name}``; see its docstring for the formula.",
            "__module__": __name__,
            "_builtin": True,
            "_fixed_loss_type": _name,
        },
    )
    globals()[_cls.__name__] = LossFunctionRegistry.register(_name)(_cls)
del _name, _cls
