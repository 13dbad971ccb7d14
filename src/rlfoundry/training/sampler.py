"""Deterministic, resumable data order: a fresh seeded permutation each epoch."""

from __future__ import annotations

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
