"""A GRPO run's inputs at load time: config checks (and of the world size under torchrun)
and the prompt datasets it trains and evaluates on."""

from __future__ import annotations

from rlfoundry.algorithms.grpo_grouping import check_grouping, group_size_of, resolve_grouping
from rlfoundry.algorithms.grpo_process import check_process_config
from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
from rlfoundry.algorithms.mismatch import RolloutCorrection
from rlfoundry.config import RunConfig
from rlfoundry.data import PreferenceDataset, PromptDataset
from rlfoundry.data.sources import load_dataset_spec
from rlfoundry.errors import ConfigError
from rlfoundry.rewards import resolve_reward

DEFAULT_REWARDS = {"addition": [{"name": "math_accuracy"}], "sort": [{"name": "exact_match"}],
                   "max": [{"name": "math_accuracy"}]}
LOSS_KEYS_AT_ALGORITHM_LEVEL = ("clip_ratio", "entropy_coef", "value_loss_coef")


def validate_grpo_config(cfg: RunConfig) -> None:
    """Check (and complete) ``cfg`` for GRPO: group size aliases, loss keys written under
    ``algorithm:``, default rewards of the built-in tasks, grouping, rollout correction and
    micro-batch divisibility. Raises ``ConfigError`` naming the key."""
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
    from rlfoundry.algorithms.loss_functions import DPOLossFn, GRPOLossFn, MultiObjectiveGRPOLossFn
    from rlfoundry.training.schedules import loss_components

    if issubclass(LossFunctionRegistry.get(loss["type"]), (GRPOLossFn, MultiObjectiveGRPOLossFn)):
        loss.setdefault("max_completion_length", algo.sampling.max_new_tokens)  # Dr.GRPO's L
    algo.loss = loss
    if any(isinstance(c, DPOLossFn) for c in loss_components(LossFunctionRegistry.build(loss))):
        raise ConfigError("algorithm.loss: a DPO-style component needs preference pairs "
                          "(chosen/rejected); use it in a DPO run (algorithm.name: dpo)")
    if cfg.environment is not None:
        from rlfoundry.environments.build import check_environment_config

        check_environment_config(cfg.environment)
    if not algo.rewards and cfg.environment is None:  # an environment may give every reward
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
    check_process_config(algo.advantage, [getattr(c, "loss_type", "") for c in
                                          loss_components(LossFunctionRegistry.build(loss))])
    RolloutCorrection.from_config(algo.rollout_correction)
    g = group_size_of(algo)
    micro = cfg.training.micro_batch_size
    if micro and cfg.training.batch_size * g % micro:
        raise ConfigError(f"training.micro_batch_size ({micro}) must divide the samples per step: "
                          f"training.batch_size ({cfg.training.batch_size}) x group size ({g})")


def validate_grpo_world(cfg: RunConfig, world_size: int) -> None:
    """Every rank samples an equal share of the prompts and trains on an equal share of the
    samples, in whole micro-batches."""
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


def prompt_dataset(dataset, data_cfg, split: str) -> PromptDataset:
    """``dataset`` (prompt rows, a PromptDataset, or a preference set's prompts) or the
    ``data.<split>`` source as a PromptDataset."""
    if isinstance(dataset, PromptDataset):
        return dataset
    if isinstance(dataset, PreferenceDataset):  # the seed trains GRPO on a preference set's prompts
        return PromptDataset(prompts=[ex.prompt for ex in dataset])
    if dataset is not None:
        return PromptDataset.from_rows(dataset, on_bad_row=data_cfg.on_bad_row,
                                       duplicates=data_cfg.duplicates)
    return load_dataset_spec(data_cfg, split, PromptDataset)
