"""Per-token advantages from process rewards: one reward per reasoning step, mapped onto the
completion's tokens (DeepSeekMath's process supervision, Shao et al. 2024, sec. 4.1.3).

Two pure stages:

1. :func:`token_steps` assigns each completion token the index of the step it belongs to.
   ``delimiter`` mode splits the completion text at a delimiter string (default a blank
   line, ``"\\n\\n"``): step ``k`` is the text after the ``k``-th delimiter, and a token
   belongs to the step in which its first character lies (a delimiter belongs to the step
   it ends). ``equal`` mode cuts the tokens into ``S`` contiguous spans of (nearly) equal
   length, for step rewards that come without a text layout.
2. :func:`process_advantages` normalises every step reward by the mean and (unbiased) std
   of all step rewards of its group, ``r~ = (r - mean_g) / (std_g + eps)``, and gives token
   ``t`` the sum of the normalised rewards of its own step and every later one (the
   return-to-go of the paper), so a token is credited for the steps it leads to.

The result, one ``[T_i]`` tensor per sample, is what the GRPO losses accept as per-token
advantages ``[B, T]`` (see ``loss_functions/grpo.py``; ``gspo`` needs ``[B]``).
The GRPO trainer uses them for ``algorithm.advantage.estimator: process``
(``algorithms/grpo_process.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rlfoundry.errors import DataError

STEP_MODES: tuple[str, ...] = ("delimiter", "equal")


def token_steps_from_text(pieces: Sequence[str], delimiter: str = "\n\n") -> list[int]:
    """Step index of each token, given the decoded text of each token (``pieces``)."""
    if not delimiter:
        raise DataError("process rewards: the step delimiter must be a non-empty string")
    text = "".join(pieces)
    ends, start = [], 0  # character positions where a new step starts
    while (found := text.find(delimiter, start)) != -1:
        start = found + len(delimiter)
        ends.append(start)
    steps, pos, k = [], 0, 0
    for piece in pieces:
        while k < len(ends) and ends[k] <= pos:
            k += 1
        steps.append(k)
        pos += len(piece)
    return steps


def token_steps_equal(num_tokens: int, num_steps: int) -> list[int]:
    """Step index of each of ``num_tokens`` tokens cut into ``num_steps`` equal spans."""
    if num_steps <= 0:
        raise DataError(f"process rewards: need at least one step reward, got {num_steps}")
    return [min(t * num_steps // max(num_tokens, 1), num_steps - 1) for t in range(num_tokens)]


def process_advantages(step_rewards: Sequence[Sequence[float]], groups: Sequence[torch.Tensor],
                       token_steps: Sequence[Sequence[int]], *, eps: float = 1e-4,
                       sample_ids: Sequence[str] | None = None) -> list[torch.Tensor]:
    """Per-token advantages ``[T_i]`` (float64) of every sample from its step rewards.

    ``step_rewards[i]``: the rewards of sample ``i``'s steps in order; ``token_steps[i]``:
    each token's step index (:func:`token_steps_from_text` / :func:`token_steps_equal`);
    ``groups``: index tensors as for the outcome estimators. Samples in no group, and groups
    whose step rewards are all equal, get zeros. A token whose step index has no reward is a
    ``DataError`` naming the sample."""
    n = len(step_rewards)
    if len(token_steps) != n:
        raise DataError(f"process rewards: {n} samples of step rewards but {len(token_steps)} "
                        "of token steps")
    names = list(sample_ids) if sample_ids is not None else [f"sample {i}" for i in range(n)]
    for i, (rewards, steps) in enumerate(zip(step_rewards, token_steps)):
        bad = [s for s in steps if not 0 <= s < len(rewards)]
        if bad:
            raise DataError(f"process rewards: {names[i]} has {len(rewards)} step rewards but "
                            f"a token in step {bad[0]}; give one reward per step")
        if any(not math.isfinite(float(r)) for r in rewards):
            raise DataError(f"process rewards: {names[i]} has a non-finite step reward")
    out = [torch.zeros(len(s), dtype=torch.float64) for s in token_steps]
    for g in groups:
        idx = [int(i) for i in torch.as_tensor(g).tolist()]
        values = torch.tensor([float(r) for i in idx for r in step_rewards[i]],
                              dtype=torch.float64)
        if values.numel() < 2 or bool((values == values[0]).all()):
            continue
        mean, std = values.mean(), values.std()
        for i in idx:
            norm = (torch.tensor([float(r) for r in step_rewards[i]], dtype=torch.float64)
                    - mean) / (std + eps)
            to_go = norm.flip(0).cumsum(0).flip(0)  # sum over this step and the later ones
            out[i] = to_go[torch.tensor(token_steps[i], dtype=torch.long)] if token_steps[i] \
                else out[i]
    return out
