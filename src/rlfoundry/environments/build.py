"""Build a run's environment and episode runner from its ``environment:`` config section."""

from __future__ import annotations

import inspect
from typing import Any

from rlfoundry.environments.base import ENVIRONMENTS, Environment
from rlfoundry.environments.episodes import EpisodeSettings
from rlfoundry.errors import ConfigError
from rlfoundry.registry import did_you_mean, import_object


def environment_class(name: str) -> type[Environment]:
    """The environment class ``name`` names: a registered name, or an import path
    (``my_module:MyEnv``); ConfigError with a suggestion otherwise."""
    if name not in ENVIRONMENTS and (":" in name or "." in name):
        cls = import_object(name)
    else:
        cls = ENVIRONMENTS.get(name)  # unknown: did-you-mean and the registered names
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise ConfigError(f"environment '{name}' is {cls!r}, not an Environment subclass "
                          "(subclass rlfoundry.environments.Environment)")
    return cls


def check_environment_config(env_cfg) -> None:
    """Config-load checks of ``environment:``: the name resolves and ``args`` fit the
    constructor (named parameters, unless it takes ``**kwargs``)."""
    try:
        cls = environment_class(env_cfg.name)
    except ConfigError as e:
        raise ConfigError(f"environment.name: {e}") from None
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    named = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in env_cfg.args:
        if key not in named:
            raise ConfigError(f"environment.args.{key}: environment '{env_cfg.name}' takes no "
                              f"argument '{key}'{did_you_mean(key, named)}; its arguments: "
                              f"{', '.join(named) or '(none)'}")
    missing = [p.name for p in params if p.default is p.empty and p.name not in env_cfg.args
               and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if missing:
        raise ConfigError(f"environment.args: environment '{env_cfg.name}' needs "
                          f"{', '.join(missing)}; add them under environment.args")


def build_environment(env_cfg) -> Environment:
    """An instance of the configured environment (``args`` as keyword arguments)."""
    check_environment_config(env_cfg)
    cls = environment_class(env_cfg.name)
    try:
        return cls(**env_cfg.args)
    except Exception as e:
        raise ConfigError(f"environment '{env_cfg.name}': building it with environment.args "
                          f"{env_cfg.args} raised {type(e).__name__}: {e}") from e


def episode_settings(env_cfg, on_error: str) -> EpisodeSettings:
    """The runner's settings from ``environment:`` and ``algorithm.reward_error``."""
    return EpisodeSettings(max_turns=env_cfg.max_turns, max_total_tokens=env_cfg.max_total_tokens,
                           step_timeout=env_cfg.step_timeout, on_error=on_error,
                           stop_strings=list(env_cfg.stop_strings), workers=env_cfg.workers)


def row_of(example: Any) -> dict[str, Any]:
    """What ``env.reset`` receives for a prompt row: ``{"prompt": ..., **other columns}``."""
    return {"prompt": example.prompt, **example.extras}
