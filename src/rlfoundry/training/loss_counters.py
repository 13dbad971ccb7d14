"""Step counters of stateful losses: ``training_step`` and rewound per-call counters.

The trainer sets ``loss.training_step`` (on the loss and every component) to the number of
optimizer steps completed: ``k`` during step ``k`` (0-based, every micro-batch), ``k + 1``
after it (so evaluation after step ``k`` sees ``k + 1``). Micro-batches and evaluation do not
move it.

Losses written as in the NeMo RL-style examples count calls instead (``self.current_step
+= 1`` inside ``__call__``), and a call happens per micro-batch and per evaluation batch. To
make that pattern mean "optimizer steps", the trainer rewinds the loss's plain ``int``
attributes: every micro-batch of a step starts from the values the step started with, the
values after the first micro-batch are kept, and every evaluation batch starts from (and
evaluation ends with) the values it found (:class:`Rewinding`). A
counter incremented once per call thus advances once per optimizer step, and every
micro-batch of a step sees the same value. Only ``int`` attributes (not ``bool``) are
rewound; lists, dicts and floats (histories, running averages) see every call.
"""

from __future__ import annotations

from typing import Any

from rlfoundry.training.schedules import loss_components


def int_state(loss_fn: Any) -> list[tuple[Any, str, int]]:
    """``(component, attribute, value)`` of every plain int attribute of the loss and its
    components (``training_step`` excluded: the trainer owns it)."""
    out = []
    for c in loss_components(loss_fn):
        for name, value in list(getattr(c, "__dict__", {}).items()):
            if type(value) is int and name != "training_step":
                out.append((c, name, value))
    return out


def restore(state: list[tuple[Any, str, int]]) -> None:
    for component, name, value in state:
        setattr(component, name, value)


def set_training_step(loss_fn: Any, step: int) -> None:
    """``training_step = step`` on the loss and every component that accepts attributes."""
    for c in loss_components(loss_fn):
        try:
            c.training_step = step
        except AttributeError:  # __slots__ objects: no attribute, nothing there reads it
            continue


class Rewinding:
    """A loss proxy for evaluation: every call starts from the int counters of ``loss_fn``
    as they were when the proxy was made; any other attribute is the loss's own."""

    def __init__(self, loss_fn: Any) -> None:
        self.__dict__["_loss"] = loss_fn
        self.__dict__["_state"] = int_state(loss_fn)

    @property  # type: ignore[misc]
    def __class__(self):  # isinstance checks (e.g. the DPO batch layout) see the loss's class
        return type(self._loss)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        restore(self._state)
        return self._loss(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loss, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._loss, name, value)

    def rewind(self) -> Any:
        """Restore the counters; return the real loss."""
        restore(self._state)
        return self._loss
