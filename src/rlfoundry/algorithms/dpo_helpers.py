"""DPO trainer helpers the NeMo RL-style example code calls (docs/customization.md,
"Trainer helpers"): ``self.beta``, ``self.standard_dpo_loss``, ``self.compute_fluency_loss``,
``self.chosen_rewards`` / ``self.rejected_rewards`` and the DPO diagnostics.

Inside a ``compute_loss`` / ``train_step`` override the batch in flight also carries
``additional_metrics``: the token-level view ``{"logprobs", "response_mask", "is_chosen"}``
that ``compute_coherence_loss`` reads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rlfoundry.algorithms.reference import pair_response_embeddings
from rlfoundry.algorithms.seed_helpers import SeedHelpers
from rlfoundry.training.schedules import get_beta, set_beta


class DPOSeedHelpers(SeedHelpers):
    """Mixed into :class:`~rlfoundry.algorithms.dpo.DPOTrainer`."""

    _pair_rewards: tuple[int, list[torch.Tensor], list[torch.Tensor]] | None = None

    @property
    def beta(self) -> float:
        """The live DPO beta (the loss's ``reference_policy_kl_penalty``). Assigning it has
        the effect of a beta schedule: the next micro-batches use it and it is logged as
        ``beta``. With ``algorithm.beta_schedule`` the schedule sets beta again at the start
        of every step (it becomes the schedule's current value for feedback controllers)."""
        value = get_beta(self.loss_fn)
        return 0.1 if value is None else value

    @beta.setter
    def beta(self, value: float) -> None:
        set_beta(self.loss_fn, float(value))
        if self.beta_schedule is not None:
            self.beta_schedule.current = float(value)

    def standard_dpo_loss(self, policy_chosen_logps, policy_rejected_logps,
                          reference_chosen_logps=None, reference_rejected_logps=None) -> torch.Tensor:
        """The sigmoid DPO loss with the live beta: ``-mean(logsigmoid(beta * ((pc - rc) -
        (pr - rr))))``; missing reference log-probs count as 0 (reference-free)."""
        chosen = policy_chosen_logps - (0.0 if reference_chosen_logps is None else reference_chosen_logps)
        rejected = policy_rejected_logps - (0.0 if reference_rejected_logps is None else reference_rejected_logps)
        return -F.logsigmoid(self.beta * (chosen - rejected)).mean()

    def compute_fluency_loss(self, chosen_logps, token_counts=None) -> torch.Tensor:
        """Mean per-token negative log-likelihood of the chosen responses: ``-mean(logps /
        tokens)``. ``token_counts`` defaults to the batch in flight's ``chosen_token_counts``
        (when its length matches); without counts, the mean sequence NLL."""
        if token_counts is None and self.forward_in_flight is not None:
            counts = self.forward_in_flight[0].get("chosen_token_counts")
            if counts is not None and counts.shape == chosen_logps.shape:
                token_counts = counts
        if token_counts is None:
            return -chosen_logps.mean()
        return (-chosen_logps / token_counts.to(chosen_logps).clamp(min=1)).mean()

    def record_pair_rewards(self, batch: dict[str, Any]) -> None:
        """Keep the training micro-batch's implicit rewards ``beta * (policy - reference)``
        (``chosen_rewards`` / ``rejected_rewards`` are those of the last training step)."""
        if batch.get("split") != "train" or batch.get("stand_in"):
            return
        if self._pair_rewards is None or self._pair_rewards[0] != self.step:
            self._pair_rewards = (self.step, [], [])
        beta = self.beta
        with torch.no_grad():
            for logp, ref, out in (("policy_chosen_logps", "reference_chosen_logps", self._pair_rewards[1]),
                                   ("policy_rejected_logps", "reference_rejected_logps", self._pair_rewards[2])):
                r = batch[ref]
                out.append(beta * (batch[logp].detach() - (0.0 if r is None else r)))

    @property
    def chosen_rewards(self) -> torch.Tensor:
        """Implicit rewards ``beta * (pc - rc)`` of the last training step's pairs (this
        rank's). A subclass may assign its own; then that value is returned."""
        return self._rewards(1)

    @chosen_rewards.setter
    def chosen_rewards(self, value: torch.Tensor) -> None:
        self.__dict__["_assigned_rewards_1"] = value

    @property
    def rejected_rewards(self) -> torch.Tensor:
        """Implicit rewards ``beta * (pr - rr)`` of the last training step's pairs (this rank's)."""
        return self._rewards(2)

    @rejected_rewards.setter
    def rejected_rewards(self, value: torch.Tensor) -> None:
        self.__dict__["_assigned_rewards_2"] = value

    def _rewards(self, k: int) -> torch.Tensor:
        if f"_assigned_rewards_{k}" in self.__dict__:
            return self.__dict__[f"_assigned_rewards_{k}"]
        if self._pair_rewards is None:
            raise AttributeError("chosen_rewards / rejected_rewards exist after the first training step")
        return torch.cat(self._pair_rewards[k])

    def dpo_outputs(self, values: dict[str, Any]):
        """Lazy ``model_outputs`` of the DPO micro-batch in flight (see ``lazy_outputs``)."""
        batch = self.forward_in_flight[0] if self.forward_in_flight else {}
        return self.lazy_outputs(values, lambda hidden: pair_response_embeddings(hidden, batch))

    def debug_lines(self, kind: str, **kwargs: Any) -> list[str]:
        if kind != "dpo":
            return super().debug_lines(kind, **kwargs)
        chosen = kwargs.get("chosen_rewards")
        rejected = kwargs.get("rejected_rewards")
        chosen = self.chosen_rewards if chosen is None else chosen
        rejected = self.rejected_rewards if rejected is None else rejected
        return [f"Chosen rewards range: {chosen.min():.3f} to {chosen.max():.3f}",
                f"Rejected rewards range: {rejected.min():.3f} to {rejected.max():.3f}",
                f"Reward gap: {(chosen - rejected).mean():.3f}"]
