"""The environment contract for multi-turn GRPO episodes.

An episode starts from a data row and alternates model turns with environment answers:

    start = env.reset(row)                      # first messages (chat) and the episode state
    loop:  the model writes one turn (decoded text)
           step = env.step(state, turn_text)    # observation messages, optional reward, done
    final = env.final_reward(state, turn_rewards)

The environment sees text, never token ids or tensors: the episode runner (stage 1-2 of the
rollout, see ``rlfoundry.environments.episodes``) renders messages with the chat template,
generates, decodes, and masks every non-model token out of the loss. ``state`` is whatever
the environment wants (it is returned by ``reset`` and threaded through ``step``), so one
environment object serves a whole batch of concurrent episodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rlfoundry.registry import Registry

Message = dict[str, Any]  # {"role": "user"|"assistant"|"tool"|"system", "content": str, ...}


@dataclass
class EpisodeStart:
    """What ``reset`` returns: the conversation so far and the environment's own state."""

    messages: list[Message]
    state: Any = None


@dataclass
class EnvStep:
    """What ``step`` returns after one model turn.

    ``observation`` are the messages appended after the model's turn (e.g. one
    ``{"role": "tool", "content": ...}``); empty when the episode ends. ``reward`` is this
    turn's reward (None: none given). ``metrics`` are per-turn numbers summed over the episode
    and logged (e.g. ``{"tool_calls": 1, "tool_errors": 0}``)."""

    observation: list[Message] = field(default_factory=list)
    reward: float | None = None
    done: bool = False
    state: Any = None
    metrics: dict[str, float] = field(default_factory=dict)


class Environment:
    """Base class of environments. Subclass, implement ``reset`` and ``step``, and register:

        @register_environment("my_game")
        class MyGame(Environment):
            def reset(self, row): return EpisodeStart([{"role": "user", "content": row["prompt"]}])
            def step(self, state, text): return EnvStep(done=True, reward=float("42" in text))

    ``__init__`` receives the YAML ``environment.args`` as keyword arguments."""

    def reset(self, row: Mapping[str, Any]) -> EpisodeStart:
        raise NotImplementedError

    def step(self, state: Any, text: str) -> EnvStep:
        raise NotImplementedError

    def final_reward(self, state: Any, turn_rewards: list[float | None]) -> float | None:
        """The episode's environment reward: by default the sum of the given turn rewards
        (None when no turn gave one). Registered reward functions are added on top."""
        given = [r for r in turn_rewards if r is not None]
        return sum(given) if given else None


ENVIRONMENTS: Registry[type[Environment]] = Registry("environment")


def register_environment(name: str, cls: type[Environment] | None = None, *, override: bool = False):
    """Register an :class:`Environment` subclass under ``name`` (usable as a decorator)."""
    return ENVIRONMENTS.register(name, cls, override=override)
