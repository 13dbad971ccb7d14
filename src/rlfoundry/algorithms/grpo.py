"""GRPO: prompts -> rollouts -> rewards -> groups -> advantages -> clipped policy updates.

One rollout batch feeds ``num_iterations`` (mu) optimizer steps. Override points, so the
seed's ``CustomGRPOTrainer`` / ``DialogueGRPOTrainer`` patterns work by subclassing:

- ``form_groups(batch_size, group_size, **context)`` -> list of index tensors (default: the
  configured grouping strategy; context has prompt_index, rewards, step, total_steps,
  columns, prompts, responses, embed, and embeddings when the strategy needs them or the
  override names an ``embeddings`` parameter);
- ``compute_advantages(rewards, groups)`` -> advantages ``[N]``;
- ``compute_loss(batch, model_outputs)`` -> ``(loss, metrics)`` (default: the configured loss);
- ``train_step(batch)`` -> loss or ``(loss, metrics)``; ``batch`` holds the tensors plus the
  seed's names: ``policy_logps``, ``old_policy_logps``, ``advantages``, ``returns``,
  ``value_preds`` (with a value head), ``responses`` (completion texts) and ``prompts``;
  ``group_id`` ``[B]`` (each sample's group in the rollout) and the rollout's ``num_groups``
  and ``num_grouped`` (trained samples) for group-aware losses.

A loss class may name the grouping it needs (``grouping = "dynamic"``, options in
``grouping_options``/``grouping_defaults``, e.g. ``dynamic_grpo``): the trainer then forms
groups with that strategy before computing advantages.

Under torchrun each rank samples and scores its share of the step's prompts; the samples and
rewards of all ranks are then gathered, rank 0 forms the groups (embedding the samples if the
strategy needs it) and advantages from the global data and sends them to every rank, so
group statistics, batch-level scaling and dynamic-sampling decisions are those of the whole
batch. Every rank then holds the same global rollout buffer and trains on its contiguous
share of it (old/reference log-probs are computed in shares and gathered); token-level
losses are normalised by the global token count by the shared loop.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import time
from typing import Any

import torch

from rlfoundry.algorithms.advantages import compute_advantages
from rlfoundry.algorithms.grouping import (
    GROUPINGS,
    GroupingContext,
    check_stages,
    conversation_text,
    group_quality_metrics,
    needs_embeddings,
)
from rlfoundry.algorithms.grouping.embeddings import POLICY, encoder_path, load_encoder
from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
from rlfoundry.algorithms.reference import build_reference, reference_module
from rlfoundry.algorithms.trainer_registry import TRAINERS
from rlfoundry.config import RunConfig
from rlfoundry.data import PreferenceDataset, PromptDataset
from rlfoundry.data.padding import pad_prompt_completions
from rlfoundry.data.prompts import render_prompt
from rlfoundry.data.sources import load_dataset_spec
from rlfoundry.errors import ConfigError, DataError
from rlfoundry.ops.lm_head import response_embeddings, token_logprobs
from rlfoundry.rewards import NonFiniteRewardError, RewardResult, compute_rewards, resolve_reward
from rlfoundry.rollout import HFSampler, Rollout, SamplingParams, concat_rollouts
from rlfoundry.training import distributed
from rlfoundry.training.base import Trainer, as_loss_and_metrics, call_with_accepted
from rlfoundry.training.distributed import shard_range
from rlfoundry.training.metrics import WeightedMean
from rlfoundry.training.sampler import length_blocks

DEFAULT_GROUP_SIZE = 4
DEFAULT_REWARDS = {"addition": [{"name": "math_accuracy"}], "sort": [{"name": "exact_match"}],
                   "max": [{"name": "math_accuracy"}]}
LOSS_KEYS_AT_ALGORITHM_LEVEL = ("clip_ratio", "entropy_coef", "value_loss_coef")
PASSING_REASONS = ("passed", "failed")  # reward reasons that need no explanation in the log
REASONS_SHOWN_PER_STEP = 3


def _nanmean(x: torch.Tensor) -> torch.Tensor:
    return x.nanmean() if (~torch.isnan(x)).any() else x.new_tensor(0.0)


def group_size_of(algo) -> int:
    """``algorithm.group_size`` (or its alias ``num_generations``), default 4."""
    return algo.group_size or algo.num_generations or DEFAULT_GROUP_SIZE


def prompt_seed(seed: int, rollout_round: int, position: int) -> int:
    """Seed of the generator for the prompt at ``position`` of the global batch of rollout
    round ``rollout_round`` (``sampling.seed_per_prompt``): independent of the rank layout."""
    digest = hashlib.sha256(f"{seed}/{rollout_round}/{position}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@TRAINERS.register("grpo")
class GRPOTrainer(Trainer):
    """Group Relative Policy Optimization and its variants (DAPO, Dr.GRPO, GSPO, RLOO, ...)."""

    kind = "grpo"
    default_loss_type = "grpo"

    @classmethod
    def validate_config(cls, cfg: RunConfig) -> None:
        algo = cfg.algorithm
        if algo.group_size and algo.num_generations and algo.group_size != algo.num_generations:
            raise ConfigError(f"algorithm.group_size={algo.group_size} and algorithm.num_generations="
                              f"{algo.num_generations} disagree; keep one")
        loss = dict(algo.loss)
        for key in LOSS_KEYS_AT_ALGORITHM_LEVEL:  # the seed writes these under algorithm:
            value = getattr(algo, key)
            if value is None:
                continue
            if key in loss and loss[key] != value:
                raise ConfigError(f"algorithm.{key}={value} and algorithm.loss.{key}={loss[key]} disagree")
            loss[key] = value
        from rlfoundry.algorithms.loss_functions import GRPOLossFn, MultiObjectiveGRPOLossFn

        if issubclass(LossFunctionRegistry.get(loss["type"]), (GRPOLossFn, MultiObjectiveGRPOLossFn)):
            loss.setdefault("max_completion_length", algo.sampling.max_new_tokens)  # Dr.GRPO's L
        algo.loss = loss
        from rlfoundry.algorithms.loss_functions import DPOLossFn
        from rlfoundry.training.schedules import loss_components

        if any(isinstance(c, DPOLossFn) for c in loss_components(LossFunctionRegistry.build(loss))):
            raise ConfigError("algorithm.loss: a DPO-style component needs preference pairs "
                              "(chosen/rejected); use it in a DPO run (algorithm.name: dpo)")
        if not algo.rewards:
            name = cfg.data.train[len("builtin:"):] if isinstance(cfg.data.train, str) else ""
            if name not in DEFAULT_REWARDS:
                raise ConfigError("algorithm.rewards: GRPO needs at least one reward function, e.g. "
                                  "rewards: [{name: math_accuracy}] (see `rlfoundry list`)")
            algo.rewards = DEFAULT_REWARDS[name]
        for i, spec in enumerate(algo.rewards):
            try:
                resolve_reward(spec.name, spec.args)
            except ConfigError as e:
                raise ConfigError(f"algorithm.rewards[{i}]: {e}") from None
        check_grouping(*resolve_grouping(algo, LossFunctionRegistry.build(loss)))
        g = group_size_of(algo)
        samples = cfg.training.batch_size * g
        micro = cfg.training.micro_batch_size
        if micro and samples % micro:
            raise ConfigError(f"training.micro_batch_size ({micro}) must divide the samples per step: "
                              f"training.batch_size ({cfg.training.batch_size}) x group size ({g})")

    @classmethod
    def validate_world(cls, cfg: RunConfig, world_size: int) -> None:
        """Every rank samples an equal share of the prompts and trains on an equal share of
        the samples, in whole micro-batches."""
        if world_size <= 1:
            return
        batch, micro, g = cfg.training.batch_size, cfg.training.micro_batch_size, group_size_of(cfg.algorithm)
        if batch % world_size:
            raise ConfigError(f"training.batch_size ({batch} prompts per step) must be a multiple of "
                              f"WORLD_SIZE ({world_size}): each rank samples an equal share")
        per_rank = batch // world_size * g
        if micro and per_rank % micro:
            raise ConfigError(f"training.micro_batch_size ({micro}) must divide each rank's samples: "
                              f"training.batch_size ({batch}) / WORLD_SIZE ({world_size}) x group "
                              f"size ({g}) = {per_rank}")

    def __init__(self, model=None, tokenizer=None, config=None, *, loss_fn=None,
                 reward_fns=None, rollout_backend=None):
        super().__init__(model, tokenizer, config, loss_fn=loss_fn)
        algo = self.config.algorithm
        self.group_size = group_size_of(algo)
        self.num_iterations = algo.num_iterations
        s = algo.sampling
        self.sampling = SamplingParams(s.temperature, s.top_p, s.top_k, s.max_new_tokens, list(s.stop_strings))
        self.reward_fns = self._reward_functions(reward_fns)
        self.grouping_name, self.grouping_options = resolve_grouping(algo, self.loss_fn)
        self.grouping = GROUPINGS.get(self.grouping_name)
        self._encoder = None
        self.rollout = rollout_backend or HFSampler(self.model, self.tokenizer)
        self.sampling_generator = torch.Generator(self.device).manual_seed(
            self.config.training.seed + self.dist.rank)
        self.rollout_round = 0  # counts sampling rounds (seeds per-prompt generators)
        self.ref_model = (build_reference(self.model)
                          if getattr(self.loss_fn, "requires_reference", False) else None)
        self.value_head = None
        if self.loss_fn.cfg.get("value_loss_coef", 0.0) > 0:
            hidden = self.model.config.hidden_size
            self.value_head = torch.nn.Linear(hidden, 1).to(self.device, next(self.model.parameters()).dtype)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
        self.buffer: dict[str, Any] | None = None
        self.iteration = 0
        self.rollout_metrics: dict[str, Any] = {}

    def _reward_functions(self, given) -> list[tuple[str, Any, float]]:
        if given is not None:
            out = []
            for item in given:
                if isinstance(item, tuple):
                    out.append(item if len(item) == 3 else (*item, 1.0))
                else:
                    out.append((getattr(item, "__name__", "reward"), item, 1.0))
            return out
        return [(spec.name, resolve_reward(spec.name, spec.args), spec.weight)
                for spec in self.config.algorithm.rewards]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        params = super().trainable_parameters()
        return params + (list(self.value_head.parameters()) if self.value_head is not None else [])

    def extra_modules(self) -> list[torch.nn.Module]:
        return [self.value_head] if self.value_head is not None else []

    # ---- data ----------------------------------------------------------------------------
    def setup_data(self, dataset=None, eval_dataset=None) -> int:
        data = self.config.data
        self.train_set = _as_prompt_dataset(dataset, data, "train")
        builtin = isinstance(data.train, str) and data.train.startswith("builtin:")
        self.eval_set = (_as_prompt_dataset(eval_dataset, data, "eval")
                         if eval_dataset is not None or data.eval is not None or builtin else None)
        from rlfoundry.data.lengths import tokenize_grpo_prompts  # bounded by the model's context

        self.train_prompts, self.eval_prompts = tokenize_grpo_prompts(
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
        """Advantages ``[N]`` (and group statistics) from the configured estimator."""
        adv = self.config.algorithm.advantage
        options = {"scale_rewards": adv.scale_rewards} if adv.estimator == "grpo" else {}
        return compute_advantages(adv.estimator, rewards, groups, clip=adv.clip, **options)

    def compute_loss(self, batch: dict[str, Any], model_outputs: dict[str, torch.Tensor]):
        return self.loss_fn(batch, model_outputs)

    def train_step(self, batch: dict[str, Any]):
        outputs = {"logprobs": batch["policy_logps"]}
        if batch.get("entropy") is not None:
            outputs["entropy"] = batch["entropy"]
        if batch.get("value_preds") is not None:
            outputs["values"] = batch["value_preds"]
        if batch.get("response_embeddings") is not None:  # the seed calls them "responses" here
            outputs["response_embeddings"] = outputs["responses"] = batch["response_embeddings"]
        return self.compute_loss(batch, outputs)

    # ---- rollouts ------------------------------------------------------------------------
    def next_batch(self) -> list[int]:
        if self.buffer is None or self.iteration >= self.num_iterations:
            self.buffer = None  # a rollout skipped for non-finite rewards is never reused
            self.buffer, self.rollout_metrics = self.make_rollout(self.sampler.next_batch())
            self.iteration = 0
        self.iteration += 1
        # ordered by length in micro-batch blocks: micro-batches are trimmed to similar widths
        lengths = self.buffer["attention_mask"].sum(-1).tolist()
        return self.local_share(length_blocks(list(range(len(lengths))), lengths,
                                              self.config.training.micro_batch_size))

    def _sample_round(self, prompt_indices: list[int]) -> dict[str, Any]:
        """Sample and score one set of prompts (each rank its share), then group and compute
        advantages over the samples of all ranks (rank 0 decides, every rank receives)."""
        share = shard_range(len(prompt_indices), self.dist.rank, self.dist.world_size)
        r = self._generate_and_score(prompt_indices, share)
        self.rollout_round += 1
        if self.dist.enabled:
            r = self._gather_round(distributed.all_gather_object(r), prompt_indices)
        if r["nonfinite"]:  # decided on gathered values: every rank skips (or raises) alike
            self.nonfinite("rewards", r["nonfinite"])
        with self.full_parameters():  # a strategy may embed samples with the policy
            grouped = self._group(r, prompt_indices) if self.dist.is_main else None
        r["groups"], r["advantages"], r["stats"], r["group_of"] = distributed.broadcast_object(grouped)
        bad = ~torch.isfinite(torch.as_tensor(r["advantages"], dtype=torch.float64))
        if bad.any():
            first = int(bad.nonzero()[0])
            self.nonfinite("advantages", f"{int(bad.sum())} of {bad.numel()}, first sample {first}: "
                           f"advantage {float(r['advantages'][first])}, reward "
                           f"{float(r['rewards'][first])}")
        return r

    def _generate_and_score(self, prompt_indices: list[int], share: range) -> dict[str, Any]:
        """Completions and rewards of the prompts at positions ``share`` of the round."""
        positions = list(share)
        with self.full_parameters(), self.autocast():
            rollout: Rollout = self.rollout.generate(
                [self.train_prompts[prompt_indices[p]] for p in positions], self.group_size,
                self.sampling, self._sampling_rng(positions))
        rollout.prompt_index = [share.start + p for p in rollout.prompt_index]  # round positions
        examples = [self.train_set[prompt_indices[p]] for p in rollout.prompt_index]
        prompts = [render_prompt(self.tokenizer, ex.prompt) for ex in examples]
        responses = self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        columns = _columns(examples)
        columns["completion_lengths"] = [len(c) for c in rollout.completion_ids]
        sample_ids = [f"{ex.location}#{i % self.group_size}" for i, ex in enumerate(examples)]
        result, nonfinite = self.score_rollout(prompts, responses, columns, sample_ids)
        return dict(rollout=rollout, prompts=prompts, responses=responses, rewards=result.total,
                    per_function=result.per_function, columns=columns, nonfinite=nonfinite,
                    reason_counts=result.reason_counts())

    def score_rollout(self, prompts: list[Any], responses: list[str],
                      columns: dict[str, list[Any]],
                      sample_ids: list[str]) -> tuple[RewardResult, str | None]:
        """Run the reward functions (``algorithm.reward_error`` / ``reward_timeout`` apply).
        Returns the result and a description of any NaN/inf reward (None if all are finite),
        which the caller hands to :meth:`nonfinite` once every rank's rewards are known."""
        algo = self.config.algorithm
        try:
            result = compute_rewards(self.reward_fns, prompts, responses, columns,
                                     on_error=algo.reward_error, sample_ids=sample_ids,
                                     timeout=algo.reward_timeout)
        except NonFiniteRewardError as e:
            n = len(responses)
            empty = torch.full((n,), math.nan, dtype=torch.float64)
            return RewardResult(empty, {name: empty for name, _, _ in self.reward_fns}, {}), str(e)
        self.report_reward_reasons(result, sample_ids)
        overflow = torch.isinf(result.total)  # finite rewards whose weighted sum overflows
        if overflow.any():
            first = int(overflow.nonzero()[0])
            return result, f"the weighted total of {sample_ids[first]} is {float(result.total[first])}"
        return result, None

    def report_reward_reasons(self, result: RewardResult, sample_ids: list[str]) -> None:
        """Write the first few explained failures (sandbox timeouts, blocked calls, ...) of
        this rollout to the log; their counts go to the metrics."""
        shown = 0
        for name, reasons in result.reasons.items():
            for i, reason in enumerate(reasons):
                if reason is None or reason in PASSING_REASONS or shown >= REASONS_SHOWN_PER_STEP:
                    continue
                detail = result.details.get(name, [None] * len(reasons))[i]
                self.logger.write(f"step {self.step + 1}: reward '{name}' on {sample_ids[i]}: "
                                  f"{reason}{f' ({detail})' if detail else ''}")
                shown += 1

    def _gather_round(self, parts: list[dict[str, Any]], prompt_indices: list[int]) -> dict[str, Any]:
        """The ranks' samples of one round as one round (rank order = single-process order)."""
        rollout = concat_rollouts([p["rollout"] for p in parts])
        columns = _columns([self.train_set[prompt_indices[p]] for p in rollout.prompt_index])
        columns["completion_lengths"] = [len(c) for c in rollout.completion_ids]
        return dict(rollout=rollout, prompts=[x for p in parts for x in p["prompts"]],
                    responses=[x for p in parts for x in p["responses"]],
                    rewards=torch.cat([p["rewards"] for p in parts]),
                    per_function={k: torch.cat([p["per_function"][k] for p in parts])
                                  for k in parts[0]["per_function"]},
                    columns=columns,
                    nonfinite=next((p["nonfinite"] for p in parts if p["nonfinite"]), None),
                    reason_counts=_add_counts([p["reason_counts"] for p in parts]))

    def _group(self, r: dict[str, Any], prompt_indices: list[int]):
        """``(groups, advantages, stats, group_of)`` of a whole round."""
        rollout, rewards, responses = r["rollout"], r["rewards"], r["responses"]
        examples = [self.train_set[prompt_indices[p]] for p in rollout.prompt_index]
        n = len(responses)
        context = dict(prompt_index=torch.tensor(rollout.prompt_index), rewards=rewards,
                       step=self.step, total_steps=self.total_steps, columns=r["columns"],
                       prompts=[ex.prompt for ex in examples], responses=responses,
                       embed=self.embed_texts)
        embeddings = None
        if self.wants_embeddings(n, **context):
            embeddings = self.embed(rollout, [ex.prompt for ex in examples], responses)
        groups = call_with_accepted(self.form_groups, n, self.group_size, **context,
                                    embeddings=embeddings)
        groups = [torch.as_tensor(g, dtype=torch.long).reshape(-1) for g in groups if len(g) > 0]
        advantages, stats = as_advantages(self.compute_advantages(rewards, groups))
        stats.update(group_quality_metrics(groups, n, rewards, embeddings))
        group_of = torch.full((n,), -1, dtype=torch.long)
        for k, g in enumerate(groups):
            group_of[g] = k
        return groups, advantages, stats, group_of

    def _sampling_rng(self, positions: list[int]):
        """This rank's generator, or (``seed_per_prompt``) one generator per prompt."""
        if not self.config.algorithm.sampling.seed_per_prompt:
            return self.sampling_generator
        seed = self.config.training.seed
        return [torch.Generator(self.device).manual_seed(prompt_seed(seed, self.rollout_round, p))
                for p in positions]

    @torch.no_grad()
    def embed(self, rollout: Rollout, prompts: list[Any] | None = None,
              responses: list[str] | None = None) -> torch.Tensor:
        """Sample embeddings ``[N, D]`` for grouping, from ``algorithm.grouping.embedding``:
        the policy's last hidden states mean-pooled over each sample's completion tokens (or
        prompt and completion, ``embedding_text``), or a sentence encoder's embedding of the
        completion text (or prompt text + completion)."""
        whole = self.grouping_options["embedding_text"] == "prompt_completion"
        if self.grouping_options["embedding"] != POLICY:
            if responses is None:
                responses = self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
            texts = list(responses)
            if whole:
                if prompts is None:
                    raise ValueError("embedding_text 'prompt_completion' needs the prompts")
                texts = [conversation_text(p) + "\n" + r for p, r in zip(prompts, responses)]
            return self.embed_texts(texts)
        ids, attn, comp = pad_prompt_completions(rollout.prompt_ids, rollout.completion_ids,
                                                 self.tokenizer.pad_token_id or 0)
        return self._policy_pool(ids, attn if whole else comp, attn)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Embeddings ``[len(texts), D]`` of arbitrary texts from the configured source (the
        policy: its hidden states mean-pooled over the text's tokens)."""
        spec = self.grouping_options["embedding"]
        if not texts:
            return torch.zeros(0, 0)
        if spec != POLICY:
            if self._encoder is None:
                self._encoder = load_encoder(spec, str(self.device))
            return self._encoder(list(texts))
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] or [self.tokenizer.pad_token_id or 0]
               for t in texts]
        padded, attn, _ = pad_prompt_completions(ids, [[] for _ in ids], self.tokenizer.pad_token_id or 0)
        return self._policy_pool(padded, attn, attn)

    def _policy_pool(self, ids: torch.Tensor, pool_mask: torch.Tensor,
                     attention: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            hidden = self._body()(input_ids=ids.to(self.device),
                                  attention_mask=attention.to(self.device)).last_hidden_state
        finally:
            self.model.train(was_training)
        return response_embeddings(hidden, pool_mask.to(hidden.device)).float().cpu()

    def _body(self) -> torch.nn.Module:
        """The policy's transformer body (hidden states), under a LoRA wrapper too."""
        lm = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return lm.base_model

    def make_rollout(self, prompt_indices: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
        """One training batch of samples (DAPO dynamic sampling refills dropped groups)."""
        dyn = self.config.algorithm.dynamic_sampling
        rounds = [self._sample_round(prompt_indices)]
        if dyn.enabled:
            kept = sum(len(_varied(r)) for r in rounds)
            while kept < len(prompt_indices) and len(rounds) <= dyn.max_rounds:
                rounds.append(self._sample_round(self.sampler.next_batch()))
                kept += len(_varied(rounds[-1]))
        first = rounds[0]
        metrics = self._rollout_metrics(first)
        samples: list[tuple[dict, int]] = []  # (round, sample index) of every trained sample
        for k, r in enumerate(rounds):
            r["group_of"] = r["group_of"] + k * len(r["responses"])  # distinct across rounds
            groups = _varied(r) if dyn.enabled else r["groups"]
            for g in groups:
                samples.extend((r, int(i)) for i in g if not math.isnan(float(r["rewards"][i])))
        if dyn.enabled:
            samples = samples[: len(prompt_indices) * self.group_size]
            metrics["dynamic_sampling_rounds"] = len(rounds)
        if not samples:
            raise DataError(f"step {self.step + 1}: no sample has a reward inside a group; "
                            "nothing to train on (check the reward functions and grouping)")
        buffer = self._to_buffer(samples)
        buffer["num_groups"] = int(buffer["group_id"].unique().numel())  # of the trained samples
        buffer["num_grouped"] = len(samples)
        return buffer, metrics

    def _rollout_metrics(self, r: dict[str, Any]) -> dict[str, Any]:
        ro: Rollout = r["rollout"]
        lengths = torch.tensor([len(c) for c in ro.completion_ids], dtype=torch.float64)
        scored = r["rewards"][~torch.isnan(r["rewards"])]
        metrics = {
            "reward_mean": _nanmean(r["rewards"]),
            "reward_std": scored.std() if scored.numel() > 1 else 0.0,
            **{f"reward/{k}": _nanmean(v) for k, v in r["per_function"].items()},
            **r["reason_counts"],
            **r["stats"],
            "completion_length_mean": lengths.mean(),
            "completion_length_max": lengths.max(),
            "truncated_frac": sum(ro.truncated) / len(ro.truncated),
            "generation_tokens_per_s": ro.num_tokens / max(ro.seconds, 1e-9),
        }
        return metrics

    @torch.no_grad()
    def _to_buffer(self, samples: list[tuple[dict, int]]) -> dict[str, Any]:
        """Right-padded tensors for the trained samples, plus old/reference log-probs."""
        prompts = [r["rollout"].prompt_ids[i] for r, i in samples]
        completions = [r["rollout"].completion_ids[i] for r, i in samples]
        input_ids, attention, loss_mask = pad_prompt_completions(prompts, completions,
                                                                 self.tokenizer.pad_token_id or 0)
        # sampler log-probs aligned with labels = input_ids[:, 1:]
        sampling_lp = torch.zeros((len(samples), input_ids.shape[1] - 1), dtype=torch.float32)
        for k, (r, i) in enumerate(samples):
            start = len(prompts[k])
            sampling_lp[k, start - 1: start - 1 + len(completions[k])] = torch.tensor(
                r["rollout"].sampling_logprobs[i])
        buffer = {
            "input_ids": input_ids, "attention_mask": attention, "loss_mask": loss_mask,
            "sampling_logprobs": sampling_lp,
            "advantages": torch.stack([r["advantages"][i] for r, i in samples]).float(),
            "returns": torch.stack([r["rewards"][i] for r, i in samples]).float(),
            "truncated": torch.tensor([r["rollout"].truncated[i] for r, i in samples]),
            "responses": [r["responses"][i] for r, i in samples],
            "prompts": [r["prompts"][i] for r, i in samples],
            "group_id": torch.stack([r["group_of"][i] for r, i in samples]),
        }
        if "targets" in getattr(self.loss_fn, "requires", ()):
            with self.full_parameters():
                buffer.update(self._target_embeddings([r["columns"] for r, _ in samples],
                                                      [i for _, i in samples]))
        if self.num_iterations > 1:
            buffer["old_logprobs"] = self._logprobs_of(self.model, buffer)
        if self.ref_model is not None:
            buffer["reference_logprobs"] = self._logprobs_of(self.ref_model, buffer)
        return buffer

    def _target_embeddings(self, columns: list[dict], rows: list[int]) -> dict[str, torch.Tensor]:
        """Policy embeddings of each sample's target text (for the quality objective)."""
        from rlfoundry.training.schedules import loss_components

        name = next((c.cfg["target_column"] for c in loss_components(self.loss_fn)
                     if "targets" in getattr(c, "requires", ())), "answer")
        texts = [cols.get(name, [None] * (i + 1))[i] for cols, i in zip(columns, rows)]
        if all(t is None for t in texts):
            raise DataError(f"the quality objective compares responses to the data column '{name}', "
                            "but no training row has it (set target_column)")
        ids = [self.tokenizer(str(t or ""), add_special_tokens=False)["input_ids"] for t in texts]
        ids_t, attn, mask = pad_prompt_completions([[] for _ in ids], ids, self.tokenizer.pad_token_id or 0)
        hidden = self._body()(input_ids=ids_t.to(self.device),
                              attention_mask=attn.to(self.device)).last_hidden_state
        return {"target_embeddings": response_embeddings(hidden, mask.to(self.device)).float().cpu(),
                "has_target": torch.tensor([t is not None for t in texts])}

    def _logprobs_of(self, model, buffer: dict[str, Any]) -> torch.Tensor:
        """Per-token log-probs of every buffer row under ``model`` (the policy or the
        reference): each rank computes its share of the rows, then the shares are gathered."""
        n = buffer["input_ids"].shape[0]
        share = shard_range(n, self.dist.rank, self.dist.world_size)
        size = self.config.training.micro_batch_size or n
        parts = [torch.zeros((0, buffer["input_ids"].shape[1] - 1))]
        with reference_module(model) as module, self.full_parameters(), self.autocast():
            for start in range(share.start, share.stop, size):
                sl = slice(start, min(start + size, share.stop))
                out = token_logprobs(module, buffer["input_ids"][sl].to(self.device),
                                     buffer["attention_mask"][sl].to(self.device),
                                     buffer["loss_mask"][sl].to(self.device), temperature=self._temperature)
                parts.append(out.logprobs.detach().cpu())
        local = torch.cat(parts)
        return torch.cat(distributed.all_gather_object(local)) if self.dist.enabled else local

    @property
    def _temperature(self) -> float:
        return self.sampling.temperature or 1.0

    # ---- one micro-batch -----------------------------------------------------------------
    def collate(self, indices: list[int]) -> dict[str, Any]:
        buf = self.buffer
        idx = torch.tensor(indices)
        width = int(buf["attention_mask"][idx].sum(-1).max())
        batch: dict[str, Any] = {}
        for key, value in buf.items():
            if isinstance(value, list):
                batch[key] = [value[i] for i in indices]
            elif not isinstance(value, torch.Tensor):  # rollout-level numbers (num_groups, ...)
                batch[key] = value
            elif value.dim() == 2 and key != "target_embeddings":  # [N, T] sequence-aligned
                batch[key] = value[idx, : width if value.shape[1] == buf["input_ids"].shape[1] else width - 1]
            else:
                batch[key] = value[idx]
        batch["response_mask"] = batch["loss_mask"][:, 1:].bool()
        valid = getattr(self.loss_fn, "valid_mask", None)
        batch["num_sequences"] = len(indices)
        batch["num_tokens"] = int((valid(batch) if valid else batch["response_mask"]).sum())
        return batch

    def micro_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        batch = self.to_device(batch)
        embed = "hidden" in getattr(self.loss_fn, "requires", ())
        out, values = self.forward_policy(self._policy_forward, batch, embed)
        if embed:
            batch["response_embeddings"] = response_embeddings(out.hidden, batch["loss_mask"])
        batch["policy_logps"] = out.logprobs
        batch["response_mask"] = out.mask
        batch["entropy"] = out.entropy
        batch["old_policy_logps"] = batch.get("old_logprobs")
        batch["value_preds"] = values  # the seed's train_step reads it; None without a value head
        loss, metrics = as_loss_and_metrics(self.train_step(batch))
        return loss, metrics

    def _policy_forward(self, model, batch: dict[str, Any], embed: bool):
        """Token log-probs (entropy, hidden states as needed) of the batch, plus value
        predictions with a value head: the training forward, run through DDP/FSDP2."""
        with_entropy = bool(self.loss_fn.cfg.get("entropy_coef", 0.0))
        out = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                             with_entropy=with_entropy, return_hidden=self.value_head is not None or embed,
                             temperature=self._temperature)
        if self.value_head is None:
            return out, None
        last = batch["attention_mask"].sum(-1) - 1
        hidden = out.hidden[torch.arange(len(last), device=last.device), last]
        return out, self.value_head(hidden).squeeze(-1).float()

    def optimizer_step(self, indices: list[int]) -> dict[str, float]:
        start = time.perf_counter()
        rollout_metrics, self.rollout_metrics = self.rollout_metrics, {}
        metrics = super().optimizer_step(indices)
        tokens = int(self.buffer["loss_mask"].sum())
        metrics["training_tokens_per_s"] = tokens / max(time.perf_counter() - start, 1e-9)
        self.rollout.sync_weights(self.model)
        acc = WeightedMean()  # one host transfer for the rollout's tensor metrics
        acc.add(rollout_metrics, 1.0)
        return {**acc.result(), **metrics}

    # ---- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy completions of the held-out prompts (each rank its share): mean reward per
        function, and exact-match accuracy against the ``answer`` column where rows have one
        (equal strings, or equal numbers by math equivalence)."""
        if not self.eval_prompts:
            return {}
        greedy = SamplingParams(0.0, 1.0, 0, self.sampling.max_new_tokens, list(self.sampling.stop_strings))
        size = self.config.training.batch_size * self.group_size
        share = shard_range(len(self.eval_prompts), self.dist.rank, self.dist.world_size)
        responses = []
        for start in range(share.start, share.stop, size):
            prompts = self.eval_prompts[start:min(start + size, share.stop)]
            ro = self.rollout.generate(prompts, 1, greedy, self.sampling_generator)
            responses += self.tokenizer.batch_decode(ro.completion_ids, skip_special_tokens=True)
        if self.dist.enabled:
            responses = [r for part in distributed.all_gather_object(responses) for r in part]
        metrics = self._eval_metrics(responses) if self.dist.is_main else None
        return distributed.broadcast_object(metrics)

    def _eval_metrics(self, responses: list[str]) -> dict[str, float]:
        from rlfoundry.rewards import REWARDS

        examples = list(self.eval_set)
        prompts = [render_prompt(self.tokenizer, ex.prompt) for ex in examples]
        columns = _columns(examples)
        result = compute_rewards(self.reward_fns, prompts, responses, columns, on_error="zero",
                                 timeout=self.config.algorithm.reward_timeout)
        metrics = {"reward_mean": float(_nanmean(result.total))}
        metrics.update({f"reward/{k}": float(_nanmean(v)) for k, v in result.per_function.items()})
        if "answer" in columns:
            numeric = REWARDS.get("math_accuracy")(prompts, responses, answer=columns["answer"])
            scored = [float(r.strip() == str(a).strip()) or (m or 0.0)
                      for r, a, m in zip(responses, columns["answer"], numeric) if a is not None]
            if scored:
                metrics["accuracy"] = sum(scored) / len(scored)
        return metrics

    # ---- state ---------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"buffer": self.buffer, "iteration": self.iteration,
                "rollout_round": self.rollout_round,
                "sampling_generator": self.sampling_generator.get_state(),
                "value_head": self._value_head_state()}

    def _value_head_state(self):
        if self.value_head is None or (self.engine is not None and self.engine.sharded):
            return None  # FSDP2: the head is part of the sharded checkpoint
        return self.value_head.state_dict()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.buffer, self.iteration = state["buffer"], state["iteration"]
        self.rollout_round = state.get("rollout_round", 0)
        self.sampling_generator.set_state(state["sampling_generator"])
        if self.value_head is not None and state.get("value_head") is not None:
            self.value_head.load_state_dict(state["value_head"])

    def rank_state(self) -> dict[str, Any]:
        return {**super().rank_state(), "sampling_generator": self.sampling_generator.get_state()}

    def load_rank_state(self, state: dict[str, Any] | None) -> None:
        super().load_rank_state(state)
        if state is None:
            self.sampling_generator.manual_seed(
                self.config.training.seed + 7919 * self.step + self.dist.rank)
        else:
            self.sampling_generator.set_state(state["sampling_generator"])


def resolve_grouping(algo, loss_fn) -> tuple[str, dict[str, Any]]:
    """The grouping strategy name and options for a run: ``algorithm.group_strategy`` and
    ``algorithm.grouping``, unless the loss names a grouping of its own (``loss_fn.grouping``),
    whose ``grouping_options`` (set in ``algorithm.loss``) and ``grouping_defaults`` then apply;
    a value set in both places must agree. In a composite loss the first component that names
    a grouping decides."""
    from rlfoundry.training.schedules import loss_components

    name, options = algo.group_strategy or "by_prompt", algo.grouping.model_dump()
    loss_fn = next((c for c in loss_components(loss_fn) if getattr(c, "grouping", None)), None)
    wanted = getattr(loss_fn, "grouping", None)
    if wanted is None:
        return name, options
    if algo.group_strategy not in (None, wanted):
        raise ConfigError(f"algorithm.group_strategy: '{algo.group_strategy}' conflicts with the "
                          f"loss, which forms its own groups with strategy '{wanted}'; remove "
                          "group_strategy or use another loss type")
    explicit = algo.grouping.model_fields_set
    for key, value in getattr(loss_fn, "grouping_defaults", {}).items():
        if key not in explicit:
            options[key] = value
    for key, value in getattr(loss_fn, "grouping_options", {}).items():
        if key in explicit and options[key] != value:
            raise ConfigError(f"algorithm.loss.{key}={value} and algorithm.grouping.{key}="
                              f"{options[key]} disagree; keep one")
        options[key] = value
    return wanted, options


def check_grouping(name: str, options: dict[str, Any]) -> None:
    """Reject an unknown strategy, bad adaptive stages or an unusable embedding source at
    config load."""
    try:
        GROUPINGS.get(name)
    except ConfigError as e:
        raise ConfigError(f"algorithm.group_strategy: {e}") from None
    if name == "adaptive":
        check_stages(options["stages"])
    low, high = options["min_group_size"], options["max_group_size"]
    if high is not None and low > high:
        raise ConfigError(f"algorithm.grouping.min_group_size ({low}) is larger than "
                          f"max_group_size ({high}): every group would be a leftover")
    if options["embedding"] != POLICY:
        encoder_path(options["embedding"])


def as_advantages(result) -> tuple[torch.Tensor, dict[str, Any]]:
    """``compute_advantages`` overrides may return a tensor or ``(tensor, stats)``."""
    if isinstance(result, tuple):
        return result[0], dict(result[1])
    return result, {}


def _columns(examples) -> dict[str, list[Any]]:
    """Extra data columns of the examples, one list per column (None where a row lacks it)."""
    keys = dict.fromkeys(k for ex in examples for k in ex.extras)
    return {k: [ex.extras.get(k) for ex in examples] for k in keys}


def _varied(r: dict[str, Any]) -> list[torch.Tensor]:
    """Groups whose valid rewards are not all equal (DAPO dynamic sampling keeps these)."""
    out = []
    for g in r["groups"]:
        vals = r["rewards"][g]
        vals = vals[~torch.isnan(vals)]
        if vals.numel() > 1 and bool((vals != vals[0]).any()):
            out.append(g)
    return out


def _add_counts(parts: list[dict[str, float]]) -> dict[str, float]:
    """Sum per-rank ``reward/<name>/<reason>`` counts."""
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0.0) + v
    return dict(sorted(out.items()))


def _as_prompt_dataset(dataset, data_cfg, split: str) -> PromptDataset:
    if isinstance(dataset, PromptDataset):
        return dataset
    if isinstance(dataset, PreferenceDataset):  # the seed trains GRPO on a preference set's prompts
        return PromptDataset(prompts=[ex.prompt for ex in dataset])
    if dataset is not None:
        return PromptDataset.from_rows(dataset, on_bad_row=data_cfg.on_bad_row,
                                       duplicates=data_cfg.duplicates)
    return load_dataset_spec(data_cfg, split, PromptDataset)
