"""``model_outputs`` whose expensive keys are computed on first access.

A loss reads what it needs from ``model_outputs``. The cheap keys the trainer has anyway
(``logprobs``, policy log-probs, ``entropy`` when the loss weights it) are plain values; the
others are *producers* that run the first time a loss reads the key and are cached for the
rest of the micro-batch. So the built-in losses keep the fast path (no ``[B, T, V]`` logits,
no pooling) and losses written as in the NeMo RL-style examples can read ``logits``,
``responses`` or ``parameters`` without declaring ``requires``.

Costs, paid only by a loss that reads the key (per micro-batch):

- ``logits``: the lm-head applied to every position of the micro-batch's rows,
  ``[rows, T, V]`` floats kept for backward (the main memory cost of a language-model step;
  the fast path only scores the response tokens). The last hidden states come from the
  training forward, so there is no second forward.
- ``hidden``: the last hidden states ``[rows, T, H]`` (already held for backward).
- ``responses`` / ``response_embeddings`` / ``embeddings``: mean-pooled last hidden states over
  each row's response tokens, ``[rows, H]`` (one masked mean).
- ``entropy`` (when the loss does not weight entropy): from the full logits, as ``logits``.
- ``parameters``: the trainable parameters (a list; no compute).

``key in model_outputs`` and ``list(model_outputs)`` do not compute anything; ``dict(...)``,
``{**model_outputs}`` and ``.items()`` do compute every key, so avoid them in a hot loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any


class LazyOutputs(MutableMapping):
    """A mapping of ready ``values`` plus ``producers`` (key -> zero-argument callable) run on
    first access. Losses may also store keys (``model_outputs["x"] = ...``)."""

    def __init__(self, values: dict[str, Any] | None = None,
                 producers: dict[str, Callable[[], Any]] | None = None) -> None:
        self._values = {k: v for k, v in (values or {}).items() if v is not None}
        self._producers = {k: p for k, p in (producers or {}).items() if k not in self._values}

    def __getitem__(self, key: str) -> Any:
        if key in self._values:
            return self._values[key]
        if key not in self._producers:
            raise KeyError(f"model_outputs has no '{key}'; available: {', '.join(sorted(self))}")
        self._values[key] = self._producers.pop(key)()
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._producers.pop(key, None)
        self._values[key] = value

    def __delitem__(self, key: str) -> None:
        if key in self._values:
            del self._values[key]
        else:
            del self._producers[key]

    def __iter__(self) -> Iterator[str]:
        # a snapshot: reading a key while iterating (``.items()``) moves it between the dicts
        return iter([*self._values, *self._producers])

    def __len__(self) -> int:
        return len(self._values) + len(self._producers)

    def __contains__(self, key: object) -> bool:
        return key in self._values or key in self._producers

    def computed(self) -> list[str]:
        """Keys whose values exist now (given, stored, or produced by an access)."""
        return list(self._values)

    def __repr__(self) -> str:
        return (f"LazyOutputs(computed={sorted(self._values)}, "
                f"on_first_access={sorted(self._producers)})")
