"""What every trainer that samples from the policy shares (GRPO, online DPO): scoring the
samples with the configured reward functions, and a per-rank sampling generator that
checkpoints with the rank's state. Mixed in before :class:`rlfoundry.training.base.Trainer`;
the trainer sets ``reward_fns`` and ``sampling_generator``."""

from __future__ import annotations

from typing import Any

from rlfoundry.rewards import RewardResult
from rlfoundry.rollout import scoring

REASONS_SHOWN_PER_STEP = 3  # explained reward failures written to the log each step


class SamplingTrainerMixin:
    def score_rollout(self, prompts: list[Any], responses: list[str], columns: dict[str, list[Any]],
                      sample_ids: list[str]) -> tuple[RewardResult, str | None]:
        """Run the reward functions (``algorithm.reward_error`` / ``reward_timeout`` apply):
        the result and a description of any NaN/inf reward (None if all are finite)."""
        algo = self.config.algorithm
        result, nonfinite = scoring.score_samples(self.reward_fns, prompts, responses, columns,
                                                  sample_ids, on_error=algo.reward_error,
                                                  timeout=algo.reward_timeout)
        for line in scoring.failure_lines(result, sample_ids, REASONS_SHOWN_PER_STEP):
            self.logger.write(f"step {self.step + 1}: {line}")
        return result, nonfinite

    def rank_state(self) -> dict[str, Any]:
        return {**super().rank_state(), "sampling_generator": self.sampling_generator.get_state()}

    def load_rank_state(self, state: dict[str, Any] | None) -> None:
        """Restore this rank's sampling generator, or (resuming on another number of ranks)
        re-seed it from the seed, step and rank."""
        super().load_rank_state(state)
        if state is None:
            self.sampling_generator.manual_seed(
                self.config.training.seed + 7919 * self.step + self.dist.rank)
        else:
            self.sampling_generator.set_state(state["sampling_generator"])
