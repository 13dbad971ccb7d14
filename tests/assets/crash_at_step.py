"""Test plugin: make a run fail before optimizer step RLF_TEST_CRASH_AT_STEP (1-based), on every
rank, as a killed job would -- after the checkpoints of the earlier steps were written."""

import os

from rlfoundry.training.base import Trainer

_crash_at = int(os.environ.get("RLF_TEST_CRASH_AT_STEP", "0"))
_original = Trainer.optimizer_step


def _optimizer_step(self, indices):
    if _crash_at and self.step + 1 == _crash_at:
        raise SystemExit(f"test crash before step {_crash_at}")
    return _original(self, indices)


Trainer.optimizer_step = _optimizer_step
