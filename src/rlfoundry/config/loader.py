"""YAML + dotted command-line overrides -> a validated ``RunConfig``.

``load_config("run.yaml", ["training.learning_rate=1e-5", "algorithm.loss.type=ipo"])``.
Errors name the full key path and suggest the nearest valid key.
"""

from __future__ import annotations

import copy
import re
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from rlfoundry.config.checks import check_combinations
from rlfoundry.config.schema import GRPO_ONLY_FIELDS, TRAINING_ALIASES, RunConfig
from rlfoundry.config.yaml_io import load_yaml_text, read_yaml_file
from rlfoundry.errors import ConfigError
from rlfoundry.registry import did_you_mean
from rlfoundry.safe_text import clip, escape_control, short_repr
from rlfoundry.training.backends import resolve_backends

# the key part of `key.path=value`: names (letters, digits, _ and -) joined by dots
OVERRIDE_KEY = re.compile(r"^[A-Za-z_][\w-]*(?:\.[\w-]+)*$")


def parse_value(text: str, where: str = "value") -> Any:
    """An override's value, parsed as YAML (``where`` names it in errors)."""
    return load_yaml_text(text, where)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    data = read_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict copy."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not OVERRIDE_KEY.match(key):
            raise ConfigError(
                f"override '{clip(escape_control(item), 120)}' is not of the form key.path=value "
                "(a dotted path of names, e.g. training.learning_rate=1e-5); a config file "
                "goes first and must exist")
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{clip(escape_control(key), 120)}': "
                                  f"'{'.'.join(parts[: i + 1])}' is not a section")
            node = child
        node[parts[-1]] = parse_value(raw, f"override '{clip(escape_control(key), 120)}'")
    return data


MAX_MESSAGE_CHARS = 4000  # a config error is read by a person: a few KB at most


def load_config(source: str | Path | dict | RunConfig | None = None,
                overrides: list[str] | None = None) -> RunConfig:
    """Read, override, import plugins, validate and cross-check a run config.

    Any :class:`ConfigError` comes out with control characters escaped and at most
    :data:`MAX_MESSAGE_CHARS` long, however large the value it quotes."""
    try:
        return _load_config(source, overrides)
    except ConfigError as e:
        text = str(e)
        bounded = clip(escape_control(text), MAX_MESSAGE_CHARS)
        if bounded == text:
            raise
        raise ConfigError(bounded) from None


def _load_config(source: str | Path | dict | RunConfig | None,
                 overrides: list[str] | None) -> RunConfig:
    if isinstance(source, RunConfig):
        if overrides:
            source = source.model_dump()
        else:
            return finalize(source)
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, dict):
        data = copy.deepcopy(source)
    else:
        data = read_yaml(source)
    data = apply_overrides(data, overrides or [])
    data = _move_aliases(data)
    from rlfoundry.plugins import import_plugins

    import_plugins(data.get("plugins") or [])
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    return finalize(cfg)


def _move_aliases(data: dict[str, Any]) -> dict[str, Any]:
    """Seed-style spellings -> canonical keys (``loss_function:`` -> ``algorithm.loss``)."""
    if "loss_function" in data:
        algo = data.setdefault("algorithm", {})
        if algo.get("loss"):
            raise ConfigError("both 'loss_function' and 'algorithm.loss' are set; keep one")
        algo["loss"] = data.pop("loss_function")
    return data


def finalize(cfg: RunConfig) -> RunConfig:
    """Resolve aliases and reject incompatible combinations (at load time, not at step 300)."""
    from rlfoundry.algorithms.trainer_registry import TRAINERS, load_builtin_trainers

    load_builtin_trainers()
    algo, train = cfg.algorithm, cfg.training
    for key in TRAINING_ALIASES:
        value = getattr(algo, key)
        if value is None:
            continue
        if key in train.model_fields_set and getattr(train, key) != value:
            raise ConfigError(
                f"algorithm.{key}={value} and training.{key}={getattr(train, key)} disagree; keep one"
            )
        setattr(train, key, value)
        setattr(algo, key, None)

    try:
        trainer_cls = TRAINERS.get(algo.name)
    except ConfigError as e:
        raise ConfigError(f"algorithm.name: {e}") from None
    kind = getattr(trainer_cls, "kind", None)
    # GRPO micro-batches split the batch_size x group_size samples; its trainer checks those
    if kind != "grpo" and train.micro_batch_size and train.batch_size % train.micro_batch_size:
        raise ConfigError(
            f"training.batch_size ({train.batch_size}) must be a multiple of "
            f"training.micro_batch_size ({train.micro_batch_size})"
        )
    if kind != "grpo" and cfg.environment is not None:
        raise ConfigError(f"environment: multi-turn environments train with GRPO, but algorithm "
                          f"'{algo.name}' is a {kind or 'custom'} trainer; remove environment: "
                          "or set algorithm.name: grpo")
    if kind != "grpo":
        used = [f for f in GRPO_ONLY_FIELDS if f in algo.model_fields_set]
        if used:
            raise ConfigError(
                f"algorithm.{used[0]} is a GRPO option, but algorithm '{algo.name}' is a "
                f"{kind or 'custom'} trainer; remove it or use a GRPO algorithm"
            )
    loss = dict(algo.loss)
    loss.setdefault("type", trainer_cls.default_loss_type)
    if algo.beta is not None:
        for k in ("reference_policy_kl_penalty", "beta"):
            if k in loss and loss[k] != algo.beta:
                raise ConfigError(f"algorithm.beta={algo.beta} and algorithm.loss.{k}={loss[k]} disagree; keep one")
        if "beta" not in loss:
            loss["reference_policy_kl_penalty"] = algo.beta
    algo.loss = loss
    check_combinations(cfg, kind or "custom")
    trainer_cls.validate_config(cfg)
    _check_schedules(cfg)
    from rlfoundry.training.distributed import launched_world_size

    trainer_cls.validate_world(cfg, launched_world_size())
    cfg.logging.backends = resolve_backends(cfg.logging)
    return cfg


def _check_schedules(cfg: RunConfig) -> None:
    """Build the configured schedules once so bad types/options fail at load."""
    from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
    from rlfoundry.training.schedules import build_schedule, check_range, get_beta

    if cfg.algorithm.beta_schedule:
        beta = get_beta(LossFunctionRegistry.build(cfg.algorithm.loss))
        if beta is None:
            raise ConfigError(f"algorithm.beta_schedule: loss '{cfg.algorithm.loss['type']}' has no beta "
                              "(reference_policy_kl_penalty) to schedule")
        check_range(build_schedule(cfg.algorithm.beta_schedule, "beta", beta, "algorithm.beta_schedule"),
                    "algorithm.beta_schedule", positive=False)
    check_range(build_schedule(cfg.training.lr_controller, "lr", 1.0, "training.lr_controller"),
                "training.lr_controller", positive=True)


MAX_ERRORS_SHOWN = 10


def format_validation_error(err: ValidationError) -> str:
    """One line per problem (at most :data:`MAX_ERRORS_SHOWN`), each naming the key path and
    quoting the offending value in bounded form; a section's valid keys are listed once."""
    lines = []
    listed: set[str] = set()
    errors = err.errors()
    for e in errors[:MAX_ERRORS_SHOWN]:
        loc = [str(p) for p in e["loc"]]
        path = clip(escape_control(".".join(loc), keep_newlines=False), 200)
        if e["type"] == "extra_forbidden":
            fields = _fields_at(RunConfig, loc[:-1])
            name = clip(escape_control(loc[-1], keep_newlines=False), 80)
            section = ".".join(loc[:-1])
            valid = "" if section in listed else f"; valid keys here: {', '.join(sorted(fields))}"
            listed.add(section)
            lines.append(f"{path}: unknown key{did_you_mean(name, fields)}{valid}")
        else:
            lines.append(f"{path}: {e['msg']} (got {short_repr(e.get('input'))})")
    if len(errors) > MAX_ERRORS_SHOWN:
        lines.append(f"... and {len(errors) - MAX_ERRORS_SHOWN} more")
    return "invalid config:\n  " + "\n  ".join(lines)


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *typing.get_args(ann)]
        sub = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)
