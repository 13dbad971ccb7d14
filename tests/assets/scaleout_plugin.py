"""Test plugin for tests/test_scaleout2.py: before optimizer step N (1-based),
``RLF_TEST_SIGKILL_AT=rank:N`` kills that rank outright (a lost node), and
``RLF_TEST_SIGTERM_AT=N`` makes every rank send itself SIGTERM (what torchrun forwards when
a scheduler stops the job). Read at call time: one worker process runs several trainings."""

import os
import signal

from rlfoundry.training.base import Trainer

_original = Trainer.optimizer_step


def _optimizer_step(self, indices):
    step = self.step + 1
    kill = os.environ.get("RLF_TEST_SIGKILL_AT", "")
    if kill and kill == f"{self.dist.rank}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("RLF_TEST_SIGTERM_AT") == str(step):
        os.kill(os.getpid(), signal.SIGTERM)
    return _original(self, indices)


Trainer.optimizer_step = _optimizer_step
