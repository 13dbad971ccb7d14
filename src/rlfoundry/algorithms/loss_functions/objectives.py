"""Auxiliary objectives: small registered losses to add next to DPO or GRPO.

Each is a loss function like any other (usable alone, as a ``composite`` component, or
through ``multi_objective_dpo`` / ``multi_objective_grpo``). They read the token-level view
both trainers provide:

- ``model_outputs["logprobs"]`` ``[N, T]`` response-token log-probs (grad) and
  ``batch["response_mask"]`` ``[N, T]``; labels are ``batch["input_ids"][:, 1:]``;
- ``batch["is_chosen"]`` ``[N]`` in preference batches (rows 0..B-1 chosen, B..2B-1
  rejected): objectives about "the response to produce" (nll, fluency, coherence) use only
  chosen rows there, and every row in GRPO batches;
- ``model_outputs["response_embeddings"]`` ``[N, H]`` (mean-pooled last hidden states of the
  response, with grad) when the objective lists ``"hidden"`` in ``requires``;
- ``batch["group_id"]`` ``[N]`` (GRPO) and ``batch["target_embeddings"]`` ``[N, H]``.

All are means over sequences (``reduction = "sequence"``) except ``nll`` (tokens). An empty
micro-batch gives a zero loss in the graph and ``empty_batches = 1`` (``empty.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from rlfoundry.algorithms.loss_functions.empty import empty_batch_result, is_empty
from rlfoundry.algorithms.loss_functions.nll import NLLLossFn
from rlfoundry.algorithms.loss_functions.registry import LossFunctionRegistry
from rlfoundry.errors import ConfigError, DataError


def _options(cfg: Mapping[str, Any] | None, name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    cfg = {k: v for k, v in dict(cfg or {}).items() if k != "type"}
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ConfigError(f"algorithm.loss: the {name} objective does not take {unknown}; "
                          f"options: {sorted(defaults) or 'none'}")
    return {**defaults, **cfg}


def _need(mapping: Mapping[str, Any], key: str, where: str, why: str) -> Any:
    if mapping.get(key) is None:
        raise DataError(f"{where}['{key}'] is missing: {why}")
    return mapping[key]


def target_rows(batch: Mapping[str, Any], n: int, device) -> torch.Tensor:
    """Rows holding the response to produce: chosen rows of a preference batch, else all."""
    chosen = batch.get("is_chosen")
    if chosen is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return torch.as_tensor(chosen, device=device).bool()


def per_sequence_mean_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N]`` mean negative log-likelihood per response token of each row."""
    m = mask.to(logprobs.dtype)
    return -(logprobs.masked_fill(~mask.bool(), 0.0) * m).sum(-1) / m.sum(-1).clamp(min=1)


class _Objective:
    reduction = "sequence"
    requires_reference = False
    requires: frozenset[str] = frozenset()
    name = "objective"
    defaults: dict[str, Any] = {}

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        self.cfg = _options(cfg, self.name, self.defaults)

    def _token_view(self, batch, model_outputs):
        logprobs = _need(model_outputs, "logprobs", "model_outputs",
                         f"the {self.name} objective needs per-token response log-probs [N, T]")
        mask = _need(batch, "response_mask", "batch", f"the {self.name} objective needs the response mask")
        return logprobs, mask.bool()


@LossFunctionRegistry.register("perplexity")
class PerplexityLossFn(NLLLossFn):
    """Token-mean NLL of the target responses (log-perplexity); chosen rows in DPO."""


@LossFunctionRegistry.register("fluency")
class FluencyLossFn(_Objective):
    """Mean over responses of their per-token NLL (each response weighs the same)."""

    name = "fluency"

    def __call__(self, batch, model_outputs):
        logprobs, mask = self._token_view(batch, model_outputs)
        if is_empty(logprobs):
            return empty_batch_result(self, logprobs)
        rows = target_rows(batch, logprobs.shape[0], logprobs.device)
        nll = per_sequence_mean_nll(logprobs[rows], mask[rows])
        loss = nll.mean() if nll.numel() else logprobs.sum() * 0
        return loss, {"loss": loss.detach()}


@LossFunctionRegistry.register("coherence")
class CoherenceLossFn(_Objective):
    """Std of token surprisal within each response: penalises abrupt likelihood spikes."""

    name = "coherence"

    def __call__(self, batch, model_outputs):
        logprobs, mask = self._token_view(batch, model_outputs)
        if is_empty(logprobs):
            return empty_batch_result(self, logprobs)
        rows = target_rows(batch, logprobs.shape[0], logprobs.device)
        lp, m = logprobs[rows].masked_fill(~mask[rows], 0.0), mask[rows].to(logprobs.dtype)
        n = m.sum(-1).clamp(min=1)
        mean = (lp * m).sum(-1) / n
        var = (((lp - mean.unsqueeze(-1)) ** 2) * m).sum(-1) / n
        std = torch.sqrt(var + 1e-8)
        loss = std.mean() if std.numel() else logprobs.sum() * 0
        return loss, {"loss": loss.detach()}


@LossFunctionRegistry.register("consistency")
class ConsistencyLossFn(_Objective):
    """Squared per-token drift of the target response's log-prob from the reference's."""

    name = "consistency"

    requires_reference = True

    def __call__(self, batch, model_outputs):
        if "policy_chosen_logps" in model_outputs:  # preference batch: per-sequence sums
            policy = model_outputs["policy_chosen_logps"]
            ref = _need(batch, "reference_chosen_logps", "batch", "consistency compares to the reference")
            counts = _need(batch, "chosen_token_counts", "batch", "consistency is per token")
            drift = (policy - ref.detach()) / counts.to(policy.dtype).clamp(min=1)
        else:
            logprobs, mask = self._token_view(batch, model_outputs)
            ref = _need(batch, "reference_logprobs", "batch",
                        "consistency compares to the reference (set a KL penalty or "
                        "reference_policy_kl_penalty so the trainer computes it)")
            m = mask.to(logprobs.dtype)
            delta = (logprobs - ref.detach()).masked_fill(~mask, 0.0)
            drift = (delta * m).sum(-1) / m.sum(-1).clamp(min=1)
        if is_empty(drift):
            return empty_batch_result(self, drift)
        loss = (drift ** 2).mean()
        return loss, {"loss": loss.detach(), "drift_abs": drift.detach().abs().mean()}


def phrase_positions(labels: torch.Tensor, mask: torch.Tensor, phrases: list[list[int]]) -> torch.Tensor:
    """Bool ``[N, T]``: response positions covered by an occurrence of any phrase's token ids."""
    hit = torch.zeros_like(mask, dtype=torch.bool)
    t = labels.shape[1]
    for ids in phrases:
        k = len(ids)
        if k == 0 or k > t:
            continue
        target = torch.tensor(ids, device=labels.device)
        windows = labels.unfold(1, k, 1)  # [N, T-k+1, k]
        starts = (windows == target).all(-1) & mask.unfold(1, k, 1).all(-1)
        for j in range(k):
            hit[:, j:j + starts.shape[1]] |= starts
    return hit


@LossFunctionRegistry.register("safety")
class SafetyLossFn(_Objective):
    """Unlikelihood (-log(1 - p)) on response tokens of configured banned phrases."""

    name = "safety"

    defaults = {"banned_phrases": []}

    def __init__(self, cfg=None) -> None:
        super().__init__(cfg)
        phrases = self.cfg["banned_phrases"]
        if not isinstance(phrases, list) or not phrases or not all(isinstance(p, str) and p for p in phrases):
            raise ConfigError("algorithm.loss.banned_phrases: the safety objective needs a non-empty "
                              "list of phrases (strings) to make unlikely")
        self.phrase_ids: list[list[int]] | None = None

    def bind_tokenizer(self, tokenizer) -> None:
        """Tokenise the phrases as they appear inside a response (the trainer calls this)."""
        self.phrase_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in self.cfg["banned_phrases"]]

    def __call__(self, batch, model_outputs):
        if self.phrase_ids is None:
            raise DataError("the safety objective has no tokenizer: call bind_tokenizer(tokenizer) "
                            "first (trainers do this)")
        logprobs, mask = self._token_view(batch, model_outputs)
        if is_empty(logprobs):
            return empty_batch_result(self, logprobs)
        labels = _need(batch, "input_ids", "batch", "safety finds the phrases in the tokens")[:, 1:]
        labels = labels[:, : logprobs.shape[1]]
        hit = phrase_positions(labels, mask, self.phrase_ids)
        p = torch.exp(logprobs.masked_fill(~hit, -torch.inf)).clamp(max=1 - 1e-6)
        unlikelihood = -torch.log1p(-p).masked_fill(~hit, 0.0)
        loss = unlikelihood.sum(-1).mean()
        return loss, {"loss": loss.detach(), "banned_token_frac":
                      hit.sum().double() / mask.sum().clamp(min=1)}


@LossFunctionRegistry.register("diversity")
class DiversityLossFn(_Objective):
    """Negative mean cosine distance between response embeddings of the same group."""

    name = "diversity"

    requires = frozenset({"hidden"})

    def __call__(self, batch, model_outputs):
        emb = _need(model_outputs, "response_embeddings", "model_outputs",
                    "diversity compares response representations [N, H]")
        if is_empty(emb):
            return empty_batch_result(self, emb)
        groups = batch.get("group_id")
        groups = torch.zeros(emb.shape[0], device=emb.device) if groups is None else groups.to(emb.device)
        unit = F.normalize(emb.float(), dim=-1)
        distance = 1 - unit @ unit.T
        same = (groups.unsqueeze(0) == groups.unsqueeze(1))
        same.fill_diagonal_(False)
        pairs = same.sum()
        mean_distance = (distance * same).sum() / pairs.clamp(min=1)
        loss = -mean_distance
        return loss, {"loss": loss.detach(), "mean_distance": mean_distance.detach()}


@LossFunctionRegistry.register("quality")
class QualityLossFn(_Objective):
    """Cosine distance between each response's embedding and its target's embedding."""

    name = "quality"

    requires = frozenset({"hidden", "targets"})
    defaults = {"target_column": "answer"}

    def __call__(self, batch, model_outputs):
        emb = _need(model_outputs, "response_embeddings", "model_outputs",
                    "quality compares response representations [N, H] to targets")
        if is_empty(emb):
            return empty_batch_result(self, emb)
        targets = _need(batch, "target_embeddings", "batch",
                        f"quality needs target embeddings (the GRPO trainer embeds the data column "
                        f"'{self.cfg['target_column']}')")
        rows = torch.as_tensor(batch.get("has_target", torch.ones(emb.shape[0], dtype=torch.bool)),
                               device=emb.device).bool()
        cos = F.cosine_similarity(emb.float()[rows], targets.to(emb.device).float()[rows], dim=-1)
        loss = (1 - cos).mean() if cos.numel() else emb.sum() * 0
        return loss, {"loss": loss.detach()}


OBJECTIVES = ("perplexity", "nll", "fluency", "coherence", "consistency", "safety", "diversity", "quality")
