"""KTO (``algorithm.name: kto``): unpaired desirable/undesirable completions, the DPO machinery.

Each row (:mod:`rlfoundry.data.unpaired`) is run as a DPO "pair" whose chosen side is its
own completion and whose rejected side is its *mismatched* completion (another row's), so
one forward (the packed layout shares the prompt) gives both the row's log-prob and its
term of the KL estimate; reference log-probs (live, or ``reference.precompute``),
micro-batching, checkpoint/resume and data parallelism are the DPO trainer's.

The KL reference point ``z0`` is estimated over the *whole step's* batch (all micro-batches
and ranks) in a gradient-free pass before the step, so micro-batching and the number of
ranks do not change the update (TRL estimates it per micro-batch). Paired data
(``chosen``/``rejected``) is converted to two rows per pair; held-out ``pair_accuracy`` then
compares the implicit rewards of the two rows of each pair, the DPO preference accuracy.
"""

from __future__ import annotations

from typing import Any

import torch

from rlfoundry.algorithms.dpo import DPOTrainer, _is_builtin, _renumbered
from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
from rlfoundry.algorithms.loss_functions.dpo import preference_accuracy
from rlfoundry.algorithms.loss_functions.kto import KTOLossFn, kl_estimate
from rlfoundry.algorithms.reference import pair_token_logprobs
from rlfoundry.algorithms.trainer_registry import TRAINERS
from rlfoundry.config import RunConfig
from rlfoundry.data.sources import load_dataset_spec
from rlfoundry.data.unpaired import PAIR_COLUMN, UnpairedDataset
from rlfoundry.errors import ConfigError
from rlfoundry.ops.lm_head import supports_packed_rows
from rlfoundry.training import distributed
from rlfoundry.training.base import as_loss_and_metrics, coerce_config


@TRAINERS.register("kto")
class KTOTrainer(DPOTrainer):
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024) on unpaired rows."""

    kind = "dpo"  # reference.precompute and the DPO data options apply
    default_loss_type = "kto"

    def __init__(self, model=None, tokenizer=None, config=None, *, loss_fn=None):
        # ``kind`` is "dpo" for the config checks; a bare or algorithm-only config names kto
        super().__init__(model, tokenizer, coerce_config(config, "kto"), loss_fn=loss_fn)

    @classmethod
    def validate_config(cls, cfg: RunConfig) -> None:
        loss = LossFunctionRegistry.build(cfg.algorithm.loss)
        if not isinstance(loss, KTOLossFn):
            raise ConfigError(f"algorithm.loss.type: '{cfg.algorithm.loss.get('type')}' is not a KTO "
                              f"loss; algorithm.name: kto trains with loss type 'kto' (or a "
                              f"subclass of KTOLossFn); use algorithm.name: dpo for pairwise losses")

    # ---- data ----------------------------------------------------------------------------
    def setup_data(self, dataset=None, eval_dataset=None) -> int:
        data = self.config.data
        train = _as_unpaired(dataset, data, "train")
        evals = _as_unpaired(eval_dataset, data, "eval") if (
            eval_dataset is not None or data.eval is not None or _is_builtin(data.train)) else None
        kw = dict(max_length=data.max_length, max_prompt_length=data.max_prompt_length,
                  truncation=data.truncation, seed=self.config.training.seed)
        self.train_pairs = _renumbered(train.tokenize(self.tokenizer, **kw))
        self.eval_pairs = _renumbered(evals.tokenize(self.tokenizer, **kw)) if evals is not None else []
        self._step_kl: torch.Tensor | None = None
        self._ref_cache: dict[tuple[int, ...], tuple] = {}
        self._setup_reference()
        return len(self.train_pairs)

    @property
    def packed(self) -> bool:
        return bool(self.config.data.share_prompt and supports_packed_rows(self.model))

    def collate(self, indices: list[int], pairs=None) -> dict[str, Any]:
        batch = super().collate(indices, pairs)
        batch["label"] = torch.as_tensor(batch["label"], dtype=torch.float).reshape(-1)
        return batch

    # ---- one step ------------------------------------------------------------------------
    def row_logps(self, batch: dict[str, Any], grad: bool) -> dict[str, torch.Tensor]:
        """Policy and reference log-probs of each row's completion and mismatched completion."""
        b = batch["num_sequences"]
        with torch.enable_grad() if grad else torch.no_grad():
            run = self.forward_policy if grad else (lambda fn, *a: fn(self.model, *a))
            logps = run(pair_token_logprobs, batch).sequence_sums()
        key = tuple(batch["index"].tolist())
        cached = self._ref_cache.get(key) if batch["split"] == "train" else None
        ref, ref_kl = cached if cached is not None else self.reference_logps(batch)
        if self._step_kl is None and batch["split"] == "train":  # the step's z0 pass: keep them
            self._ref_cache[key] = (ref, ref_kl)
        return {"policy_logps": logps[:b], "policy_kl_logps": logps[b:],
                "reference_logps": ref, "reference_kl_logps": ref_kl}

    @torch.no_grad()
    def step_kl(self, indices: list[int]) -> torch.Tensor:
        """``z0`` over the step's whole batch: every micro-batch of every rank (no grad)."""
        sums = torch.zeros(2, dtype=torch.float64)
        with self.full_parameters(), self.autocast():
            for batch in self.micro_batches(indices):
                if batch.get("stand_in"):
                    continue
                out = self.row_logps(self.to_device(batch), grad=False)
                sums += torch.stack([(out["policy_kl_logps"] - out["reference_kl_logps"]).double().sum().cpu(),
                                     torch.tensor(float(batch["num_sequences"]), dtype=torch.float64)])
        if self.dist.enabled:
            sums = distributed.all_reduce_sum(sums)
        return (sums[0] / sums[1].clamp(min=1)).clamp(min=0).float()

    def optimizer_step(self, indices: list[int]) -> dict[str, float]:
        self.model.train()
        self._ref_cache = {}  # reference log-probs of the z0 pass, reused by the micro-steps
        self._step_kl = self.step_kl(indices)
        try:
            return super().optimizer_step(indices)
        finally:
            self._step_kl, self._ref_cache = None, {}

    def micro_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        batch = self.to_device(batch)
        batch.update(self.row_logps(batch, grad=torch.is_grad_enabled()))
        if self._step_kl is not None:
            batch["kl_estimate"] = self._step_kl.to(self.device)
        return as_loss_and_metrics(self.train_step(batch))

    def train_step(self, batch: dict[str, Any]):
        """KTO loss of one micro-batch whose log-probs are already in ``batch``."""
        return self.compute_loss(batch, {"policy_logps": batch["policy_logps"],
                                         "policy_kl_logps": batch["policy_kl_logps"]})

    def compute_loss(self, batch: dict[str, Any], model_outputs: dict[str, torch.Tensor]):  # type: ignore[override]
        return self.loss_fn(batch, model_outputs)

    # ---- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out KTO loss with ``z0`` over the whole eval set, mean implicit rewards of each
        class, their margin, and ``pair_accuracy`` over rows that came from one pair."""
        if not self.eval_pairs:
            return {}
        was_training = self.model.training
        self.model.eval()
        size = self.config.training.micro_batch_size or self.config.training.batch_size
        rows: list[tuple[int, float, float]] = []  # (index, log-ratio, mismatched log-ratio)
        for batch in self._chunks(len(self.eval_pairs), size, self.eval_pairs):
            out = self.row_logps(self.to_device(batch), grad=False)
            r = (out["policy_logps"] - out["reference_logps"]).double().cpu().tolist()
            k = (out["policy_kl_logps"] - out["reference_kl_logps"]).double().cpu().tolist()
            rows += list(zip(batch["index"].tolist(), r, k))
        self.model.train(was_training)
        if self.dist.enabled:
            rows = [x for part in distributed.all_gather_object(rows) for x in part]
        rows.sort()
        return kto_eval_metrics(self.loss_fn, self.eval_pairs, rows)


def kto_eval_metrics(loss_fn: KTOLossFn, pairs: list, rows: list[tuple[int, float, float]]) -> dict[str, float]:
    """Held-out metrics from per-row log-ratios (see :meth:`KTOTrainer.evaluate`)."""
    reward = torch.tensor([r for _, r, _ in rows], dtype=torch.float64)
    z0 = kl_estimate(torch.tensor([k for _, _, k in rows], dtype=torch.float64), torch.zeros(len(rows)))
    desirable = torch.tensor([pairs[i].extras["label"] > 0.5 for i, _, _ in rows])
    beta = loss_fn.beta
    out = {"loss": float(loss_fn.loss_from_rewards(reward, desirable, z0)), "kl": float(z0)}
    if desirable.any():
        out["rewards_desirable"] = float(beta * reward[desirable].mean())
    if (~desirable).any():
        out["rewards_undesirable"] = float(beta * reward[~desirable].mean())
    if desirable.any() and (~desirable).any():
        out["reward_margin"] = out["rewards_desirable"] - out["rewards_undesirable"]
    groups: dict[Any, dict[bool, float]] = {}
    for (i, r, _), d in zip(rows, desirable.tolist()):
        key = pairs[i].extras.get(PAIR_COLUMN)
        if key is not None:
            groups.setdefault(key, {})[d] = r
    matched = [(g[True], g[False]) for g in groups.values() if len(g) == 2]
    if matched:
        good, bad = (torch.tensor(x, dtype=torch.float64) for x in zip(*matched))
        out["pair_accuracy"] = float(preference_accuracy(good, bad))
    return out


def _as_unpaired(dataset, data_cfg, split: str) -> UnpairedDataset:
    """``dataset`` (unpaired or paired rows, an Unpaired/PreferenceDataset) or the
    ``data.<split>`` source as an UnpairedDataset (pairs converted)."""
    from rlfoundry.data import PreferenceDataset
    from rlfoundry.data.unpaired import unpaired_from_pairs

    if isinstance(dataset, UnpairedDataset):
        return dataset
    if isinstance(dataset, PreferenceDataset):
        return unpaired_from_pairs(dataset)
    if dataset is not None:
        return UnpairedDataset.from_rows(dataset, on_bad_row=data_cfg.on_bad_row,
                                         duplicates=data_cfg.duplicates)
    return load_dataset_spec(data_cfg, split, UnpairedDataset)
