"""Embeddings a GRPO run needs besides the loss: sample embeddings for grouping strategies
(``algorithm.grouping.embedding``: the policy's hidden states or a sentence encoder) and
target-text embeddings for the quality objective. Used by the trainer's grouping and update
stages; the trainer exposes them as ``embed`` / ``embed_texts``.
"""

from __future__ import annotations

from typing import Any

import torch

from rlfoundry.algorithms.grouping import conversation_text
from rlfoundry.algorithms.grouping.embeddings import POLICY, load_encoder
from rlfoundry.data.padding import pad_prompt_completions
from rlfoundry.errors import DataError
from rlfoundry.ops.lm_head import response_embeddings
from rlfoundry.rollout.base import Rollout


def policy_body(model: torch.nn.Module) -> torch.nn.Module:
    """The policy's transformer body (hidden states), under a LoRA wrapper too."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return lm.base_model


def target_column(loss_fn) -> str:
    """The data column holding the quality objective's target text (default ``answer``)."""
    from rlfoundry.training.schedules import loss_components

    return next((c.cfg["target_column"] for c in loss_components(loss_fn)
                 if "targets" in getattr(c, "requires", ())), "answer")


class SampleEmbedder:
    """Embeds samples and texts with ``options["embedding"]`` (``policy`` or an encoder
    path; the encoder is loaded on first use) and ``options["embedding_text"]``."""

    def __init__(self, model: torch.nn.Module, tokenizer, options: dict[str, Any], device: torch.device):
        self.model, self.tokenizer, self.options, self.device = model, tokenizer, options, device
        self._encoder = None
        self.pad_id = tokenizer.pad_token_id or 0

    @torch.no_grad()
    def samples(self, rollout: Rollout, prompts: list[Any] | None = None,
                responses: list[str] | None = None) -> torch.Tensor:
        """Sample embeddings ``[N, D]``: the policy's last hidden states mean-pooled over each
        sample's completion tokens (or prompt and completion, ``embedding_text``), or a
        sentence encoder's embedding of the completion text (or prompt text + completion)."""
        whole = self.options["embedding_text"] == "prompt_completion"
        if self.options["embedding"] != POLICY:
            if responses is None:
                responses = self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
            texts = list(responses)
            if whole:
                if prompts is None:
                    raise ValueError("embedding_text 'prompt_completion' needs the prompts")
                texts = [conversation_text(p) + "\n" + r for p, r in zip(prompts, responses)]
            return self.texts(texts)
        ids, attn, comp = pad_prompt_completions(rollout.prompt_ids, rollout.completion_ids, self.pad_id)
        return self._policy_pool(ids, attn if whole else comp, attn)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        """Embeddings ``[len(texts), D]`` of arbitrary texts from the configured source (the
        policy: its hidden states mean-pooled over the text's tokens)."""
        spec = self.options["embedding"]
        if not texts:
            return torch.zeros(0, 0)
        if spec != POLICY:
            if self._encoder is None:
                self._encoder = load_encoder(spec, str(self.device))
            return self._encoder(list(texts))
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] or [self.pad_id] for t in texts]
        padded, attn, _ = pad_prompt_completions(ids, [[] for _ in ids], self.pad_id)
        return self._policy_pool(padded, attn, attn)

    def _policy_pool(self, ids: torch.Tensor, pool_mask: torch.Tensor,
                     attention: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            hidden = policy_body(self.model)(input_ids=ids.to(self.device),
                                             attention_mask=attention.to(self.device)).last_hidden_state
        finally:
            self.model.train(was_training)
        return response_embeddings(hidden, pool_mask.to(hidden.device)).float().cpu()

    @torch.no_grad()
    def targets(self, texts: list[Any], column: str) -> dict[str, torch.Tensor]:
        """Policy embeddings of each sample's target text (``None``: no target) for the
        quality objective: ``target_embeddings`` ``[N, D]`` and ``has_target`` ``[N]``."""
        if all(t is None for t in texts):
            raise DataError(f"the quality objective compares responses to the data column '{column}', "
                            "but no training row has it (set target_column)")
        ids = [self.tokenizer(str(t or ""), add_special_tokens=False)["input_ids"] for t in texts]
        ids_t, attn, mask = pad_prompt_completions([[] for _ in ids], ids, self.pad_id)
        hidden = policy_body(self.model)(input_ids=ids_t.to(self.device),
                                         attention_mask=attn.to(self.device)).last_hidden_state
        return {"target_embeddings": response_embeddings(hidden, mask.to(self.device)).float().cpu(),
                "has_target": torch.tensor([t is not None for t in texts])}
