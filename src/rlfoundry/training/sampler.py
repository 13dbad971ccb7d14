"""Deterministic, resumable data order: a fresh seeded permutation each epoch; within a step,
examples ordered by length so that micro-batches pad less."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class EpochSampler:
    """Yields batches of example indices; ``state_dict()`` captures the exact position."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, shuffle: bool = True):
        if num_examples == 0:
            raise ValueError("cannot sample from an empty data set")
        self.n, self.batch_size, self.seed, self.shuffle = num_examples, batch_size, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def next_batch(self) -> list[int]:
        """The next ``batch_size`` indices, wrapping into the next epoch when needed."""
        out: list[int] = []
        while len(out) < self.batch_size:
            if self.position >= self.n:
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            take = min(self.batch_size - len(out), self.n - self.position)
            out.extend(self._order[self.position:self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ValueError(f"checkpoint was made on {state['n']} examples, the data now has {self.n}")
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]
        self._order = self._permutation(self.epoch)


def length_blocks(indices: list[int], lengths: Sequence[int], block: int | None) -> list[int]:
    """The step's ``indices`` reordered so that micro-batches hold similar lengths.

    Sorted by ``lengths[i]`` and cut into blocks of ``block`` (the micro-batch size), the
    blocks are laid out shortest, longest, second shortest, second longest, ... Micro-batches
    (consecutive blocks) then pad little, and any contiguous run of whole blocks -- one
    rank's share of the step under torchrun -- mixes short and long blocks, so the ranks'
    work stays balanced and a micro-batch holds the same examples whatever the number of
    ranks. Every index is kept once; the step's loss and gradient do not depend on the order
    (micro-batches are weighted by their share of the step's count). ``block`` None (one
    micro-batch per rank) keeps the order as it is.
    """
    if not block or block >= len(indices):
        return list(indices)
    ordered = sorted(indices, key=lambda i: lengths[i])
    blocks = [ordered[i:i + block] for i in range(0, len(ordered), block)]
    out: list[int] = []
    lo, hi = 0, len(blocks) - 1
    while lo <= hi:
        out.extend(blocks[lo])
        if hi != lo:
            out.extend(blocks[hi])
        lo, hi = lo + 1, hi - 1
    return out
