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
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlfoundry.models.lora import is_peft
from rlfoundry.ops.lm_head import TokenLogprobs, response_embeddings, token_logprobs
from rlfoundry.ops.packed import packed_token_logprobs
from rlfoundry.training import distributed

logger = logging.getLogger(__name__)


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


def pair_token_logprobs(model, batch: dict, *, return_hidden: bool = False) -> TokenLogprobs:
    """Token log-probs of a collated preference batch as ``2B`` sequences (chosen of pairs
    ``0..B-1``, then their rejected), in either layout: ``2B`` rows
    (:func:`~rlfoundry.data.collate_preference`; columns aligned with ``input_ids[:, 1:]``) or
    packed rows of one or more pairs (:func:`~rlfoundry.data.collate_preference_packed`, run
    by :func:`~rlfoundry.ops.packed.packed_token_logprobs` under ``batch["attention"]``,
    the ``model.attention`` setting; column ``j``
    is the sequence's ``j``-th scored token). ``hidden`` (when asked) is the model's last
    hidden state of the batch's own rows. Differentiable when grad is on."""
    if "packed" in batch:  # padding-free 2B sequences: outputs in the 2B-row layout
        return packed_token_logprobs(model, batch["packed"], batch.get("attention", "auto"),
                                     return_hidden=return_hidden)
    if "segment_ids" not in batch:
        param = next(model.parameters())
        return token_logprobs(model, batch["input_ids"].to(param.device),
                              batch["attention_mask"].to(param.device),
                              batch["loss_mask"].to(param.device), return_hidden=return_hidden)
    return packed_token_logprobs(model, batch, batch.get("attention", "auto"),
                                 return_hidden=return_hidden)


def pair_response_embeddings(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    """``[2B, H]`` mean last hidden state over each sequence's response tokens, for the
    ``hidden`` of :func:`pair_token_logprobs` in either layout."""
    if "segment_ids" not in batch:
        return response_embeddings(hidden, batch["loss_mask"])
    seq = batch["token_sequence"].to(hidden.device).flatten()
    keep = seq >= 0
    flat = hidden.reshape(-1, hidden.shape[-1])[keep]
    rows = 2 * batch["index"].numel()
    sums = flat.new_zeros(rows, flat.shape[-1]).index_add_(0, seq[keep], flat)
    counts = torch.bincount(seq[keep], minlength=rows).to(flat.dtype).clamp(min=1)
    return sums / counts[:, None]


def pair_logps(model, batch: dict) -> torch.Tensor:
    """Summed response log-probs of the ``2B`` sequences of a preference batch (either layout)."""
    return pair_token_logprobs(model, batch).sequence_sums()


@torch.no_grad()
def sequence_logps(ref: torch.nn.Module | AdapterDisabled, batch: dict) -> torch.Tensor:
    """Summed reference log-probs of each sequence of a collated preference batch ([2B])."""
    with reference_module(ref) as model:
        return pair_logps(model, batch)


def _read_cache(path: Path) -> torch.Tensor | None:
    """The cached table at ``path`` (safetensors: never unpickled), or None when it is absent
    or unreadable (then it is recomputed and rewritten)."""
    if not path.is_file():
        return None
    try:
        return load_file(str(path))["values"]
    except Exception as e:  # safetensors raises its own type for a damaged file
        logger.warning("reference cache %s is unreadable (%s: %s); recomputing it",
                       path, type(e).__name__, e)
        return None


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
        path = Path(cache_dir) / f"reference_logps_{key}.safetensors"
        cached = _read_cache(path)
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
            save_file({"values": values}, str(tmp))
            tmp.replace(path)
        return cls(values, path)

    def lookup(self, index: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.values[index.cpu()].to(device)
        return rows[:, 0], rows[:, 1]
