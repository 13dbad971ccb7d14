"""Random streams of rollout sampling (``algorithm.sampling.seed_per_prompt``)."""

from __future__ import annotations

import hashlib

import torch


def prompt_seed(seed: int, rollout_round: int, position: int) -> int:
    """Seed of the generator for the prompt at ``position`` of the global batch of rollout
    round ``rollout_round`` (``sampling.seed_per_prompt``): independent of the rank layout."""
    digest = hashlib.sha256(f"{seed}/{rollout_round}/{position}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def prompt_generators(seed: int, rollout_round: int, positions: list[int],
                      device: torch.device) -> list[torch.Generator]:
    """One generator per prompt position (:func:`prompt_seed`)."""
    return [torch.Generator(device).manual_seed(prompt_seed(seed, rollout_round, p)) for p in positions]
