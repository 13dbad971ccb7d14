"""The multi-turn episode runner: stages 1-2 of a GRPO rollout for an :class:`Environment`.

For each data row, ``G`` episodes run side by side (all rows' episodes in one batch):

1. ``env.reset(row)`` gives the first messages; they are rendered with the chat template
   (plus the assistant header) into the first prompt.
2. Each turn, the rollout backend (any :class:`~rlfoundry.rollout.RolloutBackend`: HF or
   vLLM) generates one model turn for every running episode; a turn ends at EOS, a stop
   string, ``sampling.max_new_tokens`` or the episode's token budget. The sampled ids are
   kept as they are (never re-tokenized) and decoded for the environment.
3. ``env.step(state, text)`` runs for every running episode concurrently, each within
   ``step_timeout``. A step that raises, times out or returns something that is not a valid
   :class:`EnvStep` follows ``reward_error``: ``raise`` stops with an error naming the
   sample, ``zero`` ends the episode with environment reward 0, ``skip`` ends it with no
   reward (the sample is not trained on).
4. The observation messages (plus the next assistant header) are rendered and appended as
   environment tokens (``model_mask`` 0). The episode ends when the environment says done,
   after ``max_turns`` model turns, or when the next observation or turn would pass
   ``max_total_tokens``; an episode that did not end by ``done``, or whose last turn was cut
   at a length limit, is ``truncated`` (so DAPO's overlong masking applies).
5. ``env.final_reward(state, turn_rewards)`` gives the episode's environment reward.

The result is a plain :class:`~rlfoundry.rollout.Rollout` with ``model_mask`` and
``episodes`` set: the scoring stage adds the registered reward functions on each episode's
final model turn, and the update stage masks environment tokens out of the loss.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from rlfoundry.data.prompts import check_messages
from rlfoundry.environments.base import Environment, EpisodeStart
from rlfoundry.environments.render import observation_ids, prompt_ids
from rlfoundry.environments.steps import (
    DEFAULT_WORKERS,
    CallOutcome,
    check_env_step,
    check_reward,
    run_calls,
)
from rlfoundry.errors import DataError, EnvironmentStepError
from rlfoundry.rollout.base import EpisodeStats, Rollout, RolloutBackend, SamplingParams
from rlfoundry.user_code import describe_exit, raise_site

logger = logging.getLogger(__name__)
ON_ERROR = ("raise", "zero", "skip")
CHARS_PER_TOKEN_BOUND = 16  # an observation longer than this x the budget cannot fit: not tokenized


@dataclass
class EpisodeSettings:
    """How episodes run (the ``environment:`` config section, less the name and args)."""

    max_turns: int = 4
    max_total_tokens: int | None = None  # tokens after the first prompt (model + environment)
    step_timeout: float | None = None
    on_error: str = "raise"  # algorithm.reward_error
    stop_strings: list[str] = field(default_factory=list)  # added to sampling.stop_strings
    workers: int = DEFAULT_WORKERS

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")


@dataclass
class _Episode:
    """One running episode (the runner's private, mutable bookkeeping)."""

    row: int
    sample_id: str
    state: Any
    messages: list[dict[str, Any]]
    prompt: list[int]
    budget: int  # tokens it may still add after the prompt
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    turns: int = 0
    turn_rewards: list[float | None] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    last_text: str = ""
    last_cut: bool = False  # the last model turn ended at a length limit
    outcome: str | None = None  # set when finished
    error: str | None = None
    reason: str | None = None
    env_reward: float | None = None

    def context(self) -> list[int]:
        return self.prompt + self.ids

    def left(self) -> int:
        return self.budget - len(self.ids)


class EpisodeRunner:
    """Runs ``G`` episodes per row with ``env`` and ``backend``; :meth:`run` gives a Rollout.

    ``context_limit`` (the model's context, None: unknown) also bounds each episode;
    ``eos_ids`` are the end tokens whose text closes an assistant turn (default: the
    tokenizer's EOS and the backend's ``eos_ids``)."""

    def __init__(self, env: Environment, backend: RolloutBackend, tokenizer, params: SamplingParams,
                 settings: EpisodeSettings | None = None, *, context_limit: int | None = None,
                 eos_ids: Sequence[int] | None = None) -> None:
        self.env, self.backend, self.tokenizer = env, backend, tokenizer
        self.tools = getattr(env, "tools", None) or None  # tool schemas for the chat template
        self.settings = settings or EpisodeSettings()
        stops = list(dict.fromkeys([*params.stop_strings, *self.settings.stop_strings]))
        self.params = replace(params, stop_strings=stops)
        self.context_limit = context_limit
        eos = set(eos_ids or []) | set(getattr(backend, "eos_ids", None) or [])
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        self.eos_ids = eos

    # ---- the loop -------------------------------------------------------------------------
    def run(self, rows: Sequence[Mapping[str, Any]], locations: Sequence[str], num_samples: int,
            generator: torch.Generator | list[torch.Generator] | None = None,
            params: SamplingParams | None = None) -> Rollout:
        """``num_samples`` episodes of each row (row-major, like a single-turn rollout);
        ``locations[i]`` names row ``i`` in errors (sample ids ``<location>#<k>``)."""
        start = time.perf_counter()
        params = replace(params, stop_strings=self.params.stop_strings) if params else self.params
        episodes = [self._reset(dict(rows[r]), r, f"{locations[r]}#{k}")  # a copy per episode
                    for r in range(len(rows)) for k in range(num_samples)]
        for turn in range(self.settings.max_turns):
            for ep in episodes:
                if ep.outcome is None and ep.left() < 1:
                    self._finish(ep, "token_budget")
            running = [ep for ep in episodes if ep.outcome is None]
            if not running:
                break
            self._model_turn(running, episodes, turn == 0, num_samples, params, generator)
            self._env_turn(running, last=turn == self.settings.max_turns - 1)
        self._final_rewards([ep for ep in episodes if ep.outcome != "error"])
        return Rollout(
            prompt_index=[ep.row for ep in episodes], prompt_ids=[ep.prompt for ep in episodes],
            completion_ids=[ep.ids for ep in episodes],
            sampling_logprobs=[ep.logps for ep in episodes],
            truncated=[ep.outcome in ("max_turns", "token_budget") or ep.last_cut for ep in episodes],
            seconds=time.perf_counter() - start, model_mask=[ep.mask for ep in episodes],
            episodes=[EpisodeStats(turns=ep.turns, outcome=ep.outcome or "done", env_reward=ep.env_reward,
                                   error=ep.error, metrics=ep.metrics, final_text=ep.last_text,
                                   messages=ep.messages, error_reason=ep.reason) for ep in episodes])

    def _reset(self, row: Mapping[str, Any], index: int, sample_id: str) -> _Episode:
        """A fresh episode of ``row``; ``reset`` failing is an error of the data or the
        environment (not of the policy), so it always raises, naming the row."""
        try:
            start = self.env.reset(row)
        except Exception as e:
            raise EnvironmentStepError(f"environment reset {describe_exit(e)} on {sample_id} "
                                       f"at {raise_site(e)}; fix the environment or the row") from e
        if not isinstance(start, EpisodeStart):
            raise EnvironmentStepError(f"environment reset returned {type(start).__name__} on "
                                       f"{sample_id}, not an EpisodeStart(messages, state)")
        try:
            messages = check_messages(start.messages, f"reset on {sample_id}", "messages")
        except DataError as e:
            raise EnvironmentStepError(str(e)) from None
        if not messages:
            raise EnvironmentStepError(f"environment reset returned no messages on {sample_id}")
        ids = prompt_ids(self.tokenizer, messages, f"episode {sample_id}", self.tools)
        budget = self.settings.max_total_tokens or math.inf
        if self.context_limit is not None:
            budget = min(budget, self.context_limit - len(ids))
        return _Episode(index, sample_id, start.state, messages, ids,
                        int(budget) if budget != math.inf else 2**62)

    def _model_turn(self, running: list[_Episode], episodes: list[_Episode], first: bool, g: int,
                    params: SamplingParams, generator) -> None:
        """One generated turn for each running episode (the first turn shares each row's
        prompt across its ``g`` episodes, as a single-turn rollout does)."""
        longest = max(ep.left() for ep in running)
        turn_params = replace(params, max_new_tokens=max(1, min(params.max_new_tokens, longest)))
        if first and len(running) == len(episodes):
            prompts = [episodes[i].prompt for i in range(0, len(episodes), g)]
            out = self.backend.generate(prompts, g, turn_params, generator)
            order = episodes
        else:
            gens = generator
            if isinstance(generator, (list, tuple)):
                gens = [generator[ep.row] for ep in running]
            out = self.backend.generate([ep.context() for ep in running], 1, turn_params, gens)
            order = running
        for ep, ids, logps, cut in zip(order, out.completion_ids, out.sampling_logprobs, out.truncated):
            ids, logps = list(ids), list(logps)
            if len(ids) > ep.left():  # generated for a longer-budget episode in the same call
                ids, logps, cut = ids[:ep.left()], logps[:ep.left()], True
            ep.ids += ids
            ep.logps += [float(x) for x in logps]
            ep.mask += [1] * len(ids)
            ep.turns += 1
            ep.last_cut = bool(cut)
            ep.last_text = self.tokenizer.decode(ids, skip_special_tokens=True)
            ep.messages.append({"role": "assistant", "content": ep.last_text})

    def _env_turn(self, running: list[_Episode], last: bool) -> None:
        """``step`` on every running episode, then its observation or its end."""
        outcomes = run_calls([_bound(self.env.step, ep.state, ep.last_text) for ep in running],
                             self.settings.step_timeout, self.settings.workers)
        for ep, outcome in zip(running, outcomes):
            step = self._checked(ep, outcome, check_env_step, "step")
            if step is None:
                continue
            ep.state = step.state if step.state is not None else ep.state
            ep.turn_rewards.append(step.reward)
            for key, value in step.metrics.items():
                ep.metrics[key] = ep.metrics.get(key, 0.0) + value
            if step.done:
                self._finish(ep, "done")
            elif last:
                self._finish(ep, "max_turns")
            elif ep.last_cut and ep.left() < 1:
                self._finish(ep, "token_budget")
            else:
                self._observe(ep, step.observation)

    def _observe(self, ep: _Episode, observation: list[dict[str, Any]]) -> None:
        """Append the observation's tokens (and the next assistant header), or end the
        episode at its token budget when they do not leave room for another turn."""
        if sum(len(m["content"]) for m in observation) > CHARS_PER_TOKEN_BOUND * max(ep.left(), 1):
            self._finish(ep, "token_budget")
            return
        end = ep.ids[-1] if ep.ids and ep.ids[-1] in self.eos_ids and not ep.last_cut else None
        end_text = None if end is None else self.tokenizer.decode([end], skip_special_tokens=False)
        ids = observation_ids(self.tokenizer, ep.messages, end_text, observation, f"episode {ep.sample_id}",
                              self.tools)
        if len(ids) >= ep.left():
            self._finish(ep, "token_budget")
            return
        ep.ids += ids
        ep.logps += [0.0] * len(ids)
        ep.mask += [0] * len(ids)
        ep.messages += observation

    def _final_rewards(self, episodes: list[_Episode]) -> None:
        outcomes = run_calls([_bound(self.env.final_reward, ep.state, list(ep.turn_rewards))
                              for ep in episodes], self.settings.step_timeout, self.settings.workers)
        for ep, outcome in zip(episodes, outcomes):
            reward = self._checked(ep, outcome, lambda v: check_reward(v, "reward"), "final_reward")
            if ep.outcome != "error":
                ep.env_reward = reward

    def _checked(self, ep: _Episode, outcome: CallOutcome, check, what: str):
        """The checked value of a call, or None after applying ``reward_error`` to a failure."""
        if outcome.ok:
            try:
                return check(outcome.value)
            except DataError as e:
                outcome = CallOutcome(error=str(e), reason="bad_return")
        message = f"environment {what} {outcome.error} on {ep.sample_id} (turn {ep.turns})"
        if self.settings.on_error == "raise":
            raise EnvironmentStepError(f"{message}. Fix the environment, or set "
                                       "algorithm.reward_error to 'zero' or 'skip'")
        logger.warning("%s; the episode ends with %s", message,
                       "reward 0" if self.settings.on_error == "zero" else "no reward")
        ep.error, ep.reason = message, outcome.reason
        self._finish(ep, "error")
        ep.env_reward = 0.0 if self.settings.on_error == "zero" else math.nan
        return None

    @staticmethod
    def _finish(ep: _Episode, outcome: str) -> None:
        ep.outcome = outcome


def _bound(fn, *args):
    return lambda: fn(*args)
