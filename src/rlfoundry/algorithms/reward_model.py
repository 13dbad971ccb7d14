"""Reward-model training (``algorithm.name: reward_model``): preference pairs -> a scalar score
per sequence -> Bradley-Terry loss -> update.

The model is a sequence-classification transformer with one output (``num_labels=1``; see
:mod:`rlfoundry.models.reward`): ``builtin:tiny`` / ``builtin:small`` get a random-init
backbone, a local causal-LM directory gets a new scalar head on its weights, and a local
reward model keeps its head (to continue training). The data is the DPO pipeline's
(:class:`~rlfoundry.data.PreferenceDataset`, the same rows, lengths and truncation), collated
as ``2B`` right-padded rows (chosen rows first); the model scores each row at its last token
and the loss (default ``bradley_terry``: ``-log sigmoid(r_c - r_r - margin)`` plus optional
centering) compares the two scores of each pair. There is no reference model.

Held-out ``accuracy`` (pairs ranked right; ties within ``tie_tolerance`` count one half),
``loss`` and the mean scores are logged as ``eval/*`` every ``training.eval_every`` steps and
always once at the end; ``final/`` loads with ``AutoModelForSequenceClassification`` and is
what the ``reward_model`` reward scores GRPO completions with.

Override points: ``score_pairs(batch)`` -> scores ``[2B]``; ``compute_loss(batch,
model_outputs)`` -> loss or ``(loss, metrics)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlfoundry.algorithms.dpo import _as_preference_dataset, _is_builtin, _renumbered
from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
from rlfoundry.algorithms.loss_functions.bradley_terry import BradleyTerryLossFn
from rlfoundry.algorithms.trainer_registry import TRAINERS
from rlfoundry.config import RunConfig
from rlfoundry.data import collate_preference
from rlfoundry.data.lengths import check_max_length
from rlfoundry.errors import ConfigError
from rlfoundry.models import load_tokenizer
from rlfoundry.models.reward import build_reward_model
from rlfoundry.training.base import Trainer, as_loss_and_metrics, coerce_config
from rlfoundry.training.distributed import shard_range
from rlfoundry.training.metrics import WeightedMean
from rlfoundry.training.sampler import length_blocks


def pair_scores(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The model's scalar score of each row of a collated preference batch ``[2B]``."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits if hasattr(out, "logits") else out[0]
    if logits.dim() != 2 or logits.shape[-1] != 1:
        raise ConfigError(f"model: a reward model must output one score per sequence (logits "
                          f"[batch, 1]); got logits of shape {list(logits.shape)}")
    return logits[:, 0]


@TRAINERS.register("reward_model")
class RewardModelTrainer(Trainer):
    """Bradley-Terry reward model on preference pairs (a scalar head; no reference model)."""

    kind = "reward_model"
    default_loss_type = "bradley_terry"

    def __init__(self, model=None, tokenizer=None, config=None, *, loss_fn=None):
        cfg = coerce_config(config, "reward_model")
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer or cfg.model.name_or_path, cfg.model.tokenizer)
        if model is None or isinstance(model, (str, Path)):
            model = build_reward_model(str(model or cfg.model.name_or_path), tokenizer,
                                       cfg.model.dtype, seed=cfg.training.seed)
        super().__init__(model, tokenizer, cfg, loss_fn=loss_fn)

    @classmethod
    def validate_config(cls, cfg: RunConfig) -> None:
        loss = LossFunctionRegistry.build(cfg.algorithm.loss)
        if not isinstance(loss, BradleyTerryLossFn):
            raise ConfigError(f"algorithm.loss.type: '{cfg.algorithm.loss.get('type')}' is not a "
                              f"reward-model loss; algorithm.name: reward_model trains with "
                              f"'bradley_terry' (or a subclass of BradleyTerryLossFn)")
        if cfg.algorithm.beta_schedule is not None:
            raise ConfigError("algorithm.beta_schedule: a reward model has no beta; remove it")
        if cfg.model.lora is not None:
            raise ConfigError("model.lora: reward-model training updates every weight (LoRA on a "
                              "scalar head is not supported yet); remove model.lora")

    # ---- data ----------------------------------------------------------------------------
    def setup_data(self, dataset=None, eval_dataset=None) -> int:
        data = self.config.data
        train = _as_preference_dataset(dataset, data, "train")
        evals = _as_preference_dataset(eval_dataset, data, "eval") if (
            eval_dataset is not None or data.eval is not None or _is_builtin(data.train)) else None
        check_max_length(self.config, self.model, self.tokenizer)
        kw = dict(max_length=data.max_length, max_prompt_length=data.max_prompt_length,
                  truncation=data.truncation)
        self.train_pairs = _renumbered(train.tokenize(self.tokenizer, **kw))
        self.eval_pairs = _renumbered(evals.tokenize(self.tokenizer, **kw)) if evals is not None else []
        return len(self.train_pairs)

    def collate(self, indices: list[int], pairs=None) -> dict[str, Any]:
        pairs = self.train_pairs if pairs is None else pairs
        batch = collate_preference([pairs[i] for i in indices], self.tokenizer.pad_token_id or 0)
        batch["num_sequences"] = len(indices)  # pairs: the loss is a mean over pairs
        batch["num_tokens"] = int(batch["attention_mask"].sum())
        return batch

    def next_batch(self) -> list[int]:
        """This rank's pairs of the step, ordered by length in blocks of ``micro_batch_size``
        (less padding; the step's loss and gradient are unchanged)."""
        lengths = [p.length for p in self.train_pairs]
        return self.local_share(length_blocks(self.sampler.next_batch(), lengths,
                                              self.config.training.micro_batch_size))

    # ---- one micro-batch -----------------------------------------------------------------
    def score_pairs(self, batch: dict[str, Any]) -> torch.Tensor:
        """Scores ``[2B]`` of a collated batch (chosen rows first), through the training
        wrapper (DDP/FSDP2 under torchrun)."""
        return self.forward_policy(pair_scores, batch)

    def micro_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        batch = self.to_device(batch)
        b = batch["num_sequences"]
        scores = self.score_pairs(batch)
        outputs = {"chosen_rewards": scores[:b], "rejected_rewards": scores[b:]}
        return as_loss_and_metrics(self.compute_loss(batch, outputs), self.loss_name())

    def compute_loss(self, batch: dict[str, Any], model_outputs: dict[str, torch.Tensor]):
        """The configured loss (``algorithm.loss``) on the pair scores."""
        return self.loss_fn(batch, model_outputs)

    # ---- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out pair ``accuracy`` (ties within ``tie_tolerance`` count 0.5), ``loss``,
        ``chosen_rewards``, ``rejected_rewards`` and ``reward_margin``, weighted over all
        eval pairs (each rank scores its share)."""
        if not self.eval_pairs:
            return {}
        was_training = self.model.training
        self.model.eval()
        acc = WeightedMean()
        size = self.config.training.micro_batch_size or self.config.training.batch_size
        n = len(self.eval_pairs)
        share = shard_range(n, self.dist.rank, self.dist.world_size)
        for start in range(share.start, share.stop, size):
            batch = self.collate(list(range(start, min(start + size, share.stop))), self.eval_pairs)
            loss, metrics = self.micro_step(batch)
            acc.add({**metrics, "loss": loss}, batch["num_sequences"] / n)
        self.model.train(was_training)
        return acc.result(across_ranks=True)

    # ---- the end of a run ----------------------------------------------------------------
    def save_final(self) -> Path:
        """Evaluate once more if the loop did not just do it (no ``eval_every``), so every run
        reports its held-out accuracy, then write ``final/``."""
        if self.eval_pairs and not self.config.training.eval_every:
            self.last_eval = self._log_eval()
        return super().save_final()

    def plain_policy(self, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A new, unsharded reward model on the CPU holding ``state_dict`` (FSDP2 ``final/``)."""
        from rlfoundry.training import checkpoint as ckpt

        cfg = self.config
        model = build_reward_model(cfg.model.name_or_path, self.tokenizer, cfg.model.dtype,
                                   seed=cfg.training.seed)
        ckpt.load_state_dict_strict(model, state_dict, "the gathered FSDP2 state")
        return model
