"""The loop every trainer shares: micro-batches -> exact accumulation -> optimizer step.

A trainer subclass supplies four things: ``setup_data`` (build examples), ``collate`` (a list
of examples -> one micro-batch dict with ``num_sequences``/``num_tokens``), ``micro_step``
(micro-batch -> ``(loss, metrics)``) and ``evaluate``. Everything else -- the optimizer, the
schedule, clipping, non-finite handling, checkpoints, resume and logging -- lives here.
"""

from __future__ import annotations

import inspect
import math
import random
import warnings
from pathlib import Path
from typing import Any

import torch

from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
from rlfoundry.config import RunConfig, load_config
from rlfoundry.config.schema import AlgorithmConfig
from rlfoundry.errors import ConfigError, NonFiniteError
from rlfoundry.models import load_model, load_tokenizer
from rlfoundry.training import checkpoint as ckpt
from rlfoundry.training.logger import MetricsLogger
from rlfoundry.training.metrics import WeightedMean, nonfinite_keys
from rlfoundry.training.optim import build_optimizer, build_scheduler
from rlfoundry.training.sampler import EpochSampler
from rlfoundry.training.schedules import build_schedule, get_beta, set_beta


def coerce_config(config: Any, algorithm: str) -> RunConfig:
    """A RunConfig, a YAML path, a full run dict, or just an ``algorithm`` section dict."""
    if config is None:
        config = {"algorithm": {"name": algorithm}}
    elif isinstance(config, dict) and config and set(config) <= set(AlgorithmConfig.model_fields):
        config = {"algorithm": {"name": algorithm, **config}}
    return load_config(config)


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device: 'cuda' requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def call_with_accepted(fn, *args, **kwargs):
    """Call ``fn`` passing only the keyword arguments its signature accepts."""
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(*args, **kwargs)


def as_loss_and_metrics(result) -> tuple[torch.Tensor, dict[str, Any]]:
    """User hooks may return a loss tensor or ``(loss, metrics)``."""
    if isinstance(result, tuple):
        loss, metrics = result
        return loss, dict(metrics or {})
    return result, {}


class Trainer:
    """Base of the DPO, GRPO and SFT trainers (not used directly)."""

    kind = "base"
    default_loss_type = ""

    def __init__(self, model=None, tokenizer=None, config=None, *, loss_fn=None):
        self.config = coerce_config(config, self.kind)
        self.validate_config(self.config)
        cfg = self.config
        seed_everything(cfg.training.seed)
        self.device = select_device(cfg.training.device)
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer or cfg.model.name_or_path, cfg.model.tokenizer)
        self.tokenizer = tokenizer
        if model is None or isinstance(model, (str, Path)):
            model = load_model(str(model or cfg.model.name_or_path), tokenizer, cfg.model.dtype,
                               seed=cfg.training.seed)
        self.model = model.to(self.device)
        self.loss_fn = loss_fn if loss_fn is not None else LossFunctionRegistry.build(cfg.algorithm.loss)
        if hasattr(self.loss_fn, "bind_tokenizer"):
            self.loss_fn.bind_tokenizer(self.tokenizer)
        self.beta_schedule = build_schedule(cfg.algorithm.beta_schedule, "beta", get_beta(self.loss_fn) or 0.0,
                                            "algorithm.beta_schedule")
        self.lr_controller = build_schedule(cfg.training.lr_controller, "lr", 1.0, "training.lr_controller")
        self.output_dir = Path(cfg.training.output_dir)
        self.step = 0
        self.skipped_steps = 0

    # ---- hooks for subclasses -------------------------------------------------------------
    @classmethod
    def validate_config(cls, cfg: RunConfig) -> None:
        """Reject option combinations this trainer cannot honour (called at config load)."""

    def setup_data(self, dataset, eval_dataset) -> int:
        """Prepare training/eval examples; return the number of training examples."""
        raise NotImplementedError

    def collate(self, indices: list[int]) -> dict[str, Any]:
        raise NotImplementedError

    def micro_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        return {}

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``batch`` with its tensors on the training device (lists stay as they are)."""
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def next_batch(self) -> list[int]:
        """Indices of the examples for the next optimizer step."""
        return self.sampler.next_batch()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer updates and clipping measures (the model, plus any heads and
        learnable loss parameters such as uncertainty weights)."""
        loss_params = getattr(self.loss_fn, "parameters", None)
        extra = list(loss_params()) if callable(loss_params) else []
        return [p for p in [*self.model.parameters(), *extra] if p.requires_grad]

    def extra_state(self) -> dict[str, Any]:
        """Algorithm state to checkpoint besides model/optimizer/RNG/data position."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ---- the loop -------------------------------------------------------------------------
    def train(self, dataset=None, eval_dataset=None) -> dict[str, float]:
        """Train on ``dataset`` (default: ``config.data``); return the last step's metrics."""
        cfg = self.config.training
        num_examples = self.setup_data(dataset, eval_dataset)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * num_examples / cfg.batch_size))
        self.sampler = EpochSampler(num_examples, cfg.batch_size, cfg.seed)
        self.optimizer = build_optimizer(self.trainable_parameters(), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        resume_from = ckpt.resolve_resume(cfg.resume, self.output_dir)
        if resume_from is not None:
            self._restore(resume_from)
        self.logger = MetricsLogger(self.output_dir, self.config.logging, self.total_steps, self.step)
        if resume_from is not None:
            self.logger.write(f"resumed from {resume_from} at step {self.step}")
        metrics: dict[str, float] = {}
        self.initial_eval, self.last_eval = {}, {}
        try:
            if cfg.eval_every and self.step == 0:
                self.initial_eval = self._log_eval()
            while self.step < self.total_steps:
                metrics = self.optimizer_step(self.next_batch())
                self.step += 1
                self.logger.log(self.step, metrics)
                last = self.step == self.total_steps
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or last):
                    self.last_eval = self._log_eval()
                if last or (cfg.save_every and self.step % cfg.save_every == 0):
                    self.save_checkpoint()
            ckpt.save_pretrained(self.model, self.tokenizer, self.output_dir / "final")
        finally:
            self.logger.close()
        return metrics

    def _log_eval(self) -> dict[str, float]:
        result = self.evaluate()
        if result:
            self.logger.log(self.step, {f"eval/{k}": v for k, v in result.items()})
        return result

    def micro_batches(self, indices: list[int]) -> list[dict[str, Any]]:
        size = self.config.training.micro_batch_size or len(indices)
        return [self.collate(indices[i:i + size]) for i in range(0, len(indices), size)]

    def optimizer_step(self, indices: list[int]) -> dict[str, float]:
        """Forward/backward every micro-batch, weighting each by its share of the global
        sequence (or token) count, so accumulation equals one big batch; then one update.

        Losses with ``reduction = "sum"`` (composites of sequence- and token-level terms)
        normalise themselves with ``batch["global_num_sequences"]`` / ``["global_num_tokens"]``
        and are added unweighted."""
        self.model.train()
        self._loss_hook("on_step_start", self.step, self.total_steps)
        if self.beta_schedule is not None:
            set_beta(self.loss_fn, self.beta_schedule.value(self.step, self.total_steps))
        batches = self.micro_batches(indices)
        totals = {k: sum(b[k] for b in batches) for k in ("num_sequences", "num_tokens")}
        reduction = getattr(self.loss_fn, "reduction", "sequence")
        count_key = "num_tokens" if reduction == "token" else "num_sequences"
        acc, loss_sum = WeightedMean(), 0.0
        for batch in batches:
            batch.update({f"global_{k}": v for k, v in totals.items()})
            share = batch[count_key] / max(totals[count_key], 1)
            weight = 1.0 if reduction == "sum" else share
            loss, metrics = self.micro_step(batch)
            (loss * weight).backward()
            loss_sum = loss_sum + loss.detach() * weight
            acc.add({k: v for k, v in metrics.items() if k != "loss"}, share)
        params = self.trainable_parameters()
        # a loss may carry its own clipping threshold (see ClippedLossFunction); clipping
        # itself always happens here, after every micro-batch's backward
        max_norm = (getattr(self.loss_fn, "max_grad_norm", None) or self.config.training.max_grad_norm
                    or float("inf"))
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        acc.add({"loss": loss_sum, "grad_norm": grad_norm}, 1.0)
        metrics = acc.result()
        bad = nonfinite_keys(metrics)
        if bad:
            self._handle_nonfinite(bad, metrics)
        else:
            self.optimizer.step()
            self._loss_hook("on_step_end", metrics)
        beta = get_beta(self.loss_fn)
        if beta is not None:
            metrics["beta"] = beta
        if self.beta_schedule is not None:
            self.beta_schedule.update(metrics)
        if self.lr_controller is not None:
            self.lr_controller.update(metrics)
        with warnings.catch_warnings():  # a skipped update still advances the schedule
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
            self.scheduler.step()
        if self.lr_controller is not None:
            scale = self.lr_controller.value(self.step, self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] *= scale
        self.optimizer.zero_grad(set_to_none=True)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["skipped_steps"] = self.skipped_steps
        return metrics

    def _loss_hook(self, name: str, *args) -> None:
        hook = getattr(self.loss_fn, name, None)
        if callable(hook):
            hook(*args)

    def _handle_nonfinite(self, bad: list[str], metrics: dict[str, float]) -> None:
        where = ", ".join(f"{k}={metrics[k]}" for k in bad)
        if self.config.training.on_nonfinite == "raise":
            raise NonFiniteError(
                f"step {self.step + 1}: non-finite values ({where}); no update was applied and no "
                f"checkpoint was written. Lower the learning rate, check the data, or set "
                f"training.on_nonfinite=skip_batch to skip such steps."
            )
        self.skipped_steps += 1
        self.logger.write(f"step {self.step + 1}: skipped non-finite update ({where})")

    # ---- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        state = {
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": ckpt.rng_state(),
            "loss_fn": ckpt.plain_state(self.loss_fn),
            "schedules": {"beta": ckpt.plain_state(self.beta_schedule),
                          "lr": ckpt.plain_state(self.lr_controller)},
            "extra": self.extra_state(),
            "config": self.config.model_dump(mode="json"),
        }
        return ckpt.save_checkpoint(self.output_dir, self.step, self.model, self.tokenizer, state,
                                    self.config.training.keep_last)

    def _restore(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        ckpt.set_rng_state(state["rng"])
        ckpt.restore_plain_state(self.loss_fn, state["loss_fn"])
        schedules = state.get("schedules", {})
        ckpt.restore_plain_state(self.beta_schedule, schedules.get("beta", {}))
        ckpt.restore_plain_state(self.lr_controller, schedules.get("lr", {}))
        self.load_extra_state(state["extra"])
        self.step, self.skipped_steps = state["step"], state["skipped_steps"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
