"""Stop a training run mid-way, as a crash would, for the resume tests."""

import pytest


class Crash(RuntimeError):
    """The injected failure (nothing in the library raises it)."""


def train_until_crash(trainer, after_step: int) -> None:
    """Run ``trainer.train()`` with the optimizer step after step ``after_step`` raising
    :class:`Crash` (the checkpoints written before it stay); assert that it stopped there."""
    original = trainer.optimizer_step

    def crash(indices):
        if trainer.step == after_step:
            raise Crash(f"crash after step {after_step}")
        return original(indices)

    trainer.optimizer_step = crash
    with pytest.raises(Crash):
        trainer.train()
