"""Group-relative policy-gradient losses: GRPO and its variants (BNPO/DAPO, Dr.GRPO, GSPO).

Called as ``loss_fn(batch, model_outputs) -> (loss, metrics)`` with, for ``B`` sequences
padded to ``T`` response positions:

- ``model_outputs["logprobs"]`` ``[B, T]``: log-probs of the response tokens under the
  current policy (with grad);
- ``batch["response_mask"]`` ``[B, T]``: 1 where the position is a response token;
- ``batch["advantages"]`` ``[B]`` (one per sequence) or ``[B, T]`` (one per token);
- ``batch["old_logprobs"]`` ``[B, T]`` (optional): log-probs under the policy that produced
  the rollouts, as recomputed by the trainer. Without it the ratio is taken against
  ``logprobs.detach()``: ratio 1 with the exact policy gradient (one update per rollout
  batch, ``num_iterations = 1``);
- ``batch["reference_logprobs"]`` ``[B, T]``: needed when ``reference_policy_kl_penalty > 0``;
- optional, by option: ``model_outputs["entropy"]`` ``[B, T]``, ``batch["sampling_logprobs"]``
  ``[B, T]`` (from the inference engine), ``batch["truncated"]`` ``[B]`` (bool),
  ``model_outputs["values"]`` ``[B]`` or ``[B, T]`` and ``batch["returns"]`` ``[B]``;
- ``batch["rollout_weights"]`` ``[B, T]`` or ``[B]`` (optional): detached per-token (or
  per-sequence) weights of the policy-gradient term, set by the trainer's train/inference
  mismatch correction (``algorithm.rollout_correction``, see ``algorithms/mismatch.py``).

Values at masked positions are ignored (they may be padding, ``-inf`` or NaN).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Integral
from typing import Any, TypedDict

import torch

from rlfoundry.algorithms.loss_functions.empty import empty_batch_result, is_empty
from rlfoundry.algorithms.loss_functions.options import NumberChecks, check_loss_options
from rlfoundry.algorithms.loss_functions.policy_terms import (
    cispo_term,
    clipped_term,
    gspo_token_log_ratio,
    sapo_term,
    top_entropy_mask,
)
from rlfoundry.algorithms.loss_functions.registry import LossFunctionRegistry
from rlfoundry.errors import ConfigError, DataError
from rlfoundry.registry import did_you_mean


class GRPOLossConfig(TypedDict, total=False):
    """Keys of ``algorithm.loss`` for :class:`GRPOLossFn` (all optional but see dr_grpo)."""

    # beta: weight of the per-token KL(pi || pi_ref) penalty (alias: ``beta``), >= 0. Default
    # 0.0, in which case no reference model is loaded (``requires_reference`` is False).
    reference_policy_kl_penalty: float
    # Estimator of the per-token KL from r = log pi_ref - log pi (Schulman 2020):
    # "k1" = -r, "k2" = r^2 / 2, "k3" = exp(r) - r - 1 (default, unbiased and >= 0).
    kl_estimator: str
    # Clamp r to [-kl_clamp, kl_clamp] before the estimator. The reason is k3's exp(r):
    # r = log pi_ref - log pi can be large where the policy has moved far below the
    # reference, and exp overflows (float32 at r > 88). The clamp also cuts the KL gradient
    # of every token beyond the bound, both where the policy is far below the reference and
    # far above it (r < -kl_clamp). Default 10.0; null disables it (safe for k1 and k2).
    kl_clamp: float | None
    # PPO clip range epsilon, in [0, 1). Default 0.2.
    clip_ratio: float
    # Clamp the log importance ratio (logprobs - old_logprobs; per sequence for gspo) to
    # [-c, c] before exp, so a far-off old log-prob cannot overflow the ratio to inf. Tokens
    # beyond the clamp get no gradient through the ratio. Default 20.0; null disables it.
    log_ratio_clamp: float | None
    # Lower clip range: the ratio is clipped below at 1 - clip_ratio_low. Default clip_ratio.
    clip_ratio_low: float | None
    # Upper clip range: clipped above at 1 + clip_ratio_high. Default clip_ratio. A larger
    # value than clip_ratio_low is DAPO's "clip-higher" (Yu et al. 2025).
    clip_ratio_high: float | None
    # Dual-clip PPO constant c > 1 (Ye et al. 2020): for negative advantages the per-token
    # loss is capped at c * |A|. Default null (off).
    dual_clip_c: float | None
    # How the per-token losses are averaged, one of GRPO_LOSS_TYPES. Default "grpo".
    loss_type: str
    # Dr.GRPO's constant normaliser L (tokens); required by loss_type "dr_grpo".
    max_completion_length: int | None
    # Weight of an entropy bonus: loss -= entropy_coef * entropy (model_outputs["entropy"]).
    # Default 0.0.
    entropy_coef: float
    # Truncated importance sampling (Yao et al. 2025) between the sampler's and the
    # trainer's log-probs: the policy term is multiplied by the detached weight
    # min(exp(old_logprobs - sampling_logprobs), cap); needs batch["sampling_logprobs"].
    # Must be > 1. Default null (off).
    truncated_is_cap: float | None
    # Sequences with batch["truncated"] True (no EOS) contribute nothing (DAPO overlong
    # filtering): their tokens are masked out. Default False.
    mask_truncated_completions: bool
    # Weight of a value loss 0.5 * (V - returns)^2. Pure GRPO uses no value function, so the
    # default is 0.0; a value head is an option for users who want one.
    value_loss_coef: float
    # sapo: temperatures of the soft gate for tokens with A > 0 / A <= 0 (SAPO paper: 1.0 and
    # 1.05; tau_neg >= tau_pos damps negative updates faster). Must be > 0.
    tau_pos: float
    tau_neg: float
    # Train the policy term only on the tokens whose entropy is in the top q quantile of the
    # micro-batch's valid tokens (Wang et al. 2025, "80/20": q = 0.2); the trainer then asks
    # the lm-head pass for entropies. In (0, 1]; default 1.0 (every token).
    top_entropy_quantile: float


GRPO_LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dapo", "dr_grpo", "gspo", "gspo_token",
                                     "cispo", "sapo")
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
_TOKEN_TYPES = frozenset({"bnpo", "dapo", "cispo", "sapo"})
_NO_DUAL_CLIP = frozenset({"cispo", "sapo"})  # their policy term is no clipped surrogate

_DEFAULTS: dict[str, Any] = {
    "reference_policy_kl_penalty": 0.0,
    "kl_estimator": "k3",
    "kl_clamp": 10.0,
    "clip_ratio": 0.2,
    "log_ratio_clamp": 20.0,
    "clip_ratio_low": None,
    "clip_ratio_high": None,
    "dual_clip_c": None,
    "loss_type": "grpo",
    "max_completion_length": None,
    "entropy_coef": 0.0,
    "truncated_is_cap": None,
    "mask_truncated_completions": False,
    "value_loss_coef": 0.0,
    "tau_pos": 1.0,
    "tau_neg": 1.05,
    "top_entropy_quantile": 1.0,
}
# Numeric keys: (null allowed, predicate, the requirement as the error message states it).
_NUMBER_CHECKS: NumberChecks = {
    "reference_policy_kl_penalty": (False, lambda v: v >= 0, "must be >= 0"),
    "kl_clamp": (True, lambda v: v > 0, "must be > 0 (or null: no clamp)"),
    "clip_ratio": (False, lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "log_ratio_clamp": (True, lambda v: v > 0, "must be > 0 (or null: no clamp)"),
    "clip_ratio_low": (True, lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "clip_ratio_high": (True, lambda v: v >= 0, "must be >= 0"),
    "dual_clip_c": (True, lambda v: v > 1, "must be > 1 (or null: off)"),
    "entropy_coef": (False, lambda v: True, "must be a finite number"),
    "truncated_is_cap": (True, lambda v: v > 1, "must be > 1 (or null: off)"),
    "value_loss_coef": (False, lambda v: v >= 0, "must be >= 0"),
    "tau_pos": (False, lambda v: v > 0, "must be > 0"),
    "tau_neg": (False, lambda v: v > 0, "must be > 0"),
    "top_entropy_quantile": (False, lambda v: 0 < v <= 1, "must be in (0, 1] (1: every token)"),
}


def _choice(path: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(
            f"{path}.{key}: unknown value {value!r}{did_you_mean(value, choices)}; "
            f"choose one of: {', '.join(choices)}"
        )


def validate_grpo_loss_config(
    cfg: Mapping[str, Any] | None,
    path: str = "algorithm.loss",
    *,
    extra_keys: Iterable[str] = (),
    allow_unknown: bool = False,
) -> dict[str, Any]:
    """Return ``cfg`` with defaults filled in, or raise ``ConfigError`` naming the key path.

    ``beta`` is accepted as an alias of ``reference_policy_kl_penalty``; a ``type`` key (the
    registry name) is dropped; ``clip_ratio_low``/``_high`` default to ``clip_ratio``.
    ``extra_keys`` pass unchecked. Other unknown keys are rejected, unless ``allow_unknown``
    (user subclasses reading their own keys), in which case only close misspellings of the
    known keys are rejected.
    """
    out = check_loss_options(cfg, path, _DEFAULTS, _NUMBER_CHECKS, extra_keys=extra_keys,
                             allow_unknown=allow_unknown)
    for side in ("clip_ratio_low", "clip_ratio_high"):
        if out[side] is None:
            out[side] = out["clip_ratio"]
    _choice(path, "loss_type", out["loss_type"], GRPO_LOSS_TYPES)
    _choice(path, "kl_estimator", out["kl_estimator"], KL_ESTIMATORS)
    if not isinstance(out["mask_truncated_completions"], bool):
        value = out["mask_truncated_completions"]
        raise ConfigError(
            f"{path}.mask_truncated_completions: must be true or false, got {value!r} "
            f"({type(value).__name__})"
        )
    length = out["max_completion_length"]
    if length is not None and (
        isinstance(length, bool) or not isinstance(length, Integral) or length <= 0
    ):
        raise ConfigError(
            f"{path}.max_completion_length: must be a positive integer, got {length!r}"
        )
    if out["loss_type"] in _NO_DUAL_CLIP and out["dual_clip_c"] is not None:
        raise ConfigError(
            f"{path}.dual_clip_c: loss_type '{out['loss_type']}' has no clipped surrogate to "
            "cap; remove dual_clip_c"
        )
    if out["loss_type"] == "dr_grpo" and length is None:
        raise ConfigError(
            f"{path}.max_completion_length: required by loss_type 'dr_grpo' (it divides each "
            "sequence's token sum by this constant); set it to the generation max_new_tokens"
        )
    return out


def kl_estimate(
    logprobs: torch.Tensor,
    reference_logprobs: torch.Tensor,
    estimator: str = "k3",
    clamp: float | None = 10.0,
) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman 2020).

    With ``r = reference_logprobs - logprobs`` (clamped to ``[-clamp, clamp]`` if given):
    k1 = -r, k2 = r^2 / 2, k3 = exp(r) - r - 1.

    Why the clamp: k3's ``exp(r)`` overflows (float32 beyond r = 88, and its gradient
    ``exp(r) - 1`` long before that becomes huge) where the policy gives a token far less
    probability than the reference. The price: a token with ``|r| > clamp`` sends no KL
    gradient at all (``clamp`` passes no gradient beyond its bound; exactly at the bound it
    still does), also where the policy is far *above* the reference (``r < -clamp``), where
    k3 could not overflow. ``algorithm.loss.kl_clamp`` sets the bound; null turns it off.
    """
    r = reference_logprobs - logprobs
    if clamp is not None:
        r = r.clamp(-clamp, clamp)
    if estimator == "k1":
        return -r
    if estimator == "k2":
        return 0.5 * r * r
    if estimator == "k3":
        return torch.expm1(r) - r
    raise ConfigError(
        f"unknown kl_estimator {estimator!r}{did_you_mean(estimator, KL_ESTIMATORS)}; "
        f"choose one of: {', '.join(KL_ESTIMATORS)}"
    )


def wants_entropy(loss_fn: Any) -> bool:
    """Whether the trainer should ask the lm-head pass for per-token entropies: the loss's
    ``needs_entropy`` where it has one, else a non-zero ``entropy_coef`` in its ``cfg``."""
    needs = getattr(loss_fn, "needs_entropy", None)
    if needs is not None:
        return bool(needs)
    return bool(getattr(loss_fn, "cfg", {}).get("entropy_coef", 0.0))


@LossFunctionRegistry.register("grpo")
class GRPOLossFn:
    """Clipped group-relative policy-gradient loss: GRPO (Shao et al. 2024) and variants.

    Per valid response token, with ``ratio = exp(logprobs - old_logprobs)`` (the log-ratio
    clamped to ``[-log_ratio_clamp, log_ratio_clamp]``, default 20, against overflow), the advantage
    ``A`` of its sequence (or token), ``lo = clip_ratio_low`` and ``hi = clip_ratio_high``::

        pg  = -min(ratio * A, clamp(ratio, 1 - lo, 1 + hi) * A)
        pg  = min(pg, c * |A|)              where A < 0, if dual_clip_c = c is set
        pg *= min(exp(old - sampling), cap)  (detached), if truncated_is_cap = cap is set
        pg *= rollout_weights                (detached), if batch["rollout_weights"] is given
        l   = pg + beta * KL - entropy_coef * entropy  (+ value_loss_coef * 0.5 (V - R)^2)

    ``l`` is then averaged according to ``loss_type``, with ``n_i`` the valid tokens of
    sequence ``i`` (``response_mask``, minus truncated sequences when
    ``mask_truncated_completions``), ``B`` the micro-batch's sequences:

    - ``grpo``: ``mean_i (sum_t l / n_i)``; reduction "sequence". A sequence with
      ``n_i = 0`` contributes 0 and still counts in ``B`` (so micro-batches combine exactly by
      sequence count).
    - ``bnpo``, ``dapo``: ``sum_{i,t} l / sum_i n_i``, the mean over the valid tokens;
      reduction "token". BNPO normalises by the tokens of the local batch and DAPO by those of
      the global batch; since the trainer weights micro-batches by their share of the global
      token count, both give the same exact global token mean in rlfoundry.
    - ``dr_grpo``: ``sum_{i,t} l / (B * max_completion_length)`` (Liu et al. 2025);
      reduction "sequence".
    - ``gspo``: sequence-level ratio ``s_i = exp(sum_t (logprobs - old) / n_i)`` (Zheng et
      al. 2025) with per-sequence advantages; the policy term per sequence is
      ``-min(s_i A_i, clamp(s_i, 1 - lo, 1 + hi) A_i)`` (dual clip as above; the truncated IS
      weight becomes ``min(exp(sum_t (old - sampling) / n_i), cap)``; per-token
      ``rollout_weights`` enter as their mean over the sequence's valid tokens), 0 if
      ``n_i = 0``, mean over sequences. The token terms (KL, entropy, value) are averaged
      as for ``grpo``.
      GSPO's paper uses much smaller clip ranges (about 3e-4 / 4e-4).
    - ``gspo_token`` (GSPO paper, sec. 4.3; TRL's ``importance_sampling_level:
      sequence_token``): per token ``ratio = sg(s_i) * pi_t / sg(pi_t)`` (value ``s_i``,
      gradient of ``s_i log pi_t``; ``log s_i`` clamped by ``log_ratio_clamp``) in the clipped
      term above, so advantages may be per token ``[B, T]``; averaged as ``grpo``.
    - ``cispo`` (MiniMax-M1, arXiv:2506.13585): ``pg = -sg(clamp(ratio, 1 - lo, 1 + hi)) A
      log pi``: the importance weight is clipped and detached, the update is not, so every
      token keeps a gradient; reduction "token" like ``dapo``.
    - ``sapo`` (Gao et al. 2025, arXiv:2511.20347): ``pg = -sigmoid(tau (ratio - 1)) (4 / tau)
      A`` with ``tau = tau_pos`` where ``A > 0`` else ``tau_neg``: a soft gate instead of the
      hard clip; reduction "token".
    ``dual_clip_c`` is rejected for ``cispo`` and ``sapo``.

    ``top_entropy_quantile = q < 1`` (Wang et al. 2025, arXiv:2506.01939) multiplies the
    policy term by 0 at every valid token whose entropy (``model_outputs["entropy"]``) is
    below the ``1 - q`` quantile of this micro-batch's valid tokens (``torch.quantile``,
    linear interpolation); the normalisers are unchanged (the dropped tokens still count),
    as for ``rollout_weights``. Metric ``entropy_kept_frac``.

    An empty micro-batch (``B = 0``) gives a zero loss inside the graph and the metric
    ``empty_batches`` (``loss_functions/empty.py``), never NaN.

    ``rollout_weights`` change no normaliser: a token with weight 0 still counts in ``n_i``
    and in the token count of reduction "token".

    Metrics (detached 0-dim tensors): ``loss``, ``policy_loss``, ``kl`` (whenever reference
    log-probs are given), ``entropy`` (when given), ``value_loss`` (when used) are averaged
    exactly like the loss, so ``loss = policy_loss + beta kl - entropy_coef entropy +
    value_loss_coef value_loss``. The fractions ``clip_frac_low`` (ratio < 1 - lo and A < 0),
    ``clip_frac_high`` (ratio > 1 + hi and A > 0), ``dual_clip_frac`` (the cap was active,
    when dual_clip_c is set), ``ratio_mean`` and ``truncated_is_weight_mean`` (when used)
    are token means for reduction "token" and means over sequences of per-sequence token
    means otherwise (also for dr_grpo, so they stay fractions); all of them combine exactly
    across micro-batches with the trainer's weights.

    ``clip_ratio_low``, ``clip_ratio_high``, ``dual_clip_c``, ``reference_policy_kl_penalty``,
    ``entropy_coef`` and ``value_loss_coef`` are read from ``self`` on every call, so a
    subclass or a schedule may change them. Subclasses may accept config keys of their own
    (list them in ``extra_config_keys`` or read them from ``self.cfg``).
    """

    reduction = "sequence"
    extra_config_keys: tuple[str, ...] = ()
    _builtin = True  # built-in classes reject unknown config keys; subclasses do not
    _fixed_loss_type: str | None = None

    def __init__(self, cfg: GRPOLossConfig | Mapping[str, Any] | None = None) -> None:
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
                    f"as '{fixed}'; drop loss_type, or use type: grpo with loss_type: {given}"
                )
        strict = type(self).__dict__.get("_builtin", False)
        self.cfg: dict[str, Any] = validate_grpo_loss_config(
            cfg, extra_keys=self.extra_config_keys, allow_unknown=not strict
        )
        c = self.cfg
        self.loss_type: str = c["loss_type"]
        self.reduction = "token" if self.loss_type in _TOKEN_TYPES else "sequence"
        self.reference_policy_kl_penalty: float = c["reference_policy_kl_penalty"]
        self.kl_estimator: str = c["kl_estimator"]
        self.kl_clamp: float | None = c["kl_clamp"]
        self.log_ratio_clamp: float | None = c["log_ratio_clamp"]
        self.clip_ratio_low: float = c["clip_ratio_low"]
        self.clip_ratio_high: float = c["clip_ratio_high"]
        self.dual_clip_c: float | None = c["dual_clip_c"]
        self.max_completion_length: int | None = c["max_completion_length"]
        self.entropy_coef: float = c["entropy_coef"]
        self.truncated_is_cap: float | None = c["truncated_is_cap"]
        self.mask_truncated_completions: bool = c["mask_truncated_completions"]
        self.value_loss_coef: float = c["value_loss_coef"]
        self.tau_pos: float = c["tau_pos"]
        self.tau_neg: float = c["tau_neg"]
        self.top_entropy_quantile: float = c["top_entropy_quantile"]
        self.empty_batches = 0  # calls on an empty micro-batch (see loss_functions/empty.py)

    @property
    def beta(self) -> float:
        """Alias of ``reference_policy_kl_penalty``."""
        return self.reference_policy_kl_penalty

    @beta.setter
    def beta(self, value: float) -> None:
        self.reference_policy_kl_penalty = value

    @property
    def needs_entropy(self) -> bool:
        """Whether calls need ``model_outputs["entropy"]`` (entropy bonus or token selection)."""
        return float(self.entropy_coef) != 0 or float(self.top_entropy_quantile) < 1

    @property
    def requires_reference(self) -> bool:
        """Whether calls need ``batch["reference_logprobs"]`` (the KL coefficient is > 0)."""
        return self.reference_policy_kl_penalty > 0

    def valid_mask(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Bool ``[B, T]`` of the tokens the loss averages over: ``response_mask``, minus the
        sequences with ``batch["truncated"]`` when ``mask_truncated_completions``. For
        reduction "token" the trainer's ``num_tokens`` must be ``valid_mask(batch).sum()``."""
        if batch.get("response_mask") is None:
            raise DataError("batch['response_mask'] is missing: [B, T], 1 = response token")
        mask = torch.as_tensor(batch["response_mask"]).bool()
        if mask.dim() != 2:
            raise DataError(f"batch['response_mask'] must be [B, T], got {tuple(mask.shape)}")
        if self.mask_truncated_completions:
            if batch.get("truncated") is None:
                raise DataError(
                    "batch['truncated'] is missing: mask_truncated_completions needs a bool [B] "
                    "marking completions that hit the length limit"
                )
            truncated = torch.as_tensor(batch["truncated"], device=mask.device).bool()
            if truncated.shape != mask.shape[:1]:
                raise DataError(
                    f"batch['truncated'] must be [B] = {tuple(mask.shape[:1])}, got "
                    f"{tuple(truncated.shape)}"
                )
            mask = mask & ~truncated[:, None]
        return mask

    # ------------------------------------------------------------------ call

    def __call__(
        self, batch: Mapping[str, Any], model_outputs: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if model_outputs.get("logprobs") is None:
            raise DataError(
                "model_outputs['logprobs'] is missing: per-token log-probs [B, T] of the "
                f"response tokens; got keys {sorted(model_outputs)}"
            )
        logp = model_outputs["logprobs"]
        if logp.dim() != 2:
            raise DataError(f"model_outputs['logprobs'] must be [B, T], got {tuple(logp.shape)}")
        mask = self.valid_mask(batch).to(logp.device)
        if mask.shape != logp.shape:
            raise DataError(
                f"batch['response_mask'] {tuple(mask.shape)} and model_outputs['logprobs'] "
                f"{tuple(logp.shape)} must have the same shape"
            )
        if is_empty(logp):  # a mean over no sequences would be NaN: see loss_functions/empty.py
            return empty_batch_result(self, logp, model_outputs.get("entropy"),
                                      model_outputs.get("values"))
        w = mask.to(logp.dtype)
        n = w.sum(-1)  # valid tokens per sequence [B]
        zero = torch.zeros((), dtype=logp.dtype, device=logp.device)

        def get(src: Mapping[str, Any], name: str, key: str, seq_ok: bool = False):
            """``src[key]`` as a [B, T] (or [B] if seq_ok) tensor like logp, 0 where masked."""
            if src.get(key) is None:
                return None
            x = torch.as_tensor(src[key], device=logp.device).to(logp.dtype)
            if seq_ok and x.shape == logp.shape[:1]:
                return x
            if x.shape != logp.shape:
                want = "[B] or [B, T]" if seq_ok else "[B, T]"
                raise DataError(
                    f"{name}['{key}'] must be {want} with [B, T] = {tuple(logp.shape)}, got "
                    f"{tuple(x.shape)}"
                )
            return torch.where(mask, x, zero)

        def loss_mean(x: torch.Tensor) -> torch.Tensor:  # average a [B, T] term like the loss
            x = x.expand_as(w) * w
            if self.loss_type in _TOKEN_TYPES:
                return x.sum() / w.sum().clamp(min=1)
            if self.loss_type == "dr_grpo":
                return x.sum() / (x.shape[0] * self.max_completion_length)
            return (x.sum(-1) / n.clamp(min=1)).mean()

        def frac_mean(x: torch.Tensor) -> torch.Tensor:  # average a [B, T] or [B] statistic
            x = x.to(logp.dtype)
            x = (x[:, None] if x.dim() == 1 else x).expand_as(w).detach() * w
            if self.reduction == "token":
                return x.sum() / w.sum().clamp(min=1)
            return (x.sum(-1) / n.clamp(min=1)).mean()

        logp_v = torch.where(mask, logp, zero)
        old = get(batch, "batch", "old_logprobs")
        old = logp_v.detach() if old is None else old.detach()
        adv = get(batch, "batch", "advantages", seq_ok=True)
        if adv is None:
            raise DataError("batch['advantages'] is missing: [B] per sequence or [B, T] per token")
        adv = adv.detach()
        gspo = self.loss_type == "gspo"
        if self.loss_type == "gspo_token":
            log_ratio = gspo_token_log_ratio(logp_v, old, w, self.log_ratio_clamp)
            adv = adv[:, None] if adv.dim() == 1 else adv
        elif gspo:
            if adv.dim() != 1:
                raise DataError(
                    "loss_type 'gspo' needs per-sequence advantages: batch['advantages'] [B], "
                    f"got {tuple(adv.shape)}"
                )
            log_ratio = ((logp_v - old) * w).sum(-1) / n.clamp(min=1)  # [B]
        else:
            log_ratio = logp_v - old  # [B, T]
            adv = adv[:, None] if adv.dim() == 1 else adv
        if self.log_ratio_clamp is not None and self.loss_type != "gspo_token":
            log_ratio = log_ratio.clamp(-float(self.log_ratio_clamp), float(self.log_ratio_clamp))
        ratio = torch.exp(log_ratio)

        lo, hi = float(self.clip_ratio_low), float(self.clip_ratio_high)
        if self.loss_type == "cispo":
            pg = cispo_term(ratio, logp_v, adv, lo, hi)
        elif self.loss_type == "sapo":
            pg = sapo_term(ratio, adv, float(self.tau_pos), float(self.tau_neg))
        else:
            pg = clipped_term(ratio, adv, lo, hi)
        metrics: dict[str, torch.Tensor] = {}
        if self.dual_clip_c is not None:
            cap = float(self.dual_clip_c) * -adv
            negative = adv < 0
            metrics["dual_clip_frac"] = frac_mean(negative & (pg > cap))
            pg = torch.where(negative, torch.minimum(pg, cap), pg)
        if self.truncated_is_cap is not None:
            sampling = get(batch, "batch", "sampling_logprobs")
            if sampling is None:
                raise DataError(
                    "batch['sampling_logprobs'] is missing: truncated_is_cap needs the "
                    "inference engine's log-probs [B, T] of the sampled tokens"
                )
            log_w = old - sampling
            if gspo:
                log_w = (log_w * w).sum(-1) / n.clamp(min=1)
            is_weight = torch.exp(log_w).clamp(max=float(self.truncated_is_cap)).detach()
            pg = pg * is_weight
            metrics["truncated_is_weight_mean"] = frac_mean(is_weight)
        rollout_w = get(batch, "batch", "rollout_weights", seq_ok=True)
        if rollout_w is not None:  # train/inference mismatch correction (TIS or mask)
            rollout_w = rollout_w.detach()
            rollout_w = rollout_w[:, None] if rollout_w.dim() == 1 else rollout_w
            pg = (pg[:, None] if gspo else pg) * rollout_w
        if float(self.top_entropy_quantile) < 1:
            entropy = get(model_outputs, "model_outputs", "entropy")
            if entropy is None:
                raise DataError(
                    "model_outputs['entropy'] is missing: top_entropy_quantile < 1 selects "
                    "tokens by the policy's per-token entropy [B, T]"
                )
            keep = top_entropy_mask(entropy, mask, float(self.top_entropy_quantile))
            pg = (pg[:, None] if pg.dim() == 1 else pg) * keep.to(pg.dtype)
            metrics["entropy_kept_frac"] = frac_mean(keep)
        metrics["clip_frac_low"] = frac_mean((ratio < 1 - lo) & (adv < 0))
        metrics["clip_frac_high"] = frac_mean((ratio > 1 + hi) & (adv > 0))
        metrics["ratio_mean"] = frac_mean(ratio)

        policy_loss = loss_mean(pg[:, None] if pg.dim() == 1 else pg)
        loss = policy_loss
        metrics["policy_loss"] = policy_loss.detach()

        beta = float(self.reference_policy_kl_penalty)
        ref = get(batch, "batch", "reference_logprobs")
        if ref is None and beta > 0:
            raise DataError(
                "batch['reference_logprobs'] is missing: reference_policy_kl_penalty "
                f"{beta} > 0 penalises KL to a reference model; provide its log-probs [B, T], "
                "or set reference_policy_kl_penalty: 0"
            )
        if ref is not None:
            kl = loss_mean(kl_estimate(logp_v, ref.detach(), self.kl_estimator, self.kl_clamp))
            metrics["kl"] = kl.detach()
            if beta > 0:
                loss = loss + beta * kl

        entropy_coef = float(self.entropy_coef)
        entropy = get(model_outputs, "model_outputs", "entropy")
        if entropy is None and entropy_coef != 0:
            raise DataError(
                "model_outputs['entropy'] is missing: entropy_coef != 0 needs the per-token "
                "entropy [B, T] of the policy"
            )
        if entropy is not None:
            ent = loss_mean(entropy)
            metrics["entropy"] = ent.detach()
            if entropy_coef != 0:
                loss = loss - entropy_coef * ent

        value_coef = float(self.value_loss_coef)
        if value_coef > 0:
            values = get(model_outputs, "model_outputs", "values", seq_ok=True)
            returns = get(batch, "batch", "returns", seq_ok=True)
            for key, x, src in (("values", values, "model_outputs"), ("returns", returns, "batch")):
                if x is None:
                    raise DataError(
                        f"{src}['{key}'] is missing: value_loss_coef > 0 needs the value "
                        "predictions model_outputs['values'] ([B] or [B, T]) and the targets "
                        "batch['returns'] ([B])"
                    )
            values = values[:, None] if values.dim() == 1 else values
            returns = returns[:, None] if returns.dim() == 1 else returns
            value_loss = loss_mean(0.5 * (values - returns.detach()) ** 2)
            metrics["value_loss"] = value_loss.detach()
            loss = loss + value_coef * value_loss

        metrics["loss"] = loss.detach()
        return loss, metrics


_VARIANT_DOCS = {
    "bnpo": "BNPO: clipped policy gradient averaged over the valid tokens of the batch.",
    "dapo": "DAPO: token-level averaged clipped policy gradient (Yu et al. 2025).",
    "dr_grpo": "Dr.GRPO: token sums over a constant length, no length bias (Liu et al. 2025).",
    "gspo": "GSPO: sequence-level importance ratio and clipping (Zheng et al. 2025).",
    "gspo_token": "GSPO-token: GSPO's sequence ratio applied per token, per-token advantages "
    "allowed (Zheng et al. 2025).",
    "cispo": "CISPO: clipped, detached importance weight times log-prob; no token's gradient "
    "dropped (MiniMax-M1, 2025).",
    "sapo": "SAPO: soft, temperature-controlled sigmoid gate instead of the hard clip (Gao et "
    "al. 2025).",
}
for _name, _doc in _VARIANT_DOCS.items():
    _cls = type(
        f"GRPO_{_name}",
        (GRPOLossFn,),
        {
            "__doc__": f"{_doc}\n\n"
            f"``GRPOLossFn`` with ``loss_type: {_name}``; see its docstring for the formula.",
            "__module__": __name__,
            "_builtin": True,
            "_fixed_loss_type": _name,
        },
    )
    globals()[_cls.__name__] = LossFunctionRegistry.register(_name)(_cls)
del _name, _doc, _cls
