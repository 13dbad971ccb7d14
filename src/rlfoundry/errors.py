"""Exceptions a user can cause. Each message says what was wrong, where, and what to do."""

from __future__ import annotations


class RLFoundryError(Exception):
    """Base class of every error rlfoundry raises on purpose."""


class ConfigError(RLFoundryError, ValueError):
    """A configuration value is unknown, mistyped or incompatible (message names the key path)."""


class DataError(RLFoundryError, ValueError):
    """A data row or file is malformed (message names the file and line/row)."""


class NonFiniteError(RLFoundryError, FloatingPointError):
    """A loss, gradient or reward became NaN/inf (message names the step and component)."""


class CheckpointError(RLFoundryError):
    """A checkpoint could not be written or read."""


class OutputError(RLFoundryError):
    """The output directory cannot be written (full disk, no permission, a file in the way)."""


class TrainingInterrupted(RLFoundryError):
    """SIGTERM/SIGINT stopped training after a finished step; a checkpoint holds the progress.

    ``step`` is the last finished step, ``signum`` the signal, ``checkpoint`` the checkpoint to
    resume from (None when no step was finished and none existed).
    """

    def __init__(self, message: str, *, step: int, signum: int, checkpoint=None) -> None:
        super().__init__(message)
        self.step, self.signum, self.checkpoint = step, signum, checkpoint


class LossError(RLFoundryError, TypeError):
    """A loss (or a train_step/compute_loss override) returned something the trainer cannot
    use: a non-scalar loss, metrics that are not a dict, a metric that is not one number."""


class RolloutEngineError(RLFoundryError):
    """An external rollout engine (vLLM) is missing, unreachable or failed."""


class EnvironmentStepError(RLFoundryError):
    """A multi-turn environment's ``reset``, ``step`` or ``final_reward`` raised, timed out or
    returned something malformed (message names the sample, the turn and the place)."""


class PeerLostError(RLFoundryError):
    """Under torchrun, another rank's process or node went away mid-run (a collective failed
    with a closed connection). ``lost`` lists the ranks that did not answer, when known."""

    def __init__(self, message: str, *, lost: list[int] | None = None) -> None:
        super().__init__(message)
        self.lost = lost
