"""Group quality: how many groups formed, how big, how coherent, and whether they can teach.

The trainer logs :func:`group_quality_metrics` every rollout under ``group/``. Reward
statistics use the same definitions as the advantage estimators (NaN rewards left out,
unbiased within-group std, a group whose valid rewards are all equal has zero variance).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlfoundry.algorithms.advantages import group_reward_stats


def group_cohesion(groups: Sequence[torch.Tensor], embeddings: torch.Tensor,
                   normalize: bool = True) -> torch.Tensor:
    """Mean over groups of ``1 / (1 + mean distance of members to the group centroid)``.

    The seed's ``monitor_group_quality`` formula; 1 means identical members. With
    ``normalize`` (the default, and what the trainer logs) embeddings are L2-normalised first,
    so the value does not depend on the embedding scale (policy hidden states are much larger
    than sentence-encoder outputs) and lies in (0.5, 1]. Empty input gives 0.
    """
    emb = embeddings.double()
    if normalize:
        emb = torch.nn.functional.normalize(emb, dim=-1)
    qualities = []
    for g in groups:
        members = emb[torch.as_tensor(g, dtype=torch.long)]
        if members.shape[0] == 0:
            continue
        distances = torch.linalg.vector_norm(members - members.mean(0), dim=-1)
        qualities.append(1.0 / (1.0 + distances.mean()))
    return torch.stack(qualities).mean() if qualities else emb.new_zeros(())


def group_quality_metrics(groups: Sequence[torch.Tensor], num_samples: int, rewards: torch.Tensor,
                          embeddings: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """0-dim float64 tensors: ``group/num_groups``, ``group/mean_size``, ``group/min_size``,
    ``group/max_size``, ``group/ungrouped_frac`` (samples in no group), ``group/reward_std_within``
    (mean within-group reward std), ``group/zero_variance_frac`` (groups with no reward
    variance, which give no learning signal) and, with embeddings, ``group/cohesion``."""
    groups = [torch.as_tensor(g, dtype=torch.long).reshape(-1) for g in groups]
    sizes = torch.tensor([g.numel() for g in groups], dtype=torch.float64)
    grouped = int(sizes.sum()) if groups else 0
    stats = group_reward_stats(rewards.double(), groups)
    zero = torch.zeros((), dtype=torch.float64)
    out = {
        "group/num_groups": torch.tensor(float(len(groups)), dtype=torch.float64),
        "group/mean_size": sizes.mean() if groups else zero,
        "group/min_size": sizes.min() if groups else zero,
        "group/max_size": sizes.max() if groups else zero,
        "group/ungrouped_frac": torch.tensor(1.0 - grouped / max(num_samples, 1),
                                             dtype=torch.float64),
        "group/reward_std_within": stats["reward_std_mean"],
        "group/zero_variance_frac": stats["frac_zero_std_groups"],
    }
    if embeddings is not None:
        out["group/cohesion"] = group_cohesion(groups, embeddings)
    return out
