"""Stage 4 of a GRPO rollout: update. The samples a step trains on
(:class:`~rlfoundry.algorithms.grpo_grouping.SelectedSamples`) become a :class:`TrainingBuffer`:
right-padded token ids and masks, the engine's sampling log-probs, advantages and returns,
then the old/reference log-probs the trainer adds; :meth:`TrainingBuffer.collate` cuts it
into the micro-batch dicts the loss sees (the public ``batch`` contract).

The buffer is plain data (tensors, lists, numbers) and checkpoints as a plain dict
(:meth:`TrainingBuffer.to_state`). It also reads like the dict it used to be
(``buffer["advantages"]``, ``"old_logprobs" in buffer``), for code written against that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch

from rlfoundry.algorithms.grpo_grouping import SelectedSamples
from rlfoundry.data.padding import pad_prompt_completions
from rlfoundry.errors import DataError
from rlfoundry.ops.lm_head import token_logprobs
from rlfoundry.training.sampler import length_blocks

# [N, D] tensors that are not aligned with the token positions
_NOT_SEQUENCE = frozenset({"target_embeddings"})


@dataclass
class TrainingBuffer:
    """Stage-4 record: one rollout batch, ``N`` samples padded to ``T`` tokens.

    Sequence-aligned tensors are ``[N, T]`` (ids, masks) or ``[N, T - 1]`` (log-probs, aligned
    with the labels ``input_ids[:, 1:]``). Optional fields are None when absent."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor  # 1 on tokens the model sampled (not prompts, env answers, padding)
    sampling_logprobs: torch.Tensor  # the engine's log-probs at sampling time
    advantages: torch.Tensor  # [N] float32, or [N, T - 1] per token (estimator: process)
    returns: torch.Tensor  # [N] float32: the rewards
    truncated: torch.Tensor  # [N] bool: no EOS within max_new_tokens
    responses: list[str]
    prompts: list[Any]
    group_id: torch.Tensor  # [N] each sample's group in the rollout
    num_groups: int = 0  # groups among the trained samples
    num_grouped: int = 0  # trained samples
    old_logprobs: torch.Tensor | None = None  # the policy at rollout time (num_iterations > 1)
    reference_logprobs: torch.Tensor | None = None
    target_embeddings: torch.Tensor | None = None  # quality objective: [N, D]
    has_target: torch.Tensor | None = None

    @classmethod
    def from_selection(cls, selection: SelectedSamples, pad_id: int) -> TrainingBuffer:
        """Right-padded tensors of the selected samples (no old/reference log-probs yet)."""
        picked = [(selection.rounds[k].scored, selection.rounds[k], i) for k, i in selection.samples]
        prompts = [s.rollout.prompt_ids[i] for s, _, i in picked]
        completions = [s.rollout.completion_ids[i] for s, _, i in picked]
        input_ids, attention, loss_mask = pad_prompt_completions(prompts, completions, pad_id)
        for k, (s, _, i) in enumerate(picked):  # episodes: environment tokens are not trained
            if s.rollout.model_mask is not None:
                start = len(prompts[k])
                loss_mask[k, start:start + len(completions[k])] = torch.tensor(s.rollout.token_mask(i))
        sampling = torch.zeros((len(picked), input_ids.shape[1] - 1), dtype=torch.float32)
        for k, (s, _, i) in enumerate(picked):
            start = len(prompts[k])
            sampling[k, start - 1: start - 1 + len(completions[k])] = torch.tensor(
                s.rollout.sampling_logprobs[i])
        group_id = selection.group_id()
        advantages = torch.stack([g.advantages[i] for _, g, i in picked]).float()
        if any(g.token_advantages is not None for _, g, _ in picked):
            advantages = token_aligned(picked, prompts, sampling.shape)
        return cls(
            input_ids=input_ids, attention_mask=attention, loss_mask=loss_mask,
            sampling_logprobs=sampling, advantages=advantages,
            returns=torch.stack([s.rewards[i] for s, _, i in picked]).float(),
            truncated=torch.tensor([s.rollout.truncated[i] for s, _, i in picked]),
            responses=[s.responses[i] for s, _, i in picked],
            prompts=[s.prompts[i] for s, _, i in picked],
            group_id=group_id, num_groups=int(group_id.unique().numel()), num_grouped=len(picked))

    # ---- dict-style reading (the buffer's former shape) -----------------------------------
    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def items(self) -> Iterator[tuple[str, Any]]:
        return ((k, getattr(self, k)) for k in self.keys())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.keys()

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self else default

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    # ---- checkpoints ----------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Plain containers only (tensors, lists, numbers, strings) for the checkpoint."""
        return dict(self.items())

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> TrainingBuffer | None:
        return None if state is None else cls(**state)

    # ---- micro-batches --------------------------------------------------------------------
    def lengths(self) -> list[int]:
        """Each sample's unpadded length (prompt + completion)."""
        return self.attention_mask.sum(-1).tolist()

    def collate(self, indices: list[int], valid_mask: Callable[[dict], torch.Tensor] | None = None
                ) -> dict[str, Any]:
        """The micro-batch of rows ``indices``, trimmed to its longest row: every field by
        name, plus ``response_mask`` ``[B, T - 1]``, ``num_sequences`` and ``num_tokens``
        (``valid_mask(batch).sum()``, or the response tokens)."""
        idx = torch.tensor(indices)
        full = self.input_ids.shape[1]
        width = int(self.attention_mask[idx].sum(-1).max())
        batch: dict[str, Any] = {}
        for key, value in self.items():
            if isinstance(value, list):
                batch[key] = [value[i] for i in indices]
            elif not isinstance(value, torch.Tensor):  # rollout-level numbers (num_groups, ...)
                batch[key] = value
            elif value.dim() == 2 and key not in _NOT_SEQUENCE:  # [N, T] sequence-aligned
                batch[key] = value[idx, : width if value.shape[1] == full else width - 1]
            else:
                batch[key] = value[idx]
        batch["response_mask"] = batch["loss_mask"][:, 1:].bool()
        batch["num_sequences"] = len(indices)
        batch["num_tokens"] = int((valid_mask(batch) if valid_mask else batch["response_mask"]).sum())
        return batch


def token_aligned(picked: list[tuple[Any, Any, int]], prompts: list[list[int]],
                  shape: torch.Size) -> torch.Tensor:
    """Per-token advantages ``[N, T - 1]`` of the picked ``(scored, grouped, i)`` samples,
    aligned with the labels like the sampling log-probs (0 outside the completion)."""
    out = torch.zeros(shape, dtype=torch.float32)
    for k, (_, g, i) in enumerate(picked):
        if g.token_advantages is None:
            raise DataError(f"sample {i} of a round has no per-token advantages while others "
                            "have; every round of a step needs token_advantages")
        adv, start = g.token_advantages[i], len(prompts[k])
        out[k, start - 1: start - 1 + adv.numel()] = adv.float()
    return out


def rows_logprobs(module: torch.nn.Module, buffer: TrainingBuffer, rows: range, size: int,
                  device: torch.device, temperature: float) -> torch.Tensor:
    """Per-token log-probs ``[len(rows), T - 1]`` (on the CPU, detached) of the buffer's
    ``rows`` under ``module``, ``size`` rows per forward.

    The rows are grouped as the training micro-batches group them (sorted by length in blocks
    of ``size``, :func:`~rlfoundry.training.sampler.length_blocks`) and each forward is cut to
    its longest row: right padding past a chunk's longest row is never computed (it cannot
    change the log-probs of a causal model), where the buffer's full width ``T`` is the
    longest row of the whole rollout. Padding columns of the result stay 0."""
    width = buffer.input_ids.shape[1]
    out = torch.zeros((len(rows), width - 1))  # float32 unless the model's log-probs are wider
    lengths = buffer.attention_mask.sum(-1).tolist()
    order = length_blocks(list(rows), lengths, size)
    for k in range(0, len(order), size):
        chunk = order[k:k + size]
        idx = torch.tensor(chunk)
        w = max(int(lengths[i]) for i in chunk)
        lp = token_logprobs(module, buffer.input_ids[idx, :w].to(device),
                            buffer.attention_mask[idx, :w].to(device),
                            buffer.loss_mask[idx, :w].to(device), temperature=temperature)
        if lp.logprobs.dtype != out.dtype:
            out = out.to(torch.promote_types(out.dtype, lp.logprobs.dtype))
        out[idx - rows.start, : w - 1] = lp.logprobs.detach().to(out.dtype).cpu()
    return out
