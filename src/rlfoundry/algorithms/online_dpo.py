"""Online (on-policy) DPO (``algorithm.name: online_dpo``): pairs from the current policy.

Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback" (OAIF; TRL's
``OnlineDPOTrainer``). Each step:

1. generate: two completions per prompt with the shared rollout stage
   (``rollout.backend``: the HF sampler or any engine :func:`~rlfoundry.rollout.factory.build_backend`
   builds), at ``algorithm.sampling``;
2. score: the reward functions of ``algorithm.rewards`` (registry names, as in GRPO; a
   judge is a reward function that scores a completion) via :mod:`rlfoundry.rollout.scoring`;
3. rank: the higher-reward completion is ``chosen``, the other ``rejected``
   (:func:`ranked_pairs`); a pair whose rewards are equal, or whose completions are
   identical, carries no preference and is skipped (counted as ``ties``);
4. update: one DPO step on those pairs with the configured DPO loss (``algorithm.loss``, any
   type of the DPO family), against a live reference (a frozen copy of the initial policy,
   or the LoRA base), with the DPO trainer's layouts, micro-batching and exact accumulation;
   then the rollout engine gets the new weights.

Log-probs for the loss are the policy's own (temperature 1); the sampling temperature only
shapes exploration. A step whose prompts all tie trains on nothing (no update; the
learning-rate schedule still advances). Held-out evaluation is GRPO's: greedy completions
scored by the reward functions, plus exact match against an ``answer`` column.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from typing import Any

import torch

from rlfoundry.algorithms import grpo_config
from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.algorithms.grpo_eval import eval_metrics, greedy_responses
from rlfoundry.algorithms.grpo_grouping import group_size_of
from rlfoundry.algorithms.loss_functions import DPOLossFn, LossFunctionRegistry
from rlfoundry.algorithms.reference import build_reference
from rlfoundry.algorithms.sampling_trainer import SamplingTrainerMixin
from rlfoundry.algorithms.trainer_registry import TRAINERS
from rlfoundry.config import RunConfig
from rlfoundry.data.preference import TokenizedPair
from rlfoundry.data.prompts import render_prompt
from rlfoundry.errors import ConfigError
from rlfoundry.rewards import resolve_reward
from rlfoundry.rollout import HFSampler, Rollout, SamplingParams, scoring
from rlfoundry.rollout.factory import build_backend
from rlfoundry.rollout.scoring import ScoredRollout
from rlfoundry.training import distributed
from rlfoundry.training.base import coerce_config
from rlfoundry.training.distributed import shard_range
from rlfoundry.training.metrics import WeightedMean
from rlfoundry.training.sampler import length_blocks
from rlfoundry.training.schedules import loss_components

SAMPLES_PER_PROMPT = 2
# GRPO options that have no meaning here (rewards, sampling and rollout options do)
NOT_APPLICABLE = ("num_iterations", "advantage", "dynamic_sampling", "group_strategy", "grouping",
                  "rollout_correction", "clip_ratio", "value_loss_coef", "entropy_coef")


def ranked_pairs(rollout: Rollout, rewards: torch.Tensor, locations: list[str],
                 group_size: int = SAMPLES_PER_PROMPT) -> tuple[list[TokenizedPair], int]:
    """(chosen, rejected) pairs from a rollout of two samples per prompt (prompt-major rows)
    and their rewards: the higher reward is chosen. Returns the pairs and the number of
    prompts skipped as ties (equal or NaN rewards, or identical completions)."""
    pairs: list[TokenizedPair] = []
    ties = 0
    for start in range(0, len(rollout.completion_ids), group_size):
        a, b = start, start + 1
        ra, rb = float(rewards[a]), float(rewards[b])
        same = rollout.completion_ids[a] == rollout.completion_ids[b]
        if same or ra == rb or math.isnan(ra) or math.isnan(rb):
            ties += 1
            continue
        win, lose = (a, b) if ra > rb else (b, a)
        pairs.append(TokenizedPair(list(rollout.prompt_ids[a]), list(rollout.completion_ids[win]),
                                   list(rollout.completion_ids[lose]),
                                   {"reward_chosen": max(ra, rb), "reward_rejected": min(ra, rb)},
                                   locations[a], len(pairs)))
    return pairs, ties


@TRAINERS.register("online_dpo")
class OnlineDPOTrainer(SamplingTrainerMixin, DPOTrainer):
    """DPO on pairs sampled from the current policy and ranked by reward functions."""

    kind = "grpo"  # a rollout trainer: algorithm.rewards / sampling and rollout.* apply
    default_loss_type = "dpo"

    @classmethod
    def validate_config(cls, cfg: RunConfig) -> None:
        algo = cfg.algorithm
        used = [k for k in NOT_APPLICABLE if k in algo.model_fields_set]
        if used:
            raise ConfigError(f"algorithm.{used[0]}: a GRPO option that online_dpo does not use "
                              f"(it trains a DPO loss on pairs of two samples); remove it")
        if (algo.group_size or algo.num_generations) and group_size_of(algo) != SAMPLES_PER_PROMPT:
            raise ConfigError(f"algorithm.group_size: online_dpo samples exactly "
                              f"{SAMPLES_PER_PROMPT} completions per prompt (one pair); got "
                              f"{group_size_of(algo)}; remove it or set 2")
        DPOTrainer.validate_config(cfg)
        if not any(isinstance(c, DPOLossFn) for c in loss_components(LossFunctionRegistry.build(algo.loss))):
            raise ConfigError(f"algorithm.loss.type: '{algo.loss.get('type')}' is not a DPO-family "
                              f"loss; online_dpo trains a pairwise loss (dpo, ipo, simpo, ...)")
        train = cfg.training
        if train.micro_batch_size and train.batch_size % train.micro_batch_size:
            raise ConfigError(f"training.batch_size ({train.batch_size}) must be a multiple of "
                              f"training.micro_batch_size ({train.micro_batch_size})")
        if not algo.rewards:
            name = cfg.data.train[len("builtin:"):] if isinstance(cfg.data.train, str) else ""
            if name not in grpo_config.DEFAULT_REWARDS:
                raise ConfigError("algorithm.rewards: online_dpo ranks its samples with reward "
                                  "functions; give at least one, e.g. rewards: [{name: math_accuracy}]")
            algo.rewards = grpo_config.DEFAULT_REWARDS[name]
        for i, spec in enumerate(algo.rewards):
            try:
                resolve_reward(spec.name, spec.args)
            except ConfigError as e:
                raise ConfigError(f"algorithm.rewards[{i}]: {e}") from None

    def __init__(self, model=None, tokenizer=None, config=None, *, loss_fn=None,
                 reward_fns=None, rollout_backend=None):
        super().__init__(model, tokenizer, coerce_config(config, "online_dpo"), loss_fn=loss_fn)
        algo = self.config.algorithm
        s = algo.sampling
        self.sampling = SamplingParams(s.temperature, s.top_p, s.top_k, s.max_new_tokens,
                                       list(s.stop_strings))
        self.reward_fns = scoring.reward_functions(reward_fns, algo.rewards)
        self.rollout = rollout_backend or build_backend(self.config, self.model, self.tokenizer)
        self.sampling_generator = torch.Generator(self.device).manual_seed(
            self.config.training.seed + self.dist.rank)
        self.rollout_metrics: dict[str, Any] = {}

    # ---- data ----------------------------------------------------------------------------
    def setup_data(self, dataset=None, eval_dataset=None) -> int:
        data = self.config.data
        self.train_set = grpo_config.prompt_dataset(dataset, data, "train")
        builtin = isinstance(data.train, str) and data.train.startswith("builtin:")
        self.eval_set = (grpo_config.prompt_dataset(eval_dataset, data, "eval")
                         if eval_dataset is not None or data.eval is not None or builtin else None)
        limit = data.max_prompt_length
        self.train_prompts = self.train_set.tokenize(self.tokenizer, max_prompt_length=limit)
        self.eval_prompts = self.eval_set.tokenize(self.tokenizer, max_prompt_length=limit) if self.eval_set else []
        self.train_pairs, self.eval_pairs, self.ref_tables = [], [], {}
        self.ref_model = (build_reference(self.model)
                          if getattr(self.loss_fn, "requires_reference", True) else None)
        return len(self.train_prompts)

    # ---- the stages ----------------------------------------------------------------------
    def next_batch(self) -> list[int]:
        """Sample, score and rank this step's prompts; the pairs become ``train_pairs`` and
        the returned indices (ordered by length in micro-batch blocks) select them all."""
        prompt_indices = self.sampler.next_batch()
        share = shard_range(len(prompt_indices), self.dist.rank, self.dist.world_size)
        scored = self.sample_and_score([prompt_indices[p] for p in share])
        bad = scored.nonfinite
        if self.dist.enabled:  # every rank skips (or raises) alike
            bad = next((b for b in distributed.all_gather_object(bad) if b), None)
        if bad:
            self.nonfinite("rewards", bad)
        locations = [self.train_set[prompt_indices[share.start + p]].location
                     for p in scored.rollout.prompt_index]
        pairs, ties = ranked_pairs(scored.rollout, scored.rewards, locations)
        self.train_pairs = [dataclasses.replace(p, index=k) for k, p in enumerate(pairs)]
        counts = torch.tensor([len(pairs), ties], dtype=torch.float64)
        if self.dist.enabled:
            counts = distributed.all_reduce_sum(counts)
        self.rollout_metrics = {**scoring.reward_metrics(scored), "pairs": float(counts[0]),
                                "ties": float(counts[1])}
        lengths = [p.packed_length if self.packed else p.length for p in self.train_pairs]
        return length_blocks(list(range(len(pairs))), lengths, self.config.training.micro_batch_size)

    def sample_and_score(self, prompt_indices: list[int]) -> ScoredRollout:
        """Stages 1-2: two completions of each prompt from the rollout engine, scored."""
        with self.full_parameters(), self.autocast(), torch.no_grad():
            rollout = self.rollout.generate([self.train_prompts[i] for i in prompt_indices],
                                            SAMPLES_PER_PROMPT, self.sampling, self.sampling_generator)
        examples = [self.train_set[prompt_indices[p]] for p in rollout.prompt_index]
        prompts = [render_prompt(self.tokenizer, ex.prompt) for ex in examples]
        responses = self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        return scoring.score(rollout, examples, prompts, responses, SAMPLES_PER_PROMPT, self.score_rollout)


    def micro_batches(self, indices: list[int]) -> list[dict[str, Any]]:
        """The step's micro-batches; none when every prompt tied (stand-ins under torchrun
        when another rank has pairs)."""
        if indices:
            return super().micro_batches(indices)
        busiest = distributed.all_reduce_max(0) if self.dist.enabled else 0
        return [self.stand_in_batch() for _ in range(busiest)]

    def stand_in_batch(self) -> dict[str, Any]:
        """A weight-0 micro-batch for a rank with fewer pairs than another this step (it may
        have none: then a pair of the first prompt with an EOS-only completion)."""
        if self.train_pairs:
            return super().stand_in_batch()
        eos = self.tokenizer.eos_token_id or 0
        stand_in = TokenizedPair(list(self.train_prompts[0]), [eos], [eos], {}, "<stand-in>", 0)
        self.train_pairs = [stand_in]
        try:
            return {**self.collate([0]), "stand_in": True}
        finally:
            self.train_pairs = []

    def optimizer_step(self, indices: list[int]) -> dict[str, float]:
        rollout_metrics, self.rollout_metrics = self.rollout_metrics, {}
        metrics = super().optimizer_step(indices)
        # an engine of its own gets the new weights (gathered under FSDP2); HFSampler is the policy
        with nullcontext() if isinstance(self.rollout, HFSampler) else self.full_parameters():
            self.rollout.sync_weights(self.model)
        acc = WeightedMean()
        acc.add(rollout_metrics, 1.0)
        return {**acc.result(), **metrics}

    # ---- evaluation and state ------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy completions of the held-out prompts scored by the reward functions, and
        exact match (``accuracy``) where rows have an ``answer``."""
        if not self.eval_prompts:
            return {}
        responses = greedy_responses(self.rollout, self.tokenizer, self.eval_prompts, self.sampling,
                                     self.config.training.batch_size * SAMPLES_PER_PROMPT,
                                     self.sampling_generator, self.dist)
        metrics = (eval_metrics(self.reward_fns, list(self.eval_set), self.tokenizer, responses,
                                self.config.algorithm.reward_timeout) if self.dist.is_main else None)
        return distributed.broadcast_object(metrics)

    def extra_state(self) -> dict[str, Any]:
        return {"sampling_generator": self.sampling_generator.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.sampling_generator.set_state(state["sampling_generator"])


