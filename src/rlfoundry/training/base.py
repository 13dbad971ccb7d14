"""The loop every trainer shares: micro-batches -> exact accumulation -> optimizer step.

A trainer subclass supplies four things: ``setup_data`` (build examples), ``collate`` (a list
of examples -> one micro-batch dict with ``num_sequences``/``num_tokens``), ``micro_step``
(micro-batch -> ``(loss, metrics)``, its training forward run through ``forward_policy``) and
``evaluate``. Everything else -- the optimizer, the schedule, clipping, non-finite handling,
precision, checkpoints, resume, logging and data parallelism -- lives here.

Under torchrun every rank draws the same global batch from the seeded sampler and trains on
its contiguous share. Each micro-batch's loss is weighted by its count (sequences or tokens)
over the count of the *global* batch (summed across ranks), and DDP/FSDP2 sum gradients over
ranks, so N ranks apply exactly the single-process update. Metrics are
reduced across ranks once per step; only rank 0 writes logs, checkpoints and ``final/``.
"""

from __future__ import annotations

import inspect
import math
import random
import signal
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NoReturn

import torch

from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
from rlfoundry.config import RunConfig, load_config
from rlfoundry.config.schema import AlgorithmConfig
from rlfoundry.errors import (
    CheckpointError,
    ConfigError,
    NonFiniteError,
    OutputError,
    RLFoundryError,
    TrainingInterrupted,
)
from rlfoundry.models import load_model, load_tokenizer, prepare_policy
from rlfoundry.training import checkpoint as ckpt
from rlfoundry.training import distributed, loss_counters, ownership, reshard
from rlfoundry.training.logger import MetricsLogger, NullLogger
from rlfoundry.training.loss_result import check_loss_signature, checked_loss_result
from rlfoundry.training.metrics import WeightedMean, nonfinite_keys, split_timings
from rlfoundry.training.optim import build_optimizer, build_scheduler
from rlfoundry.training.ownership import OutputLock
from rlfoundry.training.parallel import ParallelPolicy
from rlfoundry.training.precision import autocast, check_precision, grad_scaler
from rlfoundry.training.run_record import write_run_record
from rlfoundry.training.sampler import EpochSampler
from rlfoundry.training.schedules import build_schedule, get_beta, loss_components, set_beta
from rlfoundry.training.signals import StopRequest
from rlfoundry.training.storage import check_writable
from rlfoundry.training.threads import apply_threads
from rlfoundry.user_code import blame, exits_as_errors, origin

_EXIT_HINT = ("Training stopped without applying that step; earlier checkpoints are intact. "
              "Raise an exception instead of exiting")


def coerce_config(config: Any, algorithm: str) -> RunConfig:
    """A RunConfig, a YAML path, a full run dict, or just an ``algorithm`` section dict. A
    config that names no ``algorithm.name`` gets the trainer's own (a ``GRPOTrainer`` given
    a config without it runs GRPO)."""
    from rlfoundry.algorithms.trainer_registry import TRAINERS, load_builtin_trainers
    from rlfoundry.config.loader import read_yaml

    load_builtin_trainers()
    implied = algorithm in TRAINERS  # the trainer's kind names a registered algorithm
    if isinstance(config, (str, Path)):
        config = read_yaml(config)
    if config is None:
        config = {"algorithm": {"name": algorithm}}
    elif isinstance(config, dict) and config and set(config) <= set(AlgorithmConfig.model_fields):
        config = {"algorithm": {"name": algorithm, **config}}
    elif isinstance(config, dict):
        section = config.get("algorithm") or {}
        if isinstance(section, dict) and "name" not in section and implied:
            config = {**config, "algorithm": {"name": algorithm, **section}}
    elif isinstance(config, RunConfig) and "name" not in config.algorithm.model_fields_set and implied:
        config = config.model_copy(deep=True)
        config.algorithm.name = algorithm
    return load_config(config)


def select_device(name: str, local_rank: int | None = None) -> torch.device:
    """``training.device`` resolved; under torchrun a CUDA rank takes GPU ``local_rank``."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device: 'cuda' requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank is not None:
        return torch.device("cuda", local_rank)
    return torch.device(name)


def call_with_accepted(fn, *args, **kwargs):
    """Call ``fn`` passing only the keyword arguments its signature accepts."""
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(*args, **kwargs)


def as_loss_and_metrics(result, who: str = "the loss") -> tuple[torch.Tensor, dict[str, Any]]:
    """User hooks may return a loss tensor or ``(loss, metrics)``; a wrong shape or type is
    a ``LossError`` naming ``who`` (:mod:`rlfoundry.training.loss_result`)."""
    return checked_loss_result(result, who)


class Trainer:
    """Base of the DPO, GRPO and SFT trainers (not used directly)."""

    kind = "base"
    default_loss_type = ""

    def __init__(self, model=None, tokenizer=None, config=None, *, loss_fn=None):
        self.config = coerce_config(config, self.kind)
        self.validate_config(self.config)
        cfg = self.config
        seed_everything(cfg.training.seed)
        dcfg = cfg.training.distributed
        self.dist = distributed.init_distributed(select_device(cfg.training.device).type,
                                                 dcfg.backend, dcfg.timeout_s)
        self.device = select_device(cfg.training.device,
                                    self.dist.local_rank if self.dist.enabled else None)
        check_precision(cfg.training.precision, self.device, cfg.model.dtype)
        self.num_threads = apply_threads(cfg.training.num_threads, self.device)
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer or cfg.model.name_or_path, cfg.model.tokenizer)
        self.tokenizer = tokenizer
        if model is None or isinstance(model, (str, Path)):
            model = load_model(str(model or cfg.model.name_or_path), tokenizer, cfg.model.dtype,
                               seed=cfg.training.seed)
        self.model = prepare_policy(model, cfg.model).to(self.device)
        if self.dist.enabled:  # same initial weights everywhere, then a stream per rank
            seed_everything(cfg.training.seed + self.dist.rank)
        self.engine: ParallelPolicy | None = None
        self.scaler = grad_scaler(cfg.training.precision, self.device)
        self.loss_fn = loss_fn if loss_fn is not None else LossFunctionRegistry.build(cfg.algorithm.loss)
        check_loss_signature(self.loss_fn, self.loss_name())
        if hasattr(self.loss_fn, "bind_tokenizer"):
            self.loss_fn.bind_tokenizer(self.tokenizer)
        self.beta_schedule = build_schedule(cfg.algorithm.beta_schedule, "beta", get_beta(self.loss_fn) or 0.0,
                                            "algorithm.beta_schedule")
        self.lr_controller = build_schedule(cfg.training.lr_controller, "lr", 1.0, "training.lr_controller")
        self.output_dir = Path(cfg.training.output_dir)
        self.step = 0
        self.skipped_steps = 0
        self.skipped_by_cause: dict[str, int] = {}
        self.saved_step: int | None = None

    # ---- hooks for subclasses -------------------------------------------------------------
    @classmethod
    def validate_config(cls, cfg: RunConfig) -> None:
        """Reject option combinations this trainer cannot honour (called at config load)."""

    @classmethod
    def validate_world(cls, cfg: RunConfig, world_size: int) -> None:
        """Reject a global batch that ``world_size`` ranks cannot split evenly (at load)."""
        train = cfg.training
        per_step = world_size * (train.micro_batch_size or 1)
        if world_size > 1 and train.batch_size % per_step:
            raise ConfigError(
                f"training.batch_size ({train.batch_size}) must be a multiple of WORLD_SIZE "
                f"({world_size}) x training.micro_batch_size ({train.micro_batch_size or 1}) = "
                f"{per_step}: batch_size is the global batch, split evenly across ranks"
            )

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
        """Indices of this rank's examples for the next optimizer step (its share of the
        global batch; the whole batch in a single process)."""
        return self.local_share(self.sampler.next_batch())

    def local_share(self, items: list) -> list:
        """This rank's contiguous share of ``items`` (all of them in a single process)."""
        share = distributed.shard_range(len(items), self.dist.rank, self.dist.world_size)
        return items[share.start:share.stop]

    def forward_policy(self, fn, *args, **kwargs):
        """``fn(policy, *args, **kwargs)`` as the training forward: through DDP/FSDP2 under
        torchrun (so gradients synchronise), a plain call otherwise. Custom ``micro_step``
        overrides run their policy forward through this."""
        if self.engine is None:
            return fn(self.model, *args, **kwargs)
        return self.engine(fn, *args, **kwargs)

    def autocast(self):
        """The ``training.precision`` autocast context for forward passes."""
        return autocast(self.config.training.precision, self.device)

    def full_parameters(self):
        """Context for gradient-free forwards of the policy (rollouts, evaluation): under
        FSDP2 the shards are gathered once for the whole block."""
        return self.engine.full_parameters() if self.engine is not None else nullcontext()

    def extra_modules(self) -> list[torch.nn.Module]:
        """Trainable modules besides the policy (heads) that DDP/FSDP2 must synchronise."""
        return []

    def frozen_modules(self) -> list[torch.nn.Module]:
        """Gradient-free models FSDP2 shards like the policy (default: a full-copy reference
        model in ``self.ref_model``; a LoRA reference is the policy itself)."""
        ref = getattr(self, "ref_model", None)
        return [ref] if isinstance(ref, torch.nn.Module) else []

    def stand_in_batch(self) -> dict[str, Any]:
        """A micro-batch a rank runs with weight 0 when it has fewer micro-batches than
        another rank this step (every rank must run the same number of forward/backward
        passes for DDP/FSDP2). Real data, so shapes and dtypes are the usual ones."""
        return {**self.collate([0]), "stand_in": True}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer updates and clipping measures (the model, plus any heads and
        learnable loss parameters such as uncertainty weights)."""
        return [p for p in [*self.model.parameters(), *self.loss_parameters()] if p.requires_grad]

    def extra_state(self) -> dict[str, Any]:
        """Algorithm state to checkpoint besides model/optimizer/RNG/data position."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def rank_state(self) -> dict[str, Any]:
        """State that differs per rank (RNG streams); checkpointed for every rank."""
        return {"rng": ckpt.rng_state()}

    def load_rank_state(self, state: dict[str, Any] | None) -> None:
        """Restore ``rank_state()``; ``None`` when the checkpoint was written by a different
        number of ranks: then re-seed this rank's streams from the seed, rank and step."""
        if state is None:
            seed_everything(self.config.training.seed + 7919 * self.step + self.dist.rank)
            return
        ckpt.set_rng_state(state["rng"])

    # ---- the loop -------------------------------------------------------------------------
    def train(self, dataset=None, eval_dataset=None) -> dict[str, float]:
        """Train on ``dataset`` (default: ``config.data``); return the last step's metrics.

        SIGTERM/SIGINT stop the run after the current step with a checkpoint and raise
        :class:`TrainingInterrupted` (see :mod:`rlfoundry.training.signals`).
        """
        lock = OutputLock(self.output_dir)  # rank 0 holds it for the run (see ownership)
        try:
            leftovers = self._claim_output_dir(lock)
            with StopRequest() as stop, exits_as_errors(self._blame, _EXIT_HINT):
                try:
                    return self._train(dataset, eval_dataset, stop, leftovers)
                except Exception as e:  # another rank's process or node went away: say so
                    if self.dist.enabled and distributed.is_peer_failure(e):
                        found = ckpt.list_checkpoints(self.output_dir)
                        raise distributed.peer_lost_error(e, self.step,
                                                          found[-1] if found else None) from e
                    raise
        finally:
            lock.release()

    def _claim_output_dir(self, lock: OutputLock) -> list[Path]:
        """Rank 0: check output_dir is writable, lock it, delete killed writers' leftovers and
        refuse another run's directory (unless resume/overwrite); every rank raises the same
        error. Returns the deleted leftovers."""
        leftovers, error = [], None
        if self.dist.is_main:
            try:
                check_writable(self.output_dir)  # before any time is spent on data or steps
                lock.acquire()
                leftovers = ckpt.remove_incomplete(self.output_dir)
                cfg = self.config.training
                if cfg.resume is None or (cfg.resume == "auto" and not ckpt.step_dirs(self.output_dir)):
                    leftovers += ownership.claim(self.output_dir, cfg.overwrite, cfg.resume is not None)
            except RLFoundryError as e:
                error = e
        if self.dist.enabled:
            message = distributed.broadcast_object(None if error is None else str(error))
            if message is not None and error is None:
                raise OutputError(message)
        if error is not None:
            raise error
        return leftovers

    def loss_name(self) -> str:
        """"the loss 'type' (module:Class)" for messages about the loss."""
        loss_type = self.config.algorithm.loss.get("type") or self.default_loss_type
        return f"the loss '{loss_type}' ({origin(self.loss_fn)})"

    def controller_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The metrics the beta/lr controllers see after a step (GRPO adds its rollout's)."""
        return metrics

    def _blame(self, error: BaseException) -> str:
        """Who exited: "step N: the loss 'type' (module:Class)", or user code elsewhere."""
        loss_type = self.config.algorithm.loss.get("type")
        named = f"the loss '{loss_type}'" if loss_type else "the loss"
        suspects = [(f"{named} ({origin(c)})" if c is self.loss_fn
                     else f"the loss component {origin(c)}", c)
                    for c in reversed(loss_components(self.loss_fn))]
        return f"step {self.step + 1}: " + blame(error, suspects, "user code")

    def _train(self, dataset, eval_dataset, stop: StopRequest, leftovers: list[Path]) -> dict[str, float]:
        cfg = self.config.training
        num_examples = self.setup_data(dataset, eval_dataset)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * num_examples / cfg.batch_size))
        self.sampler = EpochSampler(num_examples, cfg.batch_size, cfg.seed)
        resume_from = ckpt.resolve_resume(cfg.resume, self.output_dir)
        if resume_from is not None:
            ownership.check_same_run(resume_from, ckpt.saved_config(resume_from),
                                     self.config.model_dump(mode="json"))
        if self.engine is None:  # wrap once, even if train() is called again
            if self.dist.enabled:  # a plain checkpoint resumed under FSDP2: load, then shard
                reshard.preload_weights(resume_from, self.model, cfg.distributed.strategy)
            self.engine = self._wrap_policy()
        self.optimizer = build_optimizer(self.trainable_parameters(), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        note = self._restore(resume_from) if resume_from is not None else ""
        self.saved_step = self.step if resume_from is not None else None
        if self.dist.is_main:
            write_run_record(self.output_dir, self.config, self.num_threads, self.device, resume_from)
        self.logger = (MetricsLogger(self.output_dir, self.config.logging, self.total_steps, self.step,
                                     run_config=self.config.model_dump(mode="json"),
                                     desc=self.config.algorithm.name)
                       if self.dist.is_main else NullLogger())
        for path in leftovers:
            self.logger.write(f"deleted {path} (left by an interrupted or overwritten run)")
        if resume_from is not None:
            self.logger.write(f"resumed from {resume_from} at step {self.step}{note}")
        metrics: dict[str, float] = {}
        self.initial_eval, self.last_eval = {}, {}
        try:
            if cfg.eval_every and self.step == 0 and not stop.requested:
                self.initial_eval = self._log_eval()
            while self.step < self.total_steps:
                if self._stop_requested(stop):
                    self._stop(stop.signum or signal.SIGTERM)
                started = time.perf_counter()
                try:
                    metrics = self.optimizer_step(self.next_batch())
                except SkipStep as skip:
                    metrics = self.skip_step(skip)
                self.step += 1
                metrics, timings = split_timings(metrics)
                timings["step_seconds"] = time.perf_counter() - started
                self.logger.log(self.step, metrics)
                self.logger.log_timings(self.step, timings)
                last = self.step == self.total_steps
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or last):
                    self.last_eval = self._log_eval()
                if last or (cfg.save_every and self.step % cfg.save_every == 0):
                    self.save_checkpoint()
                metrics = {**metrics, **timings}
            self.save_final()
        finally:
            self.logger.close()
        return metrics

    def _stop_requested(self, stop: StopRequest) -> bool:
        """Whether a stop signal arrived (on any rank: all ranks must stop at the same step)."""
        if not self.dist.enabled:
            return stop.requested
        return bool(distributed.all_reduce_max(int(stop.requested)))

    def _stop(self, signum: int) -> NoReturn:
        """Checkpoint the finished steps (unless just saved) and raise TrainingInterrupted."""
        if self.step > 0 and self.saved_step != self.step:
            path = self.save_checkpoint()
        else:
            found = ckpt.list_checkpoints(self.output_dir)
            path = found[-1] if found else None
        name = signal.Signals(signum).name
        where = f"checkpoint {path}" if path is not None else "no checkpoint (no step had finished)"
        self.logger.write(f"stopped at step {self.step} by {name}; {where}")
        raise TrainingInterrupted(
            f"stopped at step {self.step} by {name}; {where}; resume with training.resume=auto "
            f"and the same training.output_dir", step=self.step, signum=signum, checkpoint=path)

    def _wrap_policy(self) -> ParallelPolicy:
        """The policy (and heads) as DDP, FSDP2 or plain, per ``training.distributed``."""
        strategy = self.config.training.distributed.strategy
        if self.dist.enabled and strategy == "fsdp2" and self.loss_parameters():
            raise ConfigError("training.distributed.strategy: fsdp2 cannot shard a loss with "
                              "learnable parameters (e.g. scheme: uncertainty); use ddp")
        engine = ParallelPolicy(self.model, self.extra_modules(), strategy, self.dist, self.device)
        for module in self.frozen_modules():
            engine.add_frozen(module)
        return engine

    def _log_eval(self) -> dict[str, float]:
        self.loss_fn = loss_counters.Rewinding(self.loss_fn)  # evaluation does not count as steps
        try:
            with self.full_parameters(), self.autocast():
                result = self.evaluate()
        finally:
            self.loss_fn = self.loss_fn.rewind()
        if result:
            self.logger.log(self.step, {f"eval/{k}": v for k, v in result.items()})
        return result

    def micro_batches(self, indices: list[int]) -> list[dict[str, Any]]:
        size = self.config.training.micro_batch_size or len(indices)
        batches = [self.collate(indices[i:i + size]) for i in range(0, len(indices), size)]
        if self.dist.enabled:  # every rank runs as many micro-batches as the busiest one
            batches += [self.stand_in_batch()
                        for _ in range(distributed.all_reduce_max(len(batches)) - len(batches))]
        return batches

    def optimizer_step(self, indices: list[int]) -> dict[str, float]:
        """Forward/backward every micro-batch, weighting each by its share of the global
        sequence (or token) count, so accumulation (over micro-batches and over ranks) equals
        one big batch; then one update.

        Losses with ``reduction = "sum"`` (composites of sequence- and token-level terms)
        normalise themselves with ``batch["global_num_sequences"]`` / ``["global_num_tokens"]``
        (the counts of the whole global batch, all ranks together) and are added unweighted."""
        self.model.train()
        loss_counters.set_training_step(self.loss_fn, self.step)
        self._loss_hook("on_step_start", self.step, self.total_steps)
        if self.beta_schedule is not None:
            set_beta(self.loss_fn, self.beta_schedule.value(self.step, self.total_steps))
        batches = self.micro_batches(indices)
        totals = self._global_counts(batches)
        reduction = getattr(self.loss_fn, "reduction", "sequence")
        count_key = "num_tokens" if reduction == "token" else "num_sequences"
        acc, loss_sum = WeightedMean(), 0.0
        counters, after_first = loss_counters.int_state(self.loss_fn), None
        for i, batch in enumerate(batches):
            loss_counters.restore(counters)  # per-call counters advance once per step
            batch.update({f"global_{k}": v for k, v in totals.items()})
            share = 0.0 if batch.get("stand_in") else batch[count_key] / max(totals[count_key], 1)
            weight = (0.0 if batch.get("stand_in") else 1.0) if reduction == "sum" else share
            with self.engine.sync_gradients(i == len(batches) - 1):
                with self.autocast():
                    loss, metrics = self.micro_step(batch)
                self._backward(loss * weight)
            loss_sum = loss_sum + loss.detach() * weight
            acc.add({k: v for k, v in metrics.items() if k != "loss"}, share)
            after_first = after_first or loss_counters.int_state(self.loss_fn)
        loss_counters.restore(after_first or [])
        self._sync_loss_parameters()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # a loss may carry its own clipping threshold (see ClippedLossFunction); clipping
        # itself always happens here, after every micro-batch's backward, on the global norm
        max_norm = (getattr(self.loss_fn, "max_grad_norm", None) or self.config.training.max_grad_norm
                    or float("inf"))
        grad_norm = self.engine.clip_grad_norm(self.trainable_parameters(), max_norm)
        world = self.dist.world_size  # each rank's loss_sum is its part of the global loss:
        acc.add({"loss": loss_sum * world}, 1.0 / world)  # the cross-rank merge adds them up
        acc.add({"grad_norm": grad_norm}, 1.0)
        metrics = acc.result(across_ranks=True)
        self._apply_update(metrics)
        beta = get_beta(self.loss_fn)
        if beta is not None:
            metrics["beta"] = beta
        if self.beta_schedule is not None:
            self.beta_schedule.update(self.controller_metrics(metrics))
        if self.lr_controller is not None:
            self.lr_controller.update(self.controller_metrics(metrics))
        self._advance_schedules()
        self.optimizer.zero_grad(set_to_none=True)
        loss_counters.set_training_step(self.loss_fn, self.step + 1)  # eval sees steps done
        metrics.update(self.step_counters())
        return metrics

    def _advance_schedules(self) -> None:
        """One step of the learning-rate schedule (and of the lr controller's scaling)."""
        with warnings.catch_warnings():  # a skipped update still advances the schedule
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
            self.scheduler.step()
        if self.lr_controller is not None:
            scale = self.lr_controller.value(self.step, self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] *= scale

    def _global_counts(self, batches: list[dict[str, Any]]) -> dict[str, int]:
        """Sequences and tokens of the step's whole batch (summed over ranks; stand-ins excluded)."""
        real = [b for b in batches if not b.get("stand_in")]
        totals = {k: sum(b[k] for b in real) for k in ("num_sequences", "num_tokens")}
        if self.dist.enabled:
            summed = distributed.all_reduce_sum(torch.tensor(list(totals.values())))
            totals = dict(zip(totals, (int(v) for v in summed.tolist())))
        return totals

    def loss_parameters(self) -> list[torch.Tensor]:
        """Learnable parameters of the loss itself (e.g. uncertainty weights), if any."""
        params = getattr(self.loss_fn, "parameters", None)
        return list(params()) if callable(params) else []

    def _sync_loss_parameters(self) -> None:
        """Sum the loss's own parameters' gradients over ranks (they live outside the DDP
        wrapper; each rank's loss is already weighted by its share of the global batch)."""
        if not self.dist.enabled:
            return
        for p in self.loss_parameters():
            if p.grad is not None:
                p.grad.copy_(distributed.all_reduce_sum(p.grad))

    def _loss_hook(self, name: str, *args) -> None:
        hook = getattr(self.loss_fn, name, None)
        if callable(hook):
            hook(*args)

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _apply_update(self, metrics: dict[str, float]) -> None:
        """Step the optimizer unless something is non-finite (identical on every rank: the
        metrics are already reduced). An fp16 overflow (finite loss, infinite gradients) is
        the gradient scaler's business: it skips the update and lowers the scale."""
        bad = nonfinite_keys(metrics)
        if self.scaler is not None and bad == ["grad_norm"]:
            self.skipped_steps += 1
            self.skipped_by_cause["fp16_overflow"] = self.skipped_by_cause.get("fp16_overflow", 0) + 1
            self.logger.write(f"step {self.step + 1}: fp16 gradient overflow, update skipped")
        elif bad:
            if self.scaler is not None:
                self.scaler.update()  # the next step's unscale_ needs it
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite("loss", ", ".join(f"{k}={metrics[k]}" for k in bad), metrics)
        if self.scaler is not None:
            if not bad or bad == ["grad_norm"]:
                self.scaler.step(self.optimizer)
            self.scaler.update()
        elif not bad:
            self.optimizer.step()
        if not bad:
            self._loss_hook("on_step_end", metrics)

    def nonfinite(self, what: str, detail: str, metrics: dict[str, Any] | None = None) -> NoReturn:
        """NaN/inf found in ``what`` (loss, rewards, advantages) while preparing step
        ``self.step + 1``: raise NonFiniteError (``training.on_nonfinite: raise``) or SkipStep,
        which the loop turns into a counted, logged step without an update (``skip_batch``).
        Under torchrun every rank must reach the same decision (call it on reduced values)."""
        if self.config.training.on_nonfinite == "raise":
            raise NonFiniteError(
                f"step {self.step + 1}: non-finite {what} ({detail}); no update was applied and no "
                f"checkpoint was written for this step. Lower the learning rate, check the data "
                f"and rewards, or set training.on_nonfinite=skip_batch to skip such steps."
            )
        raise SkipStep(what, detail, metrics or {})

    def skip_step(self, skip: SkipStep) -> dict[str, float]:
        """Account for a skipped step: no update and no feedback to the beta/lr controllers,
        but the learning-rate schedule still advances and the counters grow."""
        self.optimizer.zero_grad(set_to_none=True)
        self._advance_schedules()
        self.skipped_steps += 1
        self.skipped_by_cause[skip.what] = self.skipped_by_cause.get(skip.what, 0) + 1
        self.logger.write(f"step {self.step + 1}: skipped, non-finite {skip.what} ({skip.detail})")
        return {**skip.metrics, **self.step_counters()}

    def step_counters(self) -> dict[str, float]:
        """``lr``, ``skipped_steps`` and, where nonzero, ``skipped_steps/<cause>``."""
        out = {"lr": self.optimizer.param_groups[0]["lr"], "skipped_steps": self.skipped_steps}
        out.update({f"skipped_steps/{k}": v for k, v in sorted(self.skipped_by_cause.items())})
        return out

    # ---- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write checkpoint ``step`` (rank 0 writes; FSDP2 ranks each write their shards)."""
        self._refuse_nonfinite(f"the checkpoint of step {self.step}")
        state = {
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "skipped_by_cause": dict(self.skipped_by_cause),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": ckpt.rng_state(),
            "loss_fn": ckpt.plain_state(self.loss_fn),
            "schedules": {"beta": ckpt.plain_state(self.beta_schedule),
                          "lr": ckpt.plain_state(self.lr_controller)},
            "extra": self.extra_state(),
            "config": self.config.model_dump(mode="json"),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.dist.enabled:
            state["ranks"] = distributed.all_gather_object(self.rank_state())
        cfg = self.config.training
        if self.engine.sharded:
            path = ckpt.save_sharded_checkpoint(self.output_dir, self.step, self.engine.root,
                                                self.optimizer, self.model, self.tokenizer, state,
                                                cfg.keep_last)
        else:
            path = self.output_dir / "checkpoints" / f"step_{self.step:06d}"
            if self.dist.is_main:
                state = {**state, "optimizer": self.optimizer.state_dict()}
                path = ckpt.save_checkpoint(self.output_dir, self.step, self.model, self.tokenizer,
                                            state, cfg.keep_last)
        distributed.barrier()
        self.saved_step = self.step
        return path

    def save_final(self) -> Path:
        """``final/``: a plain Hugging Face directory (LoRA merged, FSDP2 shards gathered)."""
        from rlfoundry.models.lora import merged_copy

        final = self.output_dir / "final"
        self._refuse_nonfinite("final/")
        if self.engine.sharded:
            full = ckpt.full_state_dict(self.engine.root)  # collective; rank 0 holds the tensors
            if self.dist.is_main:
                ckpt.save_model_dir(merged_copy(self.plain_policy(full)), self.tokenizer, final)
        elif self.dist.is_main:
            ckpt.save_model_dir(merged_copy(self.model), self.tokenizer, final)
        distributed.barrier()
        return final

    def _refuse_nonfinite(self, what: str) -> None:
        """NonFiniteError (on every rank) when any weight is NaN/inf: never save such a model."""
        bad = ckpt.nonfinite_parameters(self.model, self.extra_modules(), self.loss_parameters())
        if self.dist.enabled:
            bad = sorted({b for rank in distributed.all_gather_object(bad) for b in rank})
        found = ckpt.list_checkpoints(self.output_dir) if bad else []
        ckpt.refuse_nonfinite(bad, what, self.step, found[-1] if found else None)

    def plain_policy(self, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A new, unsharded policy on the CPU holding ``state_dict`` (to save FSDP2 weights)."""
        from rlfoundry.models import build_policy

        model = build_policy(self.config.model, self.tokenizer, seed=self.config.training.seed)
        ckpt.load_state_dict_strict(model, state_dict, "the gathered FSDP2 state")
        return model

    def _restore(self, path: Path) -> str:
        """Load checkpoint ``path`` into the model, optimizer and loop state; return a note
        for the log ('' unless the per-rank RNG streams had to be re-seeded)."""
        try:  # any world size and strategy (see reshard)
            state = reshard.restore(path, self.engine, self.model, self.optimizer)
            return self._load_loop_state(state)
        except (KeyError, ValueError, RuntimeError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointError(  # the config matched (checked before), so the data or the file changed
                f"checkpoint '{path}' does not fit this run ({type(e).__name__}: {e}); did the data "
                f"or model files behind the same config change, or was the checkpoint edited? Use "
                f"another training.output_dir or set training.resume to a matching checkpoint"
            ) from e

    def _load_loop_state(self, state: dict[str, Any]) -> str:
        ckpt.check_finite_settings(state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        ckpt.set_rng_state(state["rng"])
        ckpt.restore_plain_state(self.loss_fn, state["loss_fn"])
        schedules = state.get("schedules", {})
        ckpt.restore_plain_state(self.beta_schedule, schedules.get("beta", {}))
        ckpt.restore_plain_state(self.lr_controller, schedules.get("lr", {}))
        self.load_extra_state(state["extra"])
        self.step, self.skipped_steps = state["step"], state["skipped_steps"]
        self.skipped_by_cause = dict(state.get("skipped_by_cause", {}))
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if not self.dist.enabled:
            return ""
        ranks = state.get("ranks")
        if ranks is not None and len(ranks) == self.dist.world_size:
            self.load_rank_state(ranks[self.dist.rank])
            return ""
        self.load_rank_state(None)
        return (f" (written by {len(ranks or [None])} process(es), resumed on "
                f"{self.dist.world_size}: per-rank RNG streams re-seeded)")


class SkipStep(Exception):
    """Raised while preparing a step (``Trainer.nonfinite`` under ``on_nonfinite: skip_batch``)
    to skip it: the loop counts it, logs why and moves on without an update."""

    def __init__(self, what: str, detail: str, metrics: dict[str, Any] | None = None) -> None:
        super().__init__(f"non-finite {what} ({detail})")
        self.what, self.detail, self.metrics = what, detail, dict(metrics or {})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
