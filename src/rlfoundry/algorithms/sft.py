"""Supervised fine-tuning on (prompt, completion) rows: the warm start before GRPO."""

from __future__ import annotations

from typing import Any

import torch

from rlfoundry.algorithms.trainer_registry import TRAINERS
from rlfoundry.data import PromptDataset
from rlfoundry.data.lengths import check_max_length
from rlfoundry.data.padding import pad_prompt_completions
from rlfoundry.data.prompts import encode, tokenize_prompt
from rlfoundry.data.sources import load_dataset_spec
from rlfoundry.errors import DataError
from rlfoundry.ops.lm_head import token_logprobs
from rlfoundry.ops.packed import packed_token_logprobs, with_packed_rows
from rlfoundry.training import distributed
from rlfoundry.training.base import Trainer, as_loss_and_metrics
from rlfoundry.training.distributed import shard_range
from rlfoundry.training.metrics import WeightedMean


@TRAINERS.register("sft")
class SFTTrainer(Trainer):
    """Supervised fine-tuning: NLL of the completion given the prompt (rows: prompt, completion)."""

    kind = "sft"
    default_loss_type = "nll"

    def setup_data(self, dataset=None, eval_dataset=None) -> int:
        data = self.config.data
        check_max_length(self.config, self.model, self.tokenizer)  # rows fit the model's context
        train = dataset if dataset is not None else load_dataset_spec(data, "train", PromptDataset)
        builtin = isinstance(data.train, str) and data.train.startswith("builtin:")
        evals = eval_dataset if eval_dataset is not None else (
            load_dataset_spec(data, "eval", PromptDataset) if data.eval is not None or builtin else None)
        self.train_rows = self._tokenize(_as_prompts(train, data))
        self.eval_rows = self._tokenize(_as_prompts(evals, data)) if evals is not None else []
        return len(self.train_rows)

    def _tokenize(self, dataset: PromptDataset) -> list[tuple[list[int], list[int]]]:
        limit, eos = self.config.data.max_length, self.tokenizer.eos_token_id
        rows = []
        for ex in dataset:
            completion = ex.extras.get("completion")
            if not isinstance(completion, str) or not completion:
                raise DataError(f"{ex.location}: SFT rows need a non-empty string 'completion'")
            prompt = tokenize_prompt(self.tokenizer, ex, self.config.data.max_prompt_length)
            target = encode(self.tokenizer, [completion], special=False, data_text=True,
                            where=[ex.location])[0] + [eos]
            room = limit - len(target)  # over-long rows: keep the prompt's end, then cut the target
            prompt = prompt[-max(room, 1):]
            rows.append((prompt, target[: limit - len(prompt)]))
        return rows

    def collate(self, indices: list[int], rows=None) -> dict[str, Any]:
        rows = self.train_rows if rows is None else rows
        chosen = [rows[i] for i in indices]
        ids, attn, mask = pad_prompt_completions([p for p, _ in chosen], [c for _, c in chosen],
                                                 self.tokenizer.pad_token_id or 0)
        batch = {"input_ids": ids, "attention_mask": attn, "loss_mask": mask,
                 "num_sequences": len(chosen), "num_tokens": int(mask.sum())}
        return with_packed_rows(batch, self.config, self.model, self.tokenizer.pad_token_id or 0)

    def micro_step(self, batch: dict[str, Any]):
        batch = self.to_device(batch)
        if "packed" in batch:  # data.packing: same log-probs, laid out as the padded rows
            out = self.forward_policy(packed_token_logprobs, batch["packed"],
                                      self.config.model.attention)
        else:
            out = self.forward_policy(token_logprobs, batch["input_ids"], batch["attention_mask"],
                                      batch["loss_mask"])
        batch["response_mask"] = out.mask
        return as_loss_and_metrics(self.loss_fn(batch, {"logprobs": out.logprobs}))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out completion NLL over all eval rows, weighted as the loss normalizes
        (per token, or per row with ``normalization: sequence``); each rank its share."""
        if not self.eval_rows:
            return {}
        was_training = self.model.training
        self.model.eval()
        acc, size = WeightedMean(), self.config.training.batch_size
        count = "num_sequences" if getattr(self.loss_fn, "reduction", "token") == "sequence" else "num_tokens"
        share = shard_range(len(self.eval_rows), self.dist.rank, self.dist.world_size)
        batches = [self.collate(list(range(s, min(s + size, share.stop))), self.eval_rows)
                   for s in range(share.start, share.stop, size)]
        total = sum(b[count] for b in batches)
        if self.dist.enabled:
            total = int(distributed.all_reduce_sum(torch.tensor([total])).item())
        for b in batches:
            loss, metrics = self.micro_step(b)
            acc.add({**metrics, "loss": loss}, b[count] / total)
        self.model.train(was_training)
        return acc.result(across_ranks=True)


def _as_prompts(dataset, data) -> PromptDataset:
    if isinstance(dataset, PromptDataset):
        return dataset
    return PromptDataset.from_rows(dataset, on_bad_row=data.on_bad_row, duplicates=data.duplicates)
