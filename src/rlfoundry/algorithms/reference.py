"""Reference log-probs: a frozen copy of the initial policy, the LoRA policy with its adapter
switched off, or (DPO) a table computed once.

With LoRA the base weights never change, so the reference is the policy itself under
``disable_adapter()``: no second model in memory. ``precompute: true`` runs the reference
over the whole data set once (each rank its share, then summed across ranks), caches the
per-sequence log-probs on disk under a key made of the model's and the data's fingerprints,
and frees the model, so training holds one model instead of two. A reference-free loss never
builds any of this.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from rlfoundry.models.lora import is_peft
from rlfoundry.ops.lm_head import token_logprobs
from rlfoundry.training import distributed


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


class AdapterDisabled:
    """The reference of a LoRA policy: the same module run with its adapter switched off."""

    def __init__(self, model: torch.nn.Module):
        self.model = model


def build_reference(model: torch.nn.Module) -> torch.nn.Module | AdapterDisabled:
    """A LoRA policy's own base weights, else a frozen copy of ``model`` as it is now."""
    return AdapterDisabled(model) if is_peft(model) else frozen_copy(model)


@contextmanager
def reference_module(ref: torch.nn.Module | AdapterDisabled) -> Iterator[torch.nn.Module]:
    """The module to run for reference log-probs (in eval mode for the block)."""
    model = ref.model if isinstance(ref, AdapterDisabled) else ref
    was_training = model.training
    model.eval()
    try:
        if isinstance(ref, AdapterDisabled):
            with model.disable_adapter():
                yield model
        else:
            yield model
    finally:
        model.train(was_training)


def model_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def examples_fingerprint(sequences: list[tuple[list[int], ...]]) -> str:
    h = hashlib.sha256()
    for seq in sequences:
        h.update(repr(seq).encode())
    return h.hexdigest()


@torch.no_grad()
def sequence_logps(ref: torch.nn.Module | AdapterDisabled, batch: dict) -> torch.Tensor:
    """Summed reference log-probs of each row of a collated batch ([2B] for preference batches)."""
    with reference_module(ref) as model:
        device = next(model.parameters()).device
        out = token_logprobs(model, batch["input_ids"].to(device),
                             batch["attention_mask"].to(device), batch["loss_mask"].to(device))
    return out.sequence_sums()


class ReferenceTable:
    """Per-example reference log-probs ``[N, 2]`` (chosen, rejected), computed once and cached."""

    def __init__(self, values: torch.Tensor, path: Path | None = None, from_cache: bool = False):
        self.values, self.path, self.from_cache = values, path, from_cache

    @classmethod
    def build(cls, ref, batches, num_examples: int, cache_dir: Path, data_key: str) -> ReferenceTable:
        """``batches`` yields collated preference batches (with an ``index`` tensor) covering
        this rank's share of the examples; the ranks' shares together cover each example once."""
        model = ref.model if isinstance(ref, AdapterDisabled) else ref
        key = hashlib.sha256((model_fingerprint(model) + data_key).encode()).hexdigest()[:24]
        path = Path(cache_dir) / f"reference_logps_{key}.pt"
        cached = torch.load(path) if path.is_file() else None
        usable = cached is not None and cached.shape == (num_examples, 2)
        if distributed.all_reduce_sum(torch.tensor([int(not usable)])).item() == 0:
            return cls(cached, path, from_cache=True)  # every rank found the cache
        values = torch.zeros((num_examples, 2), dtype=torch.float64)
        covered = torch.zeros(num_examples, dtype=torch.float64)
        for batch in batches:
            logps = sequence_logps(ref, batch).double().cpu()
            b = batch["index"].numel()
            values[batch["index"], 0] = logps[:b]
            values[batch["index"], 1] = logps[b:]
            covered[batch["index"]] += 1
        values, covered = distributed.all_reduce_sum(values), distributed.all_reduce_sum(covered)
        if not bool((covered == 1).all()):
            raise RuntimeError("reference precompute did not cover every example exactly once")
        if distributed.current().is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(values, tmp)
            tmp.replace(path)
        return cls(values, path)

    def lookup(self, index: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.values[index.cpu()].to(device)
        return rows[:, 0], rows[:, 1]
