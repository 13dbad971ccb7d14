"""GRPO trainer helpers the NeMo RL-style example code calls (docs/customization.md,
"Trainer helpers"): ``self.clip_ratio``, the grouping helpers (``random_grouping``,
``performance_grouping``, ``semantic_grouping``, ``form_groups_from_similarity``), the loss
helpers (``compute_grpo_loss``, ``compute_group_loss``), the dialogue helpers
(``extract_contexts``, ``encode_contexts``, ``form_dialogue_groups``,
``extract_dialogue_metrics``), group monitoring and the GRPO diagnostics.

Grouping helpers return a list of index tensors (full groups only; samples left over are not
trained that step) and default ``group_size`` to ``algorithm.group_size``, so the example
code's short calls (``self.performance_grouping(rewards)``) work. Any of them can be the
trainer's ``form_groups`` (``form_groups = GRPOTrainer.semantic_grouping``): the trainer
calls it by keyword with the round's context (``embeddings``, ``rewards``, ``batch_size``, ...).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F

from rlfoundry.algorithms.grouping import conversation_context
from rlfoundry.algorithms.seed_helpers import SeedHelpers
from rlfoundry.ops.lm_head import response_embeddings
from rlfoundry.training.metrics import WeightedMean
from rlfoundry.training.schedules import loss_components


def full_groups(order: torch.Tensor, group_size: int) -> list[torch.Tensor]:
    """Consecutive chunks of ``order`` of exactly ``group_size`` (a shorter tail is dropped)."""
    return [order[i:i + group_size] for i in range(0, len(order) - group_size + 1, group_size)]


class GRPOSeedHelpers(SeedHelpers):
    """Mixed into :class:`~rlfoundry.algorithms.grpo.GRPOTrainer`."""

    last_round: tuple[Any, torch.Tensor | None, dict[str, Any]] | None = None  # (grouped, embeddings, context)
    step_rollout_metrics: dict[str, Any] | None = None

    # ---- options -------------------------------------------------------------------------
    @property
    def clip_ratio(self) -> float:
        """The PPO clip range of the GRPO loss (``algorithm.clip_ratio``); assignable."""
        owner = self._clip_owner()
        return float(owner.cfg.get("clip_ratio", owner.clip_ratio_low)) if owner else 0.2

    @clip_ratio.setter
    def clip_ratio(self, value: float) -> None:
        owner = self._clip_owner()
        if owner is None:
            raise AttributeError("the configured loss has no clip range")
        owner.cfg["clip_ratio"] = owner.clip_ratio_low = owner.clip_ratio_high = float(value)

    def _clip_owner(self):
        return next((c for c in loss_components(self.loss_fn) if hasattr(c, "clip_ratio_low")), None)

    # ---- grouping ------------------------------------------------------------------------
    def random_grouping(self, batch_size: int, group_size: int | None = None) -> list[torch.Tensor]:
        """Random groups of ``group_size`` from ``batch_size`` samples (the trainer's seeded
        generator)."""
        gen = self.sampling_generator if self.sampling_generator.device.type == "cpu" else None
        return full_groups(torch.randperm(int(batch_size), generator=gen), group_size or self.group_size)

    def performance_grouping(self, rewards: torch.Tensor, batch_size: int | None = None,
                             group_size: int | None = None) -> list[torch.Tensor]:
        """Groups of samples with similar rewards (sorted best first, cut into groups)."""
        rewards = torch.as_tensor(rewards, dtype=torch.float32)[:batch_size]
        order = torch.argsort(torch.nan_to_num(rewards, nan=float("-inf")), descending=True)
        return full_groups(order, group_size or self.group_size)

    def semantic_grouping(self, embeddings: torch.Tensor, batch_size: int | None = None,
                          group_size: int | None = None) -> list[torch.Tensor]:
        """Groups of samples whose embeddings have high cosine similarity."""
        e = F.normalize(torch.as_tensor(embeddings).float()[:batch_size], dim=-1)
        return self.form_groups_from_similarity(e @ e.t(), group_size)

    def form_groups_from_similarity(self, similarity: torch.Tensor, group_size: int | None = None,
                                    batch_size: int | None = None) -> list[torch.Tensor]:
        """Greedy groups from an ``[N, N]`` similarity matrix (higher = more alike): each
        sample not yet grouped, in order, leads a group with the ``group_size - 1`` most
        similar samples not yet grouped. Every sample is grouped when ``group_size`` divides N."""
        sim = torch.as_tensor(similarity).float()
        n = int(batch_size or sim.shape[0])
        size = group_size or self.group_size
        free = torch.ones(n, dtype=torch.bool)
        groups = []
        for i in range(n):
            if not free[i] or int(free.sum()) < size:
                continue
            scores = sim[i, :n].clone()
            scores[~free] = float("-inf")
            scores[i] = float("inf")
            group = torch.argsort(scores, descending=True)[:size]
            free[group] = False
            groups.append(group)
        return groups

    def form_dialogue_groups(self, responses: list[str], batch_size: int | None = None,
                             group_size: int | None = None) -> list[torch.Tensor]:
        """Groups of samples whose conversation contexts are alike (``extract_contexts``,
        ``encode_contexts``, ``form_groups_from_similarity``)."""
        emb = self.encode_contexts(self.extract_contexts(responses))
        return self.form_groups_from_similarity(emb @ emb.t(), group_size, batch_size)

    def extract_contexts(self, responses: list[str], prompts: list[Any] | None = None) -> list[str]:
        """Each response's conversation context: the chat before its last user turn (a plain
        prompt: itself). ``prompts`` default to those of the batch in flight or of the round
        being grouped, whichever has one prompt per response."""
        if prompts is None:
            batch = self.forward_in_flight[0] if self.forward_in_flight else {}
            rounds = self.last_round[2] if self.last_round else {}
            prompts = next((p for p in (batch.get("prompts"), rounds.get("prompts"))
                            if p is not None and len(p) == len(responses)), None)
        if prompts is None:
            raise ValueError(f"extract_contexts: no prompts for {len(responses)} responses; pass "
                             f"prompts=[...] (one per response)")
        return [conversation_context(p) for p in prompts]

    def encode_contexts(self, contexts: list[str]) -> torch.Tensor:
        """Unit-norm embeddings ``[N, D]`` of texts (``algorithm.grouping.embedding``)."""
        return F.normalize(self.embed_texts(list(contexts)).float(), dim=-1)

    def embed(self, rollout, prompts: list[Any] | None = None,
              responses: list[str] | None = None) -> torch.Tensor:
        """Sample embeddings ``[N, D]`` for grouping (``algorithm.grouping.embedding``)."""
        return self.embedder.samples(rollout, prompts, responses)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Embeddings ``[len(texts), D]`` of arbitrary texts from the configured source."""
        return self.embedder.texts(texts)

    # ---- losses --------------------------------------------------------------------------
    def compute_grpo_loss(self, policy_logps, value_preds=None, advantages=None,
                          old_policy_logps=None, returns=None, groups=None) -> torch.Tensor:
        """The configured GRPO loss (``algorithm.loss``) on the micro-batch in flight, with
        the given token log-probs ``[B, T]`` and advantages ``[B]`` (and old log-probs,
        value predictions and returns when given). Its metrics: ``self.last_loss_metrics``."""
        batch = dict(self.forward_in_flight[0]) if self.forward_in_flight else {}
        if advantages is not None:
            batch["advantages"] = advantages
        if old_policy_logps is not None:
            batch["old_logprobs"] = old_policy_logps
        if returns is not None:
            batch["returns"] = returns
        batch.update(policy_logps=policy_logps, value_preds=value_preds)
        loss, metrics = self.loss_fn(batch, self.grpo_outputs(batch))
        self.last_loss_metrics = metrics
        return loss

    def compute_group_loss(self, groups, policy_logps: torch.Tensor) -> torch.Tensor:
        """Mean within-group variance of each response's mean token log-prob: a regulariser
        that keeps a group's responses equally likely. ``groups``: a list of index tensors
        or a group id per sample (``batch["group_id"]``)."""
        seq = policy_logps
        if policy_logps.dim() == 2:
            batch = self.forward_in_flight[0] if self.forward_in_flight else {}
            mask = batch.get("response_mask")
            mask = (mask if mask is not None and mask.shape == policy_logps.shape
                    else torch.ones_like(policy_logps, dtype=torch.bool)).to(policy_logps.dtype)
            seq = (policy_logps * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        if isinstance(groups, torch.Tensor) and groups.dim() == 1 and len(groups) == len(seq):
            groups = [torch.nonzero(groups == g).flatten() for g in groups.unique()]
        parts = [seq[torch.as_tensor(g, device=seq.device)].var() for g in groups if len(g) > 1]
        return torch.stack(parts).mean() if parts else seq.sum() * 0

    def extract_dialogue_metrics(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-sample dialogue scores of a batch: ``coherence`` (share of the reply's words
        found in its conversation), ``engagement`` (1 if the reply ends with "?" or "!") and
        ``logps`` (the reply's mean token log-prob, so the score losses have a gradient)."""
        responses, prompts = batch["responses"], batch.get("prompts") or [""] * len(batch["responses"])
        coherence, engagement = [], []
        for prompt, reply in zip(prompts, responses):
            words = re.findall(r"\w+", reply.lower())
            seen = set(re.findall(r"\w+", conversation_context(prompt).lower()))
            coherence.append(sum(w in seen for w in words) / max(len(words), 1))
            engagement.append(float(reply.rstrip().endswith(("?", "!"))))
        logps, mask = batch["policy_logps"], batch["response_mask"].to(batch["policy_logps"].dtype)
        return {"coherence": torch.tensor(coherence), "engagement": torch.tensor(engagement),
                "logps": (logps * mask).sum(-1) / mask.sum(-1).clamp(min=1)}

    def grpo_outputs(self, batch: dict[str, Any]):
        """``model_outputs`` of a GRPO micro-batch: ``logprobs`` (and ``entropy``, ``values``,
        ``response_embeddings`` as computed), plus lazy keys (``lazy_outputs``)."""
        values = {"logprobs": batch["policy_logps"], "entropy": batch.get("entropy"),
                  "values": batch.get("value_preds"),
                  "response_embeddings": batch.get("response_embeddings")}
        values["responses"] = values["response_embeddings"]
        return self.lazy_outputs(values, lambda hidden: response_embeddings(hidden, batch["loss_mask"]))

    # ---- monitoring ----------------------------------------------------------------------
    def record_round(self, grouped, embeddings: torch.Tensor | None, context: dict[str, Any]) -> None:
        """Keep the last grouped round (groups, embeddings, context) for the helpers below."""
        self.last_round = (grouped, embeddings, context)

    @property
    def last_groups(self) -> list[torch.Tensor]:
        """The groups of the last grouped rollout (a subclass may assign its own)."""
        if "_assigned_groups" in self.__dict__:
            return self.__dict__["_assigned_groups"]
        if self.last_round is None or self.last_round[0] is None:
            raise AttributeError("no rollout has been grouped yet")
        return self.last_round[0].groups

    @last_groups.setter
    def last_groups(self, groups: list[torch.Tensor]) -> None:
        self.__dict__["_assigned_groups"] = groups

    @property
    def group_performances(self) -> torch.Tensor:
        """Mean reward of each group of the last rollout ``[num_groups]``."""
        groups = self.last_groups
        rewards = self.last_round[0].scored.rewards
        return torch.stack([torch.nanmean(rewards[g].float()) for g in groups])

    def monitor_group_quality(self, groups=None, embeddings=None) -> torch.Tensor:
        """Mean over groups of ``1 / (1 + mean distance of members to the group centroid)``
        (1 = identical members); defaults: the last rollout's groups and embeddings (the
        rewards as 1-d embeddings when the rollout had none)."""
        groups = self.last_groups if groups is None else groups
        if embeddings is None:
            embeddings = self.last_round[1] if self.last_round else None
            if embeddings is None:
                embeddings = self.last_round[0].scored.rewards.float().unsqueeze(-1)
        qualities = []
        for g in groups:
            e = embeddings[g].float()
            qualities.append(1.0 / (1.0 + torch.norm(e - e.mean(0), dim=1).mean()))
        return torch.stack(qualities).mean()

    def controller_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The step's metrics plus its rollout's reward metrics and ``group_performance``
        (mean of the groups' mean rewards), for ``training.lr_controller`` /
        ``algorithm.beta_schedule`` feedback."""
        extra = dict(self.step_rollout_metrics or {})
        if self.last_round is not None and self.last_round[0] is not None:
            extra["group_performance"] = self.group_performances.nanmean()
        acc = WeightedMean()
        acc.add(extra, 1.0)
        return {**acc.result(), **metrics}

    def debug_lines(self, kind: str, **kwargs: Any) -> list[str]:
        if kind != "grpo":
            return super().debug_lines(kind, **kwargs)
        groups = kwargs.get("groups")
        groups = self.last_groups if groups is None else groups
        embeddings = kwargs.get("embeddings")
        if embeddings is None and self.last_round is not None:
            embeddings = self.last_round[1]
        lines = [f"Number of groups: {len(groups)}",
                 f"Average group size: {sum(len(g) for g in groups) / max(len(groups), 1):.2f}"]
        if embeddings is not None:
            lines += [f"Group {i} diversity: {torch.std(embeddings[g].float()).mean():.3f}"
                      for i, g in enumerate(groups)]
        return lines
