"""DPO and its variants: preference pairs -> one forward of chosen+rejected -> loss -> update.

Override points (the seed's ``CustomDPOTrainer`` / ``MathDPOTrainer`` patterns):

- ``compute_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
  reference_rejected_logps, **extra)``: return a loss tensor or ``(loss, metrics)``. Extra
  batch columns (``math_correctness``, token counts, ...) are passed when the signature names
  them (or takes ``**kwargs``).
- ``train_step(batch)``: ``batch`` already holds the policy and reference per-sequence
  log-probs under the names above, plus every collated column; return the loss (or
  ``(loss, metrics)``). The trainer does backward, accumulation and the optimizer step.

Besides per-sequence log-probs, losses get a token-level view of the ``2B`` rows (chosen
rows first): ``model_outputs["logprobs"]`` ``[2B, T]``, ``batch["response_mask"]``,
``batch["is_chosen"]`` and ``batch["advantages"]`` (+1 chosen, -1 rejected: each pair is a
group of two), plus ``model_outputs["response_embeddings"]`` when a loss lists ``"hidden"``
in ``requires``. So NLL, auxiliary objectives and sequence-level policy-gradient terms
compose with DPO (``num_tokens`` counts chosen tokens: token-level terms are about the
chosen responses).

Batch layout (``data.share_prompt``, on by default): each pair is one row, prompt + chosen +
rejected, under an attention mask that hides the chosen tokens from the rejected ones, so the
prompt goes through the model once per pair instead of twice and the two completions are not
padded to each other; the log-probs are those of separate rows. The token-level view then
has one row per sequence whose column ``j`` is its ``j``-th scored token (with separate rows
the columns are aligned with ``input_ids[:, 1:]``); masks, sums and means are the same.
Separate rows are used when the model's attention takes no custom mask (flash-attention
kernels) or the loss has a component other than a DPO loss (token-level objectives).
``model.attention`` picks how packed rows are attended (:mod:`rlfoundry.ops.attention`);
``data.packing`` puts several pairs (or, with separate rows, several sequences) in a row.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from rlfoundry.algorithms.dpo_helpers import DPOSeedHelpers
from rlfoundry.algorithms.loss_functions import DPOLossFn, LossFunctionRegistry
from rlfoundry.algorithms.loss_functions.dpo import preference_accuracy, tie_tolerance
from rlfoundry.algorithms.reference import (
    ReferenceTable,
    build_reference,
    examples_fingerprint,
    pair_response_embeddings,
    pair_token_logprobs,
    sequence_logps,
)
from rlfoundry.algorithms.trainer_registry import TRAINERS
from rlfoundry.config import RunConfig
from rlfoundry.data import PreferenceDataset, collate_preference, collate_preference_packed
from rlfoundry.data.lengths import check_max_length
from rlfoundry.data.packing import pack_rows
from rlfoundry.data.sources import load_dataset_spec
from rlfoundry.errors import ConfigError
from rlfoundry.ops.lm_head import supports_packed_rows
from rlfoundry.ops.packed import supports_packing
from rlfoundry.training.base import Trainer, as_loss_and_metrics, call_with_accepted
from rlfoundry.training.distributed import shard_range
from rlfoundry.training.metrics import WeightedMean
from rlfoundry.training.sampler import length_blocks
from rlfoundry.training.schedules import get_beta, loss_components

LOGP_KEYS = ("policy_chosen_logps", "policy_rejected_logps",
             "reference_chosen_logps", "reference_rejected_logps")
OUTPUT_KEYS = ("logprobs", "response_embeddings")  # token-level model outputs


def preference_metrics(pc, pr, rc, rr, beta: float) -> dict[str, torch.Tensor]:
    """Implicit-reward statistics of a batch of pairs (the seed's metric names)."""
    with torch.no_grad():
        chosen = beta * (pc - (rc if rc is not None else 0.0))
        rejected = beta * (pr - (rr if rr is not None else 0.0))
        return {
            "chosen_rewards_mean": chosen.mean(),
            "rejected_rewards_mean": rejected.mean(),
            "reward_gap": (chosen - rejected).mean(),
            "accuracy": preference_accuracy(chosen, rejected, tie_tolerance(pc, pr, rc, rr, beta=beta)),
            "logps_chosen": pc.mean(),
            "logps_rejected": pr.mean(),
        }


@TRAINERS.register("dpo")
class DPOTrainer(DPOSeedHelpers, Trainer):
    """Direct Preference Optimization and its variants (loss chosen by ``algorithm.loss.type``).

    Helpers for custom losses (``self.beta``, ``self.standard_dpo_loss``, ...):
    :mod:`~rlfoundry.algorithms.dpo_helpers`."""

    kind = "dpo"
    default_loss_type = "dpo"

    @classmethod
    def validate_config(cls, cfg: RunConfig) -> None:
        from rlfoundry.algorithms.loss_functions import GRPOLossFn
        from rlfoundry.training.schedules import loss_components

        loss = LossFunctionRegistry.build(cfg.algorithm.loss)  # loss options are checked at load
        for c in loss_components(loss):
            if isinstance(c, GRPOLossFn) and (c.reduction == "token" or c.requires_reference):
                raise ConfigError(
                    "algorithm.loss: in a DPO run a GRPO-style component sees each pair as a group "
                    "of two (advantages +1/-1) and must be sequence-level without its own KL "
                    f"(got loss_type={c.loss_type}, reference_policy_kl_penalty="
                    f"{c.reference_policy_kl_penalty}); the DPO term already anchors to the reference")
        if cfg.reference.precompute and not getattr(loss, "requires_reference", True):
            raise ConfigError(
                f"reference.precompute: loss '{cfg.algorithm.loss.get('type')}' is reference-free, "
                f"so there is nothing to precompute; remove reference.precompute"
            )

    # ---- data ----------------------------------------------------------------------------
    def setup_data(self, dataset=None, eval_dataset=None) -> int:
        data = self.config.data
        train = _as_preference_dataset(dataset, data, "train")
        evals = _as_preference_dataset(eval_dataset, data, "eval") if (
            eval_dataset is not None or data.eval is not None or _is_builtin(data.train)) else None
        check_max_length(self.config, self.model, self.tokenizer)  # rows fit the model's context
        kw = dict(max_length=data.max_length, max_prompt_length=data.max_prompt_length,
                  truncation=data.truncation)
        self.train_pairs = _renumbered(train.tokenize(self.tokenizer, **kw))
        self.eval_pairs = _renumbered(evals.tokenize(self.tokenizer, **kw)) if evals is not None else []
        if not self.train_pairs:
            raise ValueError("no training pairs left after tokenization (all rows dropped?)")
        self._setup_reference()
        return len(self.train_pairs)

    @property
    def packed(self) -> bool:
        """One row per pair (``data.share_prompt``), when the model can run packed rows and
        every loss component is a DPO loss (per-sequence log-probs only; token-level
        objectives read their labels from ``input_ids`` rows, so they keep separate rows)."""
        if not (self.config.data.share_prompt and supports_packed_rows(self.model)):
            return False
        leaves = [c for c in loss_components(self.loss_fn) if not getattr(c, "components", None)]
        return all(isinstance(c, DPOLossFn) for c in leaves)

    def collate(self, indices: list[int], pairs=None) -> dict[str, Any]:
        pairs = self.train_pairs if pairs is None else pairs
        rows = [pairs[i] for i in indices]
        pad, data = self.tokenizer.pad_token_id, self.config.data
        capacity = (data.packing_length or data.max_length) if data.packing else None
        if self.packed:
            batch = collate_preference_packed(rows, pad, capacity=capacity)
        else:
            batch = collate_preference(rows, pad)
            if capacity and supports_packing(self.model):  # padding-free 2B sequences
                batch["packed"] = pack_rows(batch["input_ids"], batch["attention_mask"],
                                            batch["loss_mask"], pad, capacity)
        batch["attention"] = self.config.model.attention
        batch["num_sequences"] = len(indices)
        batch["num_tokens"] = int(batch["chosen_token_counts"].sum())  # chosen tokens
        batch["split"] = "train" if pairs is self.train_pairs else "eval"
        return batch

    def next_batch(self) -> list[int]:
        """This rank's pairs of the step, the global batch first ordered by length in blocks
        of ``micro_batch_size`` (:func:`~rlfoundry.training.sampler.length_blocks`), so each
        micro-batch pads to similar lengths; the step's loss and gradient are unchanged."""
        pairs = self.train_pairs
        lengths = _LengthOf(pairs, packed=self.packed)
        return self.local_share(length_blocks(self.sampler.next_batch(), lengths,
                                              self.config.training.micro_batch_size))

    # ---- reference -----------------------------------------------------------------------
    def _setup_reference(self) -> None:
        self.ref_model, self.ref_tables = None, {}
        if not getattr(self.loss_fn, "requires_reference", True):
            return
        ref = build_reference(self.model)  # a frozen copy, or the LoRA policy's adapter off
        if not self.config.reference.precompute:
            self.ref_model = ref
            return
        cache = Path(self.config.reference.cache_dir or self.output_dir / "reference_cache")
        size = self.config.training.micro_batch_size or self.config.training.batch_size
        for split, pairs in (("train", self.train_pairs), ("eval", self.eval_pairs)):
            if not pairs:
                continue
            key = examples_fingerprint([(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs])
            with self.autocast():
                self.ref_tables[split] = ReferenceTable.build(
                    ref, self._chunks(len(pairs), size, pairs), len(pairs), cache, key)
        del ref  # the reference model is not held during training

    def _chunks(self, n: int, size: int, pairs):
        """Collated batches of ``size`` over this rank's contiguous share of ``pairs``."""
        share = shard_range(n, self.dist.rank, self.dist.world_size)
        return (self.collate(list(range(i, min(i + size, share.stop))), pairs)
                for i in range(share.start, share.stop, size))

    def reference_logps(self, batch: dict[str, Any]):
        """(chosen, rejected) reference log-probs for a collated batch, or (None, None)."""
        if batch["split"] in self.ref_tables:
            return self.ref_tables[batch["split"]].lookup(batch["index"], self.device)
        if self.ref_model is None:
            return None, None
        with torch.no_grad():
            if isinstance(self.ref_model, torch.nn.Module) and self.engine is not None:
                logps = self.engine.run_frozen(self.ref_model, sequence_logps, batch)  # FSDP2: sharded
            else:  # through the wrapper: a LoRA reference is the (sharded) policy
                logps = self.forward_policy(_live_reference_logps, self.ref_model, batch)
        b = batch["num_sequences"]
        return logps[:b], logps[b:]

    # ---- one micro-batch -----------------------------------------------------------------
    def micro_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        batch = self.to_device(batch)
        b = batch["num_sequences"]
        hidden = "hidden" in getattr(self.loss_fn, "requires", ())
        out = self.forward_policy(pair_token_logprobs, batch, return_hidden=True)  # kept anyway
        self.record_forward(batch, out)  # for the lazy model_outputs and the helpers
        logps = out.sequence_sums()
        batch["policy_chosen_logps"], batch["policy_rejected_logps"] = logps[:b], logps[b:]
        batch["reference_chosen_logps"], batch["reference_rejected_logps"] = self.reference_logps(batch)
        is_chosen = torch.arange(2 * b, device=self.device) < b
        batch.update(logprobs=out.logprobs, response_mask=out.mask, is_chosen=is_chosen,
                     advantages=is_chosen.float() * 2 - 1)
        batch["additional_metrics"] = {"logprobs": out.logprobs, "response_mask": out.mask,
                                       "is_chosen": is_chosen}
        if hidden:
            batch["response_embeddings"] = pair_response_embeddings(out.hidden, batch)
        self.record_pair_rewards(batch)
        loss, metrics = as_loss_and_metrics(self.train_step(batch), self.loss_name())
        beta = get_beta(self.loss_fn) or 0.1
        defaults = preference_metrics(*(batch[k] for k in LOGP_KEYS), beta=beta)
        return loss, {**defaults, **metrics}

    def train_step(self, batch: dict[str, Any]):
        """Loss of one micro-batch whose policy/reference log-probs are already in ``batch``."""
        extra = {k: v for k, v in batch.items() if k not in LOGP_KEYS}
        return call_with_accepted(self.compute_loss, *(batch[k] for k in LOGP_KEYS), **extra)

    def compute_loss(self, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                     reference_rejected_logps, **extra):
        """The configured loss function (``algorithm.loss``) on per-sequence log-probs."""
        batch = dict(extra)
        batch.pop("additional_metrics", None)  # for overrides that name it
        if reference_chosen_logps is not None:
            batch["reference_chosen_logps"] = reference_chosen_logps
            batch["reference_rejected_logps"] = reference_rejected_logps
        outputs = {"policy_chosen_logps": policy_chosen_logps,
                   "policy_rejected_logps": policy_rejected_logps}
        outputs.update({k: batch.pop(k) for k in OUTPUT_KEYS if k in batch})
        return self.loss_fn(batch, self.dpo_outputs(outputs))  # + lazy logits, responses, ...

    # ---- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out preference accuracy, reward gap and loss (weighted over all eval pairs;
        each rank scores its share)."""
        if not self.eval_pairs:
            return {}
        was_training = self.model.training
        self.model.eval()
        acc = WeightedMean()
        size = self.config.training.micro_batch_size or self.config.training.batch_size
        n = len(self.eval_pairs)
        for batch in self._chunks(n, size, self.eval_pairs):
            loss, metrics = self.micro_step(batch)
            acc.add({**metrics, "loss": loss}, batch["num_sequences"] / n)
        self.model.train(was_training)
        return acc.result(across_ranks=True)


def _live_reference_logps(policy, ref, batch: dict[str, Any]) -> torch.Tensor:
    """``sequence_logps`` of the reference, run inside the policy wrapper's forward."""
    return sequence_logps(ref, batch)


def _renumbered(pairs: list) -> list:
    """Pairs whose ``index`` is their position: the reference table is keyed by it, and rows
    dropped for length would otherwise leave gaps."""
    return [dataclasses.replace(p, index=k) for k, p in enumerate(pairs)]


class _LengthOf:
    """``lengths[i]``: tokens of pair ``i``'s row(s) in the batch layout in use."""

    def __init__(self, pairs, packed: bool):
        self.pairs, self.packed = pairs, packed

    def __getitem__(self, i: int) -> int:
        return self.pairs[i].packed_length if self.packed else self.pairs[i].length


def _is_builtin(spec) -> bool:
    return isinstance(spec, str) and spec.startswith("builtin:")


def _as_preference_dataset(dataset, data_cfg, split: str) -> PreferenceDataset:
    if isinstance(dataset, PreferenceDataset):
        return dataset
    if dataset is not None:
        return PreferenceDataset.from_rows(dataset, on_bad_row=data_cfg.on_bad_row,
                                           duplicates=data_cfg.duplicates)
    return load_dataset_spec(data_cfg, split, PreferenceDataset)
