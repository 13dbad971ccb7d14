"""GRPO: a loop over four rollout stages, each a module with a typed record for the next:

1. generate (``rollout/``: an engine, ``rollout.backend``) -> ``Rollout`` (token ids,
   engine log-probs);
2. score (``rollout/scoring.py``) -> ``ScoredRollout`` (rewards, per-function detail);
3. group + advantage (``algorithms/grpo_grouping.py``) -> ``GroupedRound`` per sampling
   round, then ``SelectedSamples`` (DAPO dynamic sampling adds rounds);
4. update (``algorithms/grpo_buffer.py``) -> ``TrainingBuffer``, cut into micro-batch dicts;
   mismatch correction (``algorithms/mismatch.py``); then the engine gets the new weights.

One rollout batch feeds ``num_iterations`` (mu) optimizer steps. Override points (the seed's
``CustomGRPOTrainer`` / ``DialogueGRPOTrainer`` patterns work by subclassing):

- ``form_groups(batch_size, group_size, **context)`` -> list of index tensors (context:
  prompt_index, rewards, step, total_steps, columns, prompts, responses, embed, and
  embeddings when the strategy needs them or the override names an ``embeddings`` parameter);
- ``compute_advantages(rewards, groups)`` -> advantages ``[N]`` (or ``(advantages, stats)``);
- ``score_rollout(prompts, responses, columns, sample_ids)`` -> ``(RewardResult, str | None)``;
- ``compute_loss(batch, model_outputs)`` -> ``(loss, metrics)`` (default: the configured loss);
- ``train_step(batch)`` -> loss or ``(loss, metrics)``; ``batch`` holds the tensors plus the
  seed's names ``policy_logps``, ``old_policy_logps``, ``advantages``, ``returns``,
  ``value_preds`` (value head), ``responses``, ``prompts``; ``group_id`` ``[B]``, the
  rollout's ``num_groups`` / ``num_grouped``; ``rollout_weights`` with rollout_correction.

With an environment (``environment:`` or ``GRPOTrainer(environment=...)``) stage 1 plays
multi-turn episodes (``algorithms/grpo_episodes.py``, docs/environments.md).
A loss may name the grouping it needs (``grouping = "dynamic"``, e.g. ``dynamic_grpo``).
Under torchrun each rank generates and scores its share; rank 0 groups all ranks' samples
and sends groups and advantages to all; each rank trains on its share of the global buffer.
"""

from __future__ import annotations

import inspect
import time
from contextlib import nullcontext
from typing import Any

import torch

from rlfoundry.algorithms import grpo_config, grpo_episodes, grpo_grouping, grpo_process, mismatch
from rlfoundry.algorithms.advantages import compute_configured_advantages
from rlfoundry.algorithms.grouping import GROUPINGS, GroupingContext, needs_embeddings
from rlfoundry.algorithms.grpo_buffer import TrainingBuffer, rows_logprobs
from rlfoundry.algorithms.grpo_embeddings import SampleEmbedder, target_column
from rlfoundry.algorithms.grpo_eval import eval_metrics, greedy_responses
from rlfoundry.algorithms.grpo_grouping import GroupedRound, group_size_of, resolve_grouping
from rlfoundry.algorithms.grpo_helpers import GRPOSeedHelpers
from rlfoundry.algorithms.loss_functions.grpo import wants_entropy
from rlfoundry.algorithms.reference import build_reference, reference_module
from rlfoundry.algorithms.sampling_trainer import SamplingTrainerMixin
from rlfoundry.algorithms.trainer_registry import TRAINERS
from rlfoundry.config import RunConfig
from rlfoundry.data.lengths import tokenize_grpo_prompts
from rlfoundry.data.prompts import render_prompt
from rlfoundry.ops.lm_head import response_embeddings, token_logprobs
from rlfoundry.rollout import HFSampler, Rollout, SamplingParams, scoring
from rlfoundry.rollout.factory import build_backend
from rlfoundry.rollout.scoring import ScoredRollout
from rlfoundry.rollout.seeding import prompt_generators, prompt_seed
from rlfoundry.training import distributed
from rlfoundry.training.base import Trainer, as_loss_and_metrics
from rlfoundry.training.distributed import shard_range
from rlfoundry.training.metrics import WeightedMean
from rlfoundry.training.sampler import length_blocks

__all__ = ["DEFAULT_REWARDS", "GRPOTrainer", "prompt_seed", "resolve_grouping"]
DEFAULT_REWARDS = grpo_config.DEFAULT_REWARDS


@TRAINERS.register("grpo")
class GRPOTrainer(GRPOSeedHelpers, SamplingTrainerMixin, Trainer):
    """Group Relative Policy Optimization and its variants (DAPO, Dr.GRPO, GSPO, RLOO, ...).
    Helpers for custom code (``self.clip_ratio``, grouping, ...): :mod:`.grpo_helpers`."""

    kind = "grpo"
    default_loss_type = "grpo"

    @classmethod
    def validate_config(cls, cfg: RunConfig) -> None:
        grpo_config.validate_grpo_config(cfg)

    @classmethod
    def validate_world(cls, cfg: RunConfig, world_size: int) -> None:
        grpo_config.validate_grpo_world(cfg, world_size)

    def __init__(self, model=None, tokenizer=None, config=None, *, loss_fn=None,
                 reward_fns=None, rollout_backend=None, environment=None):
        super().__init__(model, tokenizer, config, loss_fn=loss_fn)
        algo = self.config.algorithm
        self.group_size = group_size_of(algo)
        self.num_iterations = algo.num_iterations
        s = algo.sampling
        self.sampling = SamplingParams(s.temperature, s.top_p, s.top_k, s.max_new_tokens, list(s.stop_strings))
        self.temperature = s.temperature or 1.0  # of the training log-probs (1 for greedy sampling)
        self.reward_fns = scoring.reward_functions(reward_fns, algo.rewards)
        self.token_advantages = (grpo_process.TokenAdvantages(algo.advantage, self.tokenizer)
                                 if algo.advantage.estimator == grpo_process.PROCESS else None)
        self.grouping_name, self.grouping_options = resolve_grouping(algo, self.loss_fn)
        self.grouping = GROUPINGS.get(self.grouping_name)
        self.embedder = SampleEmbedder(self.model, self.tokenizer, self.grouping_options, self.device)
        self.correction = mismatch.RolloutCorrection.for_loss(algo.rollout_correction, self.loss_fn)
        self.mismatch_tally = mismatch.MismatchTally()
        self.rollout = rollout_backend or build_backend(self.config, self.model, self.tokenizer)
        self.episodes = grpo_episodes.episode_runner(  # multi-turn (environment:), else None
            self.config, environment, self.rollout, self.tokenizer, self.sampling, self.model)
        self.sampling_generator = torch.Generator(self.device).manual_seed(
            self.config.training.seed + self.dist.rank)
        self.rollout_round = 0  # counts sampling rounds (seeds per-prompt generators)
        self.ref_model = (build_reference(self.model)
                          if getattr(self.loss_fn, "requires_reference", False) else None)
        self.value_head = None
        if getattr(self.loss_fn, "cfg", {}).get("value_loss_coef", 0.0) > 0:  # starts at 0 (weight and bias)
            dtype = next(self.model.parameters()).dtype
            self.value_head = torch.nn.Linear(self.model.config.hidden_size, 1).to(self.device, dtype)
            for p in self.value_head.parameters():
                torch.nn.init.zeros_(p)
        self.buffer: TrainingBuffer | None = None
        self.iteration = 0
        self.rollout_metrics: dict[str, Any] = {}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        params = super().trainable_parameters()
        return params + (list(self.value_head.parameters()) if self.value_head is not None else [])

    def extra_modules(self) -> list[torch.nn.Module]:
        return [self.value_head] if self.value_head is not None else []

    def setup_data(self, dataset=None, eval_dataset=None) -> int:
        data = self.config.data
        self.train_set = grpo_config.prompt_dataset(dataset, data, "train")
        builtin = isinstance(data.train, str) and data.train.startswith("builtin:")
        self.eval_set = (grpo_config.prompt_dataset(eval_dataset, data, "eval")
                         if eval_dataset is not None or data.eval is not None or builtin else None)
        self.train_prompts, self.eval_prompts = tokenize_grpo_prompts(  # bounded by the context
            self.config, self.model, self.tokenizer, self.train_set, self.eval_set)
        return len(self.train_prompts)

    # ---- hooks ---------------------------------------------------------------------------
    def form_groups(self, batch_size: int, group_size: int | None = None, **context) -> list[torch.Tensor]:
        """Groups of sample indices for this rollout (the configured grouping strategy)."""
        return self.grouping(self.grouping_context(batch_size, group_size, **context))

    def grouping_context(self, batch_size: int, group_size: int | None = None,
                         **context) -> GroupingContext:
        """The ``GroupingContext`` the configured strategy sees (options from the config)."""
        return GroupingContext(num_samples=batch_size, group_size=group_size or self.group_size,
                               options=dict(self.grouping_options),
                               generator=self.sampling_generator if self.device.type == "cpu" else None,
                               **context)

    def wants_embeddings(self, batch_size: int, **context) -> bool:
        """Whether this rollout needs sample embeddings: the strategy asks for them, or a
        ``form_groups`` override names an ``embeddings`` parameter."""
        if type(self).form_groups is not GRPOTrainer.form_groups:
            if "embeddings" in inspect.signature(self.form_groups).parameters:
                return True
        return needs_embeddings(self.grouping, self.grouping_context(batch_size, **context))

    def compute_advantages(self, rewards: torch.Tensor, groups: list[torch.Tensor]):
        """Advantages ``[N]`` (and group statistics) from ``algorithm.advantage``."""
        return compute_configured_advantages(self.config.algorithm.advantage, rewards, groups)


    def compute_loss(self, batch: dict[str, Any], model_outputs: dict[str, torch.Tensor]):
        return self.loss_fn(batch, model_outputs)

    def train_step(self, batch: dict[str, Any]):
        """The loss on ``model_outputs``: logprobs (+ entropy, values) and lazy keys."""
        return self.compute_loss(batch, self.grpo_outputs(batch))

    # ---- the stages ----------------------------------------------------------------------
    def next_batch(self) -> list[int]:
        if self.buffer is None or self.iteration >= self.num_iterations:
            self.buffer = None  # a rollout skipped for non-finite rewards is never reused
            self.buffer, self.rollout_metrics = self.make_rollout(self.sampler.next_batch())
            self.iteration = 0
        self.iteration += 1
        # ordered by length in micro-batch blocks: micro-batches are trimmed to similar widths
        lengths = self.buffer.lengths()
        return self.local_share(length_blocks(list(range(len(lengths))), lengths,
                                              self.config.training.micro_batch_size))

    def make_rollout(self, prompt_indices: list[int]) -> tuple[TrainingBuffer, dict[str, Any]]:
        """One training batch of samples (DAPO dynamic sampling refills dropped groups)."""
        dyn = self.config.algorithm.dynamic_sampling
        rounds = [self._sample_round(prompt_indices)]
        if dyn.enabled:
            kept = len(rounds[0].varied_groups())
            while kept < len(prompt_indices) and len(rounds) <= dyn.max_rounds:
                rounds.append(self._sample_round(self.sampler.next_batch()))
                kept += len(rounds[-1].varied_groups())
        metrics = scoring.reward_metrics(rounds[0].scored, rounds[0].stats)
        if dyn.enabled:
            metrics["dynamic_sampling_rounds"] = len(rounds)
        limit = len(prompt_indices) * self.group_size
        return self._to_buffer(grpo_grouping.select_samples(rounds, dyn.enabled, limit, self.step)), metrics

    def _sample_round(self, prompt_indices: list[int]) -> GroupedRound:
        """Stages 1-3 for one set of prompts: each rank generates and scores its share, then
        rank 0 groups all ranks' samples and computes advantages; every rank receives them."""
        share = shard_range(len(prompt_indices), self.dist.rank, self.dist.world_size)
        scored = self._score(self._generate(prompt_indices, share), prompt_indices)
        self.rollout_round += 1
        if self.dist.enabled:
            parts = distributed.all_gather_object(scored)
            rows = [self.train_set[prompt_indices[p]] for part in parts for p in part.rollout.prompt_index]
            scored = scoring.concat_scored(parts, rows)
        if scored.nonfinite:  # decided on gathered values: every rank skips (or raises) alike
            self.nonfinite("rewards", scored.nonfinite)
        with self.full_parameters():  # a strategy may embed samples with the policy
            grouped = self._group(scored, prompt_indices) if self.dist.is_main else None
        decision = distributed.broadcast_object(None if grouped is None else grouped.decision())
        grouped = GroupedRound(scored, *decision)
        bad = grouped.nonfinite_advantages()
        if bad:
            self.nonfinite("advantages", bad)
        return grouped

    def _generate(self, prompt_indices: list[int], share: range) -> Rollout:
        """Stage 1: completions of the prompts at positions ``share`` of the round."""
        positions = list(share)
        with self.full_parameters(), self.autocast():
            if self.episodes is not None:  # multi-turn episodes with the environment
                rollout = grpo_episodes.run_episodes(self.episodes, [self.train_set[prompt_indices[p]] for p in positions],
                                                     self.group_size, self._sampling_rng(positions))
            else:
                rollout = self.rollout.generate([self.train_prompts[prompt_indices[p]] for p in positions],
                                                self.group_size, self.sampling, self._sampling_rng(positions))
        rollout.prompt_index = [share.start + p for p in rollout.prompt_index]  # round positions
        return rollout

    def _score(self, rollout: Rollout, prompt_indices: list[int]) -> ScoredRollout:
        """Stage 2: the rollout's rewards (``score_rollout``)."""
        examples = [self.train_set[prompt_indices[p]] for p in rollout.prompt_index]
        prompts = [render_prompt(self.tokenizer, ex.prompt) for ex in examples]
        responses = scoring.decode_responses(rollout, self.tokenizer)  # episodes: the final turn
        return scoring.score(rollout, examples, prompts, responses, self.group_size, self.score_rollout)

    def _group(self, scored: ScoredRollout, prompt_indices: list[int]) -> GroupedRound:
        """Stage 3: groups and advantages of a whole round (``form_groups``,
        ``compute_advantages``)."""
        rollout, n = scored.rollout, len(scored)
        prompts = [self.train_set[prompt_indices[p]].prompt for p in rollout.prompt_index]
        context = dict(prompt_index=torch.tensor(rollout.prompt_index), rewards=scored.rewards,
                       step=self.step, total_steps=self.total_steps, columns=scored.columns,
                       prompts=prompts, responses=scored.responses, embed=self.embed_texts)
        embeddings = self.embed(rollout, prompts, scored.responses) if self.wants_embeddings(n, **context) else None
        self.record_round(None, embeddings, context)  # extract_contexts may read the prompts
        grouped = grpo_grouping.group_round(scored, self.form_groups, self.compute_advantages,
                                            self.group_size, context, embeddings, self.token_advantages)
        self.record_round(grouped, embeddings, context)
        return grouped

    def _sampling_rng(self, positions: list[int]):
        """This rank's generator, or (``seed_per_prompt``) one generator per prompt."""
        if not self.config.algorithm.sampling.seed_per_prompt:
            return self.sampling_generator
        return prompt_generators(self.config.training.seed, self.rollout_round, positions, self.device)

    @torch.no_grad()
    def _to_buffer(self, selection: grpo_grouping.SelectedSamples) -> TrainingBuffer:
        """Stage 4's record: padded tensors of the trained samples, plus target embeddings
        (quality objective) and old/reference log-probs as the loss needs them."""
        buffer = TrainingBuffer.from_selection(selection, self.tokenizer.pad_token_id or 0)
        if "targets" in getattr(self.loss_fn, "requires", ()):
            name = target_column(self.loss_fn)
            with self.full_parameters():
                targets = self.embedder.targets(selection.column_values(name), name)
            buffer.target_embeddings, buffer.has_target = targets["target_embeddings"], targets["has_target"]
        if self.num_iterations > 1:
            buffer.old_logprobs = self._logprobs_of(self.model, buffer)
        if self.ref_model is not None:
            buffer.reference_logprobs = self._logprobs_of(self.ref_model, buffer)
        return buffer

    def _logprobs_of(self, model, buffer: TrainingBuffer) -> torch.Tensor:
        """Per-token log-probs of every buffer row under ``model`` (the policy or the
        reference): each rank computes its share of the rows, then the shares are gathered."""
        share = shard_range(len(buffer), self.dist.rank, self.dist.world_size)
        size = self.config.training.micro_batch_size or len(buffer)
        with reference_module(model) as module, self.full_parameters(), self.autocast():
            local = rows_logprobs(module, buffer, share, size, self.device, self.temperature)
        return torch.cat(distributed.all_gather_object(local)) if self.dist.enabled else local

    def collate(self, indices: list[int]) -> dict[str, Any]:
        return self.buffer.collate(indices, getattr(self.loss_fn, "valid_mask", None))

    def micro_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        batch = self.to_device(batch)
        embed = "hidden" in getattr(self.loss_fn, "requires", ())
        out, values = self.forward_policy(self._policy_forward, batch, embed)
        if embed:
            batch["response_embeddings"] = response_embeddings(out.hidden, batch["loss_mask"])
        batch["policy_logps"] = out.logprobs
        batch["response_mask"] = out.mask
        batch["entropy"] = out.entropy
        old = batch.get("old_logprobs")  # mu = 1: the policy that sampled is the current one
        batch["old_policy_logps"] = out.logprobs.detach() if old is None else old
        batch["value_preds"] = values  # the seed's train_step reads it; None without a value head
        self._correct_mismatch(batch)
        self.record_forward(batch, out)
        return as_loss_and_metrics(self.train_step(batch), self.loss_name())

    def _correct_mismatch(self, batch: dict[str, Any]) -> None:
        """Tally engine vs trainer log-prob mismatch; put the rollout_correction weights in the
        batch. Trainer side: ``old_logprobs``, else (mu = 1) the current log-probs, detached."""
        old = batch.get("old_logprobs")
        old = batch["policy_logps"].detach() if old is None else old
        sampling, mask = batch["sampling_logprobs"], batch["response_mask"]
        weights, affected = mismatch.correction_weights(old, sampling, mask, self.correction)
        if not batch.get("stand_in"):
            self.mismatch_tally.add(mismatch.mismatch_sums(old, sampling, mask, weights, affected))
        if self.correction.enabled:
            batch["rollout_weights"] = weights

    def _policy_forward(self, model, batch: dict[str, Any], embed: bool):
        """Token log-probs (entropy, hidden states as needed) of the batch, plus value
        predictions with a value head: the training forward, run through DDP/FSDP2."""
        with_entropy = wants_entropy(self.loss_fn)
        out = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                             with_entropy=with_entropy, return_hidden=True,  # held for backward anyway
                             temperature=self.temperature)
        if self.value_head is None:
            return out, None
        last = batch["attention_mask"].sum(-1) - 1
        hidden = out.hidden[torch.arange(len(last), device=last.device), last]
        return out, self.value_head(hidden).squeeze(-1).float()

    def optimizer_step(self, indices: list[int]) -> dict[str, float]:
        start = time.perf_counter()
        rollout_metrics, self.rollout_metrics = self.rollout_metrics, {}
        self.step_rollout_metrics = rollout_metrics  # the lr/beta controllers see them
        self.mismatch_tally = mismatch.MismatchTally()  # a skipped step leaves nothing behind
        metrics = super().optimizer_step(indices)
        tokens = int(self.buffer.loss_mask.sum())
        metrics["training_tokens_per_s"] = tokens / max(time.perf_counter() - start, 1e-9)
        reduce = distributed.all_reduce_sum if self.dist.enabled else None
        metrics.update(self.mismatch_tally.metrics(self.correction.mode, reduce))
        # an engine of its own gets the whole policy (gathered under FSDP2); HFSampler is the policy
        with nullcontext() if isinstance(self.rollout, HFSampler) else self.full_parameters():
            self.rollout.sync_weights(self.model)
        acc = WeightedMean()  # one host transfer for the rollout's tensor metrics
        acc.add(rollout_metrics, 1.0)
        return {**acc.result(), **metrics}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy completions of the held-out prompts (each rank its share), scored by
        :func:`~rlfoundry.algorithms.grpo_eval.eval_metrics` on rank 0."""
        if not self.eval_prompts:
            return {}
        if self.episodes is not None:
            return grpo_episodes.evaluate_environment(
                self.episodes, self.reward_fns, list(self.eval_set), self.sampling, self.config.training.batch_size,
                self.sampling_generator, self.dist, self.config.algorithm.reward_timeout)
        responses = greedy_responses(self.rollout, self.tokenizer, self.eval_prompts, self.sampling,
                                     self.config.training.batch_size * self.group_size,
                                     self.sampling_generator, self.dist)
        metrics = (eval_metrics(self.reward_fns, list(self.eval_set), self.tokenizer, responses,
                                self.config.algorithm.reward_timeout) if self.dist.is_main else None)
        return distributed.broadcast_object(metrics)

    def extra_state(self) -> dict[str, Any]:
        return {"buffer": None if self.buffer is None else self.buffer.to_state(),
                "iteration": self.iteration, "rollout_round": self.rollout_round,
                "sampling_generator": self.sampling_generator.get_state(),
                "value_head": self._value_head_state()}

    def _value_head_state(self):
        if self.value_head is None or (self.engine is not None and self.engine.sharded):
            return None  # FSDP2: the head is part of the sharded checkpoint
        return self.value_head.state_dict()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.buffer, self.iteration = TrainingBuffer.from_state(state["buffer"]), state["iteration"]
        self.rollout_round = state.get("rollout_round", 0)
        self.sampling_generator.set_state(state["sampling_generator"])
        if self.value_head is not None and state.get("value_head") is not None:
            self.value_head.load_state_dict(state["value_head"])



