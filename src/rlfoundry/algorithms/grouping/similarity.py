"""Similarity helpers for grouping: cosine matrices, safe z-scores, greedy group formation."""

from __future__ import annotations

import torch


def cosine_similarity_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` cosine similarities (float64) of the rows of ``embeddings`` ``[N, D]``."""
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {tuple(embeddings.shape)}")
    unit = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    return unit @ unit.T


def zscore(values: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` over the finite values (float64); NaN entries become 0, and so does
    everything when the std is 0 (a constant criterion carries no information)."""
    x = values.double()
    ok = torch.isfinite(x)
    out = torch.zeros_like(x)
    if int(ok.sum()) < 2:
        return out
    std = x[ok].std()
    if not std > 0:
        return out
    out[ok] = (x[ok] - x[ok].mean()) / std
    return out


def pairwise_abs_difference(values: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` matrix of ``|x_i - x_j|``."""
    x = values.double()
    return (x[:, None] - x[None, :]).abs()


def embedding_novelty(embeddings: torch.Tensor) -> torch.Tensor:
    """Per-sample diversity ``[N]``: 1 - the mean cosine similarity to the other samples."""
    sim = cosine_similarity_matrix(embeddings)
    n = sim.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.float64)
    return 1.0 - (sim.sum(1) - sim.diagonal()) / (n - 1)


def greedy_similarity_groups(similarity: torch.Tensor, group_size: int | None, min_size: int = 1,
                             threshold: float | None = None) -> list[torch.Tensor]:
    """Greedy grouping: each still-unused sample (in index order) takes the most similar unused
    samples, up to ``group_size`` members (``None``: no cap), only those with similarity above
    ``threshold`` when one is given. Groups smaller than ``min_size`` are left out."""
    n = similarity.shape[0]
    cap = n if group_size is None else group_size
    unused = torch.ones(n, dtype=torch.bool)
    groups = []
    for i in range(n):
        if not unused[i]:
            continue
        scores = similarity[i].double().masked_fill(~unused, float("-inf"))
        scores[i] = float("inf")
        candidates = torch.argsort(scores, descending=True, stable=True)[:cap]
        keep = candidates[torch.isfinite(scores[candidates]) | (candidates == i)]
        if threshold is not None:
            keep = keep[(scores[keep] > threshold) | (keep == i)]
        unused[keep] = False
        if keep.numel() >= min_size:
            groups.append(keep)
    return groups
