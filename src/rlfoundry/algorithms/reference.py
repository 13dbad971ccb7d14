"""Reference log-probs for DPO: a frozen copy of the initial policy, or a table computed once.

``precompute: true`` runs the reference model over the whole data set once, caches the
per-sequence log-probs on disk under a key made of the model's and the data's fingerprints,
and frees the model, so training holds one model instead of two. A reference-free loss never
builds any of this.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import torch

from rlfoundry.ops.lm_head import token_logprobs


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


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
def sequence_logps(model, batch: dict) -> torch.Tensor:
    """Summed response log-probs for each row of a collated batch ([2B] for preference batches)."""
    device = next(model.parameters()).device
    out = token_logprobs(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                         batch["loss_mask"].to(device))
    return out.sequence_sums()


class ReferenceTable:
    """Per-example reference log-probs ``[N, 2]`` (chosen, rejected), computed once and cached."""

    def __init__(self, values: torch.Tensor, path: Path | None = None, from_cache: bool = False):
        self.values, self.path, self.from_cache = values, path, from_cache

    @classmethod
    def build(cls, model, batches, num_examples: int, cache_dir: Path, data_key: str) -> ReferenceTable:
        """``batches`` yields collated preference batches that carry an ``index`` tensor."""
        key = hashlib.sha256((model_fingerprint(model) + data_key).encode()).hexdigest()[:24]
        path = Path(cache_dir) / f"reference_logps_{key}.pt"
        if path.is_file():
            values = torch.load(path)
            if values.shape == (num_examples, 2):
                return cls(values, path, from_cache=True)
        model.eval()
        values = torch.full((num_examples, 2), float("nan"), dtype=torch.float64)
        for batch in batches:
            logps = sequence_logps(model, batch).double().cpu()
            b = batch["index"].numel()
            values[batch["index"], 0] = logps[:b]
            values[batch["index"], 1] = logps[b:]
        if torch.isnan(values).any():
            raise RuntimeError("reference precompute did not cover every example")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(values, tmp)
        tmp.replace(path)
        return cls(values, path)

    def lookup(self, index: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.values[index.cpu()].to(device)
        return rows[:, 0], rows[:, 1]
