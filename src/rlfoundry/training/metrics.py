"""Collect per-micro-batch metrics as tensors; reduce them to floats once per step."""

from __future__ import annotations

import math
from typing import Any

import torch

from rlfoundry.training import distributed


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> 'a/b' keys; keeps numbers and 0-dim tensors, drops everything else."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        elif isinstance(v, torch.Tensor) and v.numel() == 1:
            out[key] = v.detach().reshape(())
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out


class WeightedMean:
    """Weighted mean of metric dicts over micro-batches (weights = share of the global count)."""

    def __init__(self) -> None:
        self._sums: dict[str, Any] = {}
        self._weights: dict[str, float] = {}

    def add(self, metrics: dict[str, Any], weight: float) -> None:
        for k, v in flatten(metrics).items():
            v = v.detach().double() if isinstance(v, torch.Tensor) else float(v)
            self._sums[k] = self._sums.get(k, 0.0) + v * weight
            self._weights[k] = self._weights.get(k, 0.0) + weight

    def result(self, across_ranks: bool = False) -> dict[str, float]:
        """One host transfer for all tensor metrics. ``across_ranks``: under torchrun, sum
        the weighted sums and the weights of every rank first (one collective), so the mean
        is over the global batch; every rank must call it then."""
        keys = list(self._sums)
        tensors = [k for k in keys if isinstance(self._sums[k], torch.Tensor)]
        values = {k: float(self._sums[k]) for k in keys if k not in tensors}
        if tensors:
            stacked = torch.stack([self._sums[k].detach() for k in tensors]).tolist()
            values.update(zip(tensors, stacked))
        sums = {k: values[k] for k in keys}
        weights = dict(self._weights)
        if across_ranks and distributed.current().enabled:
            sums, weights = _merge(distributed.all_gather_object((sums, weights)))
        return {k: sums[k] / weights[k] if weights[k] else sums[k] for k in sums}


def _merge(parts: list[tuple[dict[str, float], dict[str, float]]]):
    """Add up per-rank (weighted sums, weights); keys in first-seen order."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for part_sums, part_weights in parts:
        for k, v in part_sums.items():
            sums[k] = sums.get(k, 0.0) + v
            weights[k] = weights.get(k, 0.0) + part_weights[k]
    return sums, weights


def nonfinite_keys(metrics: dict[str, float]) -> list[str]:
    return [k for k, v in metrics.items() if not math.isfinite(v)]


TIMING_SUFFIXES = ("_per_s", "_seconds")


def split_timings(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, timings)``: wall-clock figures (names ending in ``_per_s`` or ``_seconds``)
    apart from the rest, so that metrics.jsonl is identical across runs with the same seed."""
    timings = {k: v for k, v in metrics.items() if k.endswith(TIMING_SUFFIXES)}
    return {k: v for k, v in metrics.items() if k not in timings}, timings
