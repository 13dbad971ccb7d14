"""Group-relative advantage estimators over a flat reward tensor.

Every estimator is ``fn(rewards, groups, **options) -> advantages`` where ``rewards`` is a
float tensor ``[N]`` and ``groups`` a list of 1-D index tensors partitioning some or all of
the ``N`` samples (typically the completions of one prompt). A NaN reward means "no reward
for this sample": it is left out of its group's statistics and gets advantage 0. Samples in
no group, and groups whose valid rewards are all equal (including singletons), get 0.

Standard deviations are the unbiased sample std (Bessel's correction, ``ddof = 1``), as
``torch.std`` computes by default; a group with fewer than two valid rewards has std 0.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlfoundry.errors import ConfigError, DataError
from rlfoundry.registry import Registry, did_you_mean

AdvantageEstimator = Callable[..., torch.Tensor]
ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")
SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")


def _check(rewards: torch.Tensor, groups: Sequence[torch.Tensor]) -> torch.Tensor:
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if rewards.dim() != 1:
        raise DataError(f"rewards must be a 1-D tensor [N], got shape {tuple(rewards.shape)}")
    n = rewards.numel()
    seen = torch.zeros(n, dtype=torch.bool)
    for k, g in enumerate(groups):
        g = torch.as_tensor(g)
        if g.dim() != 1 or (g.numel() and g.is_floating_point()):
            raise DataError(f"groups[{k}] must be a 1-D tensor of sample indices")
        if g.numel() and (int(g.min()) < 0 or int(g.max()) >= n):
            raise DataError(f"groups[{k}] has an index outside [0, {n}) (N = len(rewards))")
        if seen[g].any() or g.unique().numel() != g.numel():
            raise DataError(f"groups[{k}] repeats a sample index; groups must be disjoint")
        seen[g] = True
    return rewards


def _valid(rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """The indices of ``group`` whose reward is not NaN."""
    group = torch.as_tensor(group, dtype=torch.long, device=rewards.device)
    return group[~torch.isnan(rewards[group])]


def _std(values: torch.Tensor) -> torch.Tensor:
    return values.std() if values.numel() > 1 else values.new_zeros(())


def _constant(values: torch.Tensor) -> bool:
    return values.numel() < 2 or bool((values == values[0]).all())


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(
    rewards: torch.Tensor,
    groups: Sequence[torch.Tensor],
    *,
    scale_rewards: str = "group",
    eps: float = 1e-4,
) -> torch.Tensor:
    """GRPO group-normalised advantage (Shao et al. 2024): (r - mean_g) / (std + eps).

    ``scale_rewards``: "group" divides by the std of the group's valid rewards, "batch" by
    the std of all valid rewards of grouped samples, "none" does not divide (Dr.GRPO, Liu et
    al. 2025). Stds are unbiased (``ddof = 1``).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ConfigError(
            f"scale_rewards: unknown value {scale_rewards!r}"
            f"{did_you_mean(scale_rewards, SCALE_REWARDS)}; choose one of: "
            f"{', '.join(SCALE_REWARDS)}"
        )
    rewards = _check(rewards, groups)
    valid = [_valid(rewards, g) for g in groups]
    out = torch.zeros_like(rewards)
    batch_std = rewards.new_zeros(())
    if scale_rewards == "batch":
        everyone = torch.cat(valid) if valid else rewards.new_zeros(0, dtype=torch.long)
        batch_std = _std(rewards[everyone.long()])
    for idx in valid:
        values = rewards[idx]
        if _constant(values):
            continue
        centred = values - values.mean()
        if scale_rewards == "group":
            centred = centred / (values.std() + eps)
        elif scale_rewards == "batch":
            centred = centred / (batch_std + eps)
        out[idx] = centred
    return out


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor, groups: Sequence[torch.Tensor]) -> torch.Tensor:
    """Dr.GRPO advantage (Liu et al. 2025): r - mean_g, no std scaling.

    The same as ``grpo`` with ``scale_rewards: none``; registered separately for clarity.
    """
    return grpo_advantages(rewards, groups, scale_rewards="none")


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo_advantages(rewards: torch.Tensor, groups: Sequence[torch.Tensor]) -> torch.Tensor:
    """RLOO leave-one-out advantage (Ahmadian et al. 2024): r_i - mean_{j != i} r_j.

    The baseline is the mean of the other valid rewards of the group; with ``k`` valid
    rewards this equals ``k / (k - 1) * (r_i - mean_g)``. Singleton groups get 0.
    """
    rewards = _check(rewards, groups)
    out = torch.zeros_like(rewards)
    for g in groups:
        idx = _valid(rewards, g)
        values = rewards[idx]
        if _constant(values):
            continue
        out[idx] = values - (values.sum() - values) / (values.numel() - 1)
    return out


@ADVANTAGE_ESTIMATORS.register("grpo_loo_std")
def grpo_loo_std_advantages(
    rewards: torch.Tensor, groups: Sequence[torch.Tensor], *, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO with leave-one-out statistics: ``(r_i - mean_{-i}) / (std_{-i} + eps)``.

    ``mean_{-i}`` and ``std_{-i}`` (unbiased) are over the *other* valid rewards of the
    group (the leave-one-out baseline of NeMo RL's ``use_leave_one_out_baseline``, Ahmadian
    et al. 2024, with the scale left out the same way), so a sample's own reward is in
    neither its baseline nor its scale. Where ``std_{-i}`` is 0 (all others equal, or fewer
    than two others) the group's std is used instead, so a lone success among failures gets
    a bounded advantage rather than ``1 / eps``. Constant groups and singletons get 0.
    """
    rewards = _check(rewards, groups)
    out = torch.zeros_like(rewards)
    for g in groups:
        idx = _valid(rewards, g)
        values = rewards[idx]
        if _constant(values):
            continue
        k = values.numel()
        for j in range(k):
            others = torch.cat([values[:j], values[j + 1:]])
            scale = _std(others)
            if scale == 0:
                scale = values.std()
            out[idx[j]] = (values[j] - others.mean()) / (scale + eps)
    return out


REINFORCE_BASELINES: tuple[str, ...] = ("group", "batch")


@ADVANTAGE_ESTIMATORS.register("process")
def process_outcome_advantages(rewards: torch.Tensor, groups: Sequence[torch.Tensor]) -> torch.Tensor:
    """Process supervision (``algorithm.advantage.process``): the GRPO trainer trains on
    per-token advantages from step rewards (``algorithms/process_rewards.py``). This
    per-sequence value, the ``grpo`` advantage of the outcome rewards, is only logged and
    checked; it never reaches the loss."""
    return grpo_advantages(rewards, groups)


@ADVANTAGE_ESTIMATORS.register("reinforce_pp")
def reinforce_pp_advantages(
    rewards: torch.Tensor,
    groups: Sequence[torch.Tensor],
    *,
    baseline: str = "group",
    eps: float = 1e-8,
) -> torch.Tensor:
    """REINFORCE++ (Hu et al. 2025): reward minus a baseline, normalised over the batch.

    arXiv:2501.03262. ``A = (d - mean_B d) / (std_B d + eps)`` where:

    ``baseline: group`` (REINFORCE++-baseline, OpenRLHF's ``reinforce_baseline``): ``d_i =
    r_i - mean_g`` over the group's valid rewards; ``batch`` (plain REINFORCE++ on outcome
    rewards): ``d_i = r_i``, the batch mean being the baseline. ``mean_B`` / ``std_B``
    (unbiased) run over every grouped sample with a valid reward; unlike ``grpo`` no group's
    own std divides. Samples outside groups or with a NaN reward get 0, and so does every
    sample when the batch's ``d`` is constant.
    """
    if baseline not in REINFORCE_BASELINES:
        raise ConfigError(
            f"algorithm.advantage.baseline: unknown value {baseline!r}"
            f"{did_you_mean(baseline, REINFORCE_BASELINES)}; choose one of: "
            f"{', '.join(REINFORCE_BASELINES)}"
        )
    rewards = _check(rewards, groups)
    valid = [_valid(rewards, g) for g in groups]
    out = torch.zeros_like(rewards)
    if not valid:
        return out
    everyone = torch.cat(valid)
    d = rewards.clone()
    if baseline == "group":
        for idx in valid:
            if idx.numel():
                d[idx] = rewards[idx] - rewards[idx].mean()
    return _whitened(d, everyone, eps, out)


def _whitened(values: torch.Tensor, idx: torch.Tensor, eps: float,
              out: torch.Tensor) -> torch.Tensor:
    """``out`` with ``(values - mean) / (std + eps)`` written at ``idx`` (stats over ``idx``);
    left as it is when the values there are constant."""
    chosen = values[idx]
    if _constant(chosen):
        return out
    out = out.clone()
    out[idx] = (chosen - chosen.mean()) / (chosen.std() + eps)
    return out


def whiten_advantages(advantages: torch.Tensor, rewards: torch.Tensor,
                      groups: Sequence[torch.Tensor], eps: float = 1e-8) -> torch.Tensor:
    """``algorithm.advantage.whiten``: advantages shifted and scaled to mean 0 and (unbiased)
    std 1 over the grouped samples with a valid reward, after the estimator and before
    ``clip``; other samples keep their advantage (0). Constant advantages stay as they are."""
    rewards = _check(rewards, groups)
    valid = [_valid(rewards, g) for g in groups]
    if not valid:
        return advantages
    return _whitened(advantages, torch.cat(valid), eps, advantages)


def clip_advantages(advantages: torch.Tensor, clip: float | None) -> torch.Tensor:
    """Clamp advantages to ``[-clip, clip]``; ``None`` leaves them unchanged."""
    if clip is None:
        return advantages
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
        raise ConfigError(f"advantage clip: must be a number > 0 or null, got {clip!r}")
    return advantages.clamp(-float(clip), float(clip))


def group_reward_stats(
    rewards: torch.Tensor, groups: Sequence[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Detached 0-dim statistics of the groups' rewards (NaN rewards left out).

    ``frac_zero_std_groups``: fraction of groups whose valid rewards are all equal
    (singletons and groups with no valid reward included: they carry no learning signal);
    ``reward_std_mean``: mean over groups of the unbiased within-group std (0 below two valid
    rewards); ``num_groups``; ``mean_group_size`` (samples per group, NaN rewards included).
    """
    rewards = _check(rewards, groups).detach()
    zero = rewards.new_zeros(())
    if not groups:
        return {
            "frac_zero_std_groups": zero,
            "reward_std_mean": zero,
            "num_groups": zero,
            "mean_group_size": zero,
        }
    values = [rewards[_valid(rewards, g)] for g in groups]
    constant = torch.tensor([_constant(v) for v in values], dtype=rewards.dtype)
    stds = torch.stack([_std(v) for v in values])
    sizes = torch.tensor([torch.as_tensor(g).numel() for g in groups], dtype=rewards.dtype)
    return {
        "frac_zero_std_groups": constant.mean(),
        "reward_std_mean": stds.mean(),
        "num_groups": torch.tensor(float(len(groups)), dtype=rewards.dtype),
        "mean_group_size": sizes.mean(),
    }


def compute_advantages(
    name: str,
    rewards: torch.Tensor,
    groups: Sequence[torch.Tensor],
    *,
    clip: float | None = None,
    whiten: bool = False,
    **options: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Advantages from the estimator registered as ``name``, whitened across the batch when
    ``whiten``, clipped, and the group stats."""
    fn = ADVANTAGE_ESTIMATORS.get(name)
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        allowed = [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        for key in options:
            if key not in allowed:
                raise ConfigError(
                    f"advantage estimator '{name}' has no option '{key}'"
                    f"{did_you_mean(key, allowed)}; its options: {', '.join(allowed) or '(none)'}"
                )
    advantages = fn(rewards, groups, **options)
    if whiten:
        advantages = whiten_advantages(advantages, rewards, groups)
    advantages = clip_advantages(advantages, clip)
    return advantages, group_reward_stats(rewards, groups)


# estimator -> {option: the AdvantageConfig field passed as that option}
_CONFIG_OPTIONS = {"grpo": {"scale_rewards": "scale_rewards"}, "reinforce_pp": {"baseline": "baseline"}}


def compute_configured_advantages(cfg: Any, rewards: torch.Tensor, groups: Sequence[torch.Tensor]
                                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`compute_advantages` as ``algorithm.advantage`` (``cfg``) configures it:
    ``estimator``, its options (``scale_rewards`` for grpo, ``baseline`` for reinforce_pp),
    ``whiten`` and ``clip``."""
    options = {opt: getattr(cfg, field) for opt, field in _CONFIG_OPTIONS.get(cfg.estimator, {}).items()}
    return compute_advantages(cfg.estimator, rewards, groups, clip=cfg.clip,
                              whiten=bool(getattr(cfg, "whiten", False)), **options)
