"""Helpers both trainers share with the NeMo RL-style example code (docs/customization.md,
"Trainer helpers").

The documents the API follows call trainer methods they never define (``self.logger.log``,
``self.compute_coherence_loss``, ``self.debug_algorithm``, ...). :class:`SeedHelpers` gives
them their obvious meaning; :mod:`~rlfoundry.algorithms.dpo_helpers` and
:mod:`~rlfoundry.algorithms.grpo_helpers` add the algorithm-specific ones. It also builds the
lazy ``model_outputs`` (:mod:`~rlfoundry.algorithms.lazy_outputs`) from the training forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from rlfoundry.algorithms.lazy_outputs import LazyOutputs
from rlfoundry.training.logger import NullLogger


class TrainerLogger:
    """``trainer.logger``: the run's metrics logger, callable as ``log(step, metrics)`` or, as
    in the example code, ``log(metrics)`` (the current step). Numbers and one-element tensors
    are logged as metrics; other values (strings such as ``'algorithm': 'dpo'``) are written
    to the log as text. Everything else is the wrapped logger's."""

    def __init__(self, inner: Any, trainer: Any) -> None:
        self.inner, self._trainer = inner, trainer

    def log(self, step: int | Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> None:
        if metrics is None and isinstance(step, Mapping):
            step, metrics = self._trainer.step, step
        numbers, text = {}, {}
        for k, v in dict(metrics or {}).items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                numbers[k] = float(v.detach())
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                numbers[k] = v
            else:
                text[k] = v
        if numbers:
            self.inner.log(int(step), numbers)
        if text:
            self.inner.write(f"step {step}: " + ", ".join(f"{k}={v}" for k, v in text.items()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def score_loss(metrics: Any, key: str) -> torch.Tensor:
    """Loss from per-sample scores in [0, 1] (higher is better): ``metrics`` is a tensor of
    scores or a mapping holding ``metrics[key]``. With ``metrics["logps"]`` (each sample's
    mean token log-prob, as ``extract_dialogue_metrics`` gives) it is the REINFORCE term
    ``-mean((score - mean score) * logps)``, which pushes probability towards better-scored
    samples; without, ``mean(1 - score)``, a number to log (a score from data has no gradient)."""
    if metrics is None:
        return torch.tensor(0.0)
    scores = metrics.get(key) if isinstance(metrics, Mapping) else metrics
    if scores is None:
        return torch.tensor(0.0)
    scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    logps = metrics.get("logps") if isinstance(metrics, Mapping) else None
    if logps is not None and logps.numel() == scores.numel():
        scores = scores.to(logps.device, logps.dtype)
        return -((scores - scores.mean()) * logps).mean()
    return (1.0 - scores).mean()


class SeedHelpers:
    """Shared helpers; mixed into :class:`DPOTrainer` and :class:`GRPOTrainer`."""

    _logger: Any = None
    forward_in_flight: tuple[dict[str, Any], Any] | None = None

    @property
    def logger(self) -> TrainerLogger:
        """The run's logger (``log(step, metrics)`` or ``log(metrics)``); a no-op before
        ``train()`` opens the run's log."""
        if self._logger is None:
            self._logger = TrainerLogger(NullLogger(), self)
        return self._logger

    @logger.setter
    def logger(self, inner: Any) -> None:
        self._logger = inner if isinstance(inner, TrainerLogger) else TrainerLogger(inner, self)

    def compute_coherence_loss(self, metrics: Any) -> torch.Tensor:
        """Coherence term. ``metrics`` a token-level view (a mapping with ``logprobs`` and
        ``response_mask``, e.g. DPO's ``additional_metrics``): the built-in ``coherence``
        objective (spread of token surprisal within each response; differentiable).
        Otherwise per-sample scores (a tensor, or a mapping with ``coherence``): see
        :func:`score_loss`."""
        if isinstance(metrics, Mapping) and "logprobs" in metrics and "response_mask" in metrics:
            from rlfoundry.algorithms.loss_functions import LossFunctionRegistry

            coherence = LossFunctionRegistry.build({"type": "coherence"})
            return coherence(dict(metrics), {"logprobs": metrics["logprobs"]})[0]
        return score_loss(metrics, "coherence")

    def compute_engagement_loss(self, metrics: Any) -> torch.Tensor:
        """Engagement term from ``metrics`` (scores, or a mapping with ``engagement``)."""
        return score_loss(metrics, "engagement")

    def validate_loss(self, loss_value: torch.Tensor) -> None:
        """Raise ``ValueError`` for a NaN/inf loss; warn (print) for a negative one."""
        if torch.isnan(loss_value) or torch.isinf(loss_value):
            raise ValueError("Loss is NaN or infinite")
        if loss_value < 0:
            print("Warning: Negative loss value detected")

    # ---- lazy model outputs ----------------------------------------------------------------
    def record_forward(self, batch: dict[str, Any], out: Any) -> None:
        """Remember the micro-batch and its training forward (``TokenLogprobs``) for the lazy
        ``model_outputs`` keys and the helpers that read the batch in flight."""
        self.forward_in_flight = (batch, out)

    def lazy_outputs(self, values: dict[str, Any], pool: Callable[[torch.Tensor], torch.Tensor]) -> LazyOutputs:
        """``model_outputs`` for the micro-batch in flight: ``values`` plus ``logits``,
        ``hidden``, ``responses`` (alias ``response_embeddings``, ``embeddings``), ``entropy``
        and ``parameters`` computed on first access (costs: :mod:`.lazy_outputs`)."""
        batch, out = self.forward_in_flight or ({}, None)
        hidden = getattr(out, "hidden", None)
        cache: dict[str, torch.Tensor] = {}

        def logits() -> torch.Tensor:
            if "logits" not in cache:
                if hidden is None:
                    raise KeyError("model_outputs['logits']: this forward kept no hidden states")
                model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
                cache["logits"] = model.get_output_embeddings()(hidden)
            return cache["logits"]

        def pooled() -> torch.Tensor:
            if "pooled" not in cache:
                cache["pooled"] = pool(hidden)
            return cache["pooled"]

        def entropy() -> torch.Tensor:
            lg = logits()[:, :-1].float()
            ent = -(lg.softmax(-1) * lg.log_softmax(-1)).sum(-1)
            mask = getattr(out, "mask", None)
            return ent * mask if mask is not None and mask.shape == ent.shape else ent

        producers = {"logits": logits, "hidden": lambda: hidden, "responses": pooled,
                     "response_embeddings": pooled, "embeddings": pooled, "entropy": entropy,
                     "parameters": lambda: list(self.trainable_parameters())}
        if hidden is None:
            producers = {"parameters": producers["parameters"]}
        return LazyOutputs(values, producers)

    # ---- diagnostics -----------------------------------------------------------------------
    def debug_algorithm(self, algorithm_type: str | None = None, **kwargs: Any) -> str:
        """Print (and return) the diagnostics of the example code's ``debug_algorithm``: for
        DPO the chosen/rejected implicit-reward ranges and the gap, for GRPO the number and
        size of the groups and each group's embedding spread. Values not given as keyword
        arguments are the last training step's."""
        kind = algorithm_type or getattr(self, "kind", "")
        lines = self.debug_lines(kind, **kwargs)
        text = "\n".join(lines)
        print(text)
        return text

    def debug_lines(self, kind: str, **kwargs: Any) -> list[str]:
        return [f"no diagnostics for algorithm type {kind!r}"]
