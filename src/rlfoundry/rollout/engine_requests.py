"""What an inference engine is asked for, and how its answers become a ``Rollout``.

Pure functions shared by the colocated and the server vLLM backends, so both follow the HF
backend's semantics (``hf_sampler.py``):

- temperature 0 is greedy; ``top_k`` 0 and ``top_p`` 1 mean no filter;
- a completion ends at the first EOS token (kept in ``completion_ids``) or at the first token
  after which the decoded tail of the last 16 tokens contains a stop string (that token is
  kept too); otherwise it runs to ``max_new_tokens`` and is ``truncated``;
- each sample's log-probs are those of its sampled tokens under ``logits / temperature``.

Seeds: every prompt gets one request seed drawn from its ``torch.Generator`` (or, with one
generator for the call, one seed per prompt drawn from it in order), so a prompt's samples
depend on its generator alone, as with the HF backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rlfoundry.rollout.base import Rollout, SamplingParams

STOP_TAIL_TOKENS = 16  # the HF backend decodes this many trailing tokens to look for a stop string
SEED_HIGH = 2**62


@dataclass
class EngineSample:
    """One completion as an engine returned it (before the HF-compatible trimming)."""

    token_ids: list[int]
    logprobs: list[float]
    engine_stopped: bool  # the engine ended it (EOS or stop string), not max_tokens


def request_seeds(generator: torch.Generator | Sequence[torch.Generator], num_prompts: int,
                  greedy: bool) -> list[int | None]:
    """One engine seed per prompt (``None`` for greedy, which draws nothing, as in HF)."""
    if greedy:
        return [None] * num_prompts
    gens = list(generator) if isinstance(generator, (list, tuple)) else [generator] * num_prompts
    if len(gens) != num_prompts:
        raise ValueError(f"{len(gens)} generators for {num_prompts} prompts")
    return [int(torch.randint(SEED_HIGH, (1,), generator=g, device=g.device)) for g in gens]


def sampling_kwargs(params: SamplingParams, num_samples: int, seed: int | None,
                    eos_ids: Sequence[int]) -> dict:
    """Keyword arguments of ``vllm.SamplingParams`` (the same keys the OpenAI-compatible
    completions endpoint takes) for one prompt's ``num_samples`` samples. vLLM refuses n > 1
    when greedy: one sample is asked for and :func:`assemble_rollout` repeats it."""
    greedy = params.temperature <= 0
    return dict(
        n=1 if greedy else num_samples,
        temperature=0.0 if greedy else float(params.temperature),
        top_p=1.0 if greedy else float(params.top_p),
        top_k=0 if greedy else int(params.top_k or 0),
        max_tokens=int(params.max_new_tokens),
        seed=seed,
        stop=list(params.stop_strings) or None,
        stop_token_ids=sorted(eos_ids),
        include_stop_str_in_output=True,
        skip_special_tokens=True,
        logprobs=0,  # the sampled token's log-prob only
    )


def hit_stop(decode: Callable[[list[int]], str], tokens: list[int], stops: Sequence[str]) -> bool:
    """The HF backend's stop test: a stop string in the decoded tail of the last 16 tokens."""
    tail = decode(tokens[-STOP_TAIL_TOKENS:])
    return any(s in tail for s in stops)


def finish_sample(sample: EngineSample, eos_ids: set[int], stops: Sequence[str],
                  decode: Callable[[list[int]], str]) -> tuple[list[int], list[float], bool]:
    """``(completion_ids, logprobs, truncated)`` cut where the HF backend would have stopped.

    The engine stops at the same token for EOS and (almost always) for stop strings; this
    walk makes the cut, and the ``truncated`` flag, follow the HF rule exactly. When the
    engine ended a sample on a stop string the HF tail test misses (a stop string longer
    than 16 tokens), the engine's end is kept and the sample is not truncated."""
    ids: list[int] = []
    for t in sample.token_ids:
        ids.append(t)
        if t in eos_ids or (stops and hit_stop(decode, ids, stops)):
            return ids, list(sample.logprobs[:len(ids)]), False
    return ids, list(sample.logprobs[:len(ids)]), not sample.engine_stopped


def assemble_rollout(prompts: Sequence[list[int]], samples: Sequence[Sequence[EngineSample]],
                     num_samples: int, params: SamplingParams, eos_ids: set[int],
                     decode: Callable[[list[int]], str], seconds: float) -> Rollout:
    """A ``Rollout`` (prompt-major) from ``samples[i]``: the completions of ``prompts[i]``
    (a single greedy completion stands for all ``num_samples``, which would be equal)."""
    out = Rollout(prompt_index=[], prompt_ids=[], completion_ids=[], sampling_logprobs=[],
                  truncated=[], seconds=seconds)
    for i, (prompt, group) in enumerate(zip(prompts, samples)):
        if len(group) == 1 and num_samples > 1 and params.temperature <= 0:
            group = list(group) * num_samples
        if len(group) != num_samples:
            raise ValueError(f"the engine returned {len(group)} samples for prompt {i}, "
                             f"expected {num_samples}")
        for sample in group:
            ids, lps, truncated = finish_sample(sample, eos_ids, params.stop_strings, decode)
            out.prompt_index.append(i)
            out.prompt_ids.append(list(prompt))
            out.completion_ids.append(ids)
            out.sampling_logprobs.append(lps)
            out.truncated.append(truncated)
    return out


def resolve_eos_ids(tokenizer, given: Sequence[int] | None = None) -> set[int]:
    """The EOS ids the HF backend stops at (the tokenizer's, unless given)."""
    eos = given or [tokenizer.eos_token_id]
    return {int(e) for e in eos if e is not None}
