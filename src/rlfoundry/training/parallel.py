"""The policy as a training step sees it: plain (one process), DDP, or FSDP2 (under torchrun).

A trainer runs its training forward as ``engine(fn, *args)``, which calls ``fn(model, *args)``
through the wrapper, so DDP's gradient all-reduce and FSDP2's parameter all-gather /
gradient reduce-scatter see every forward whatever the trainer computes in it (chunked
log-probs, a value head). Both wrappers are told to *sum* gradients over ranks instead of
averaging them (a DDP communication hook; FSDP2's gradient divide factor set to 1), and each
rank's loss is weighted by its share of the global count, so the synchronised gradient is the
single-process gradient of the global batch at any number of ranks: no multiply-by-world-size
and divide-back, which is not exact in floating point when the world size is not a power of
two.

A frozen module (a full reference model) can be sharded too (:meth:`ParallelPolicy.add_frozen`):
under FSDP2 each rank then holds 1/world of it, gathered layer by layer for each forward.

Rollouts and GRPO's old/reference log-probs run on the module itself, without gradients.
Under FSDP2 they (and evaluation) run inside ``full_parameters()``, which gathers every shard
once and keeps it until the block ends, so ranks may run different numbers of forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from rlfoundry.errors import ConfigError
from rlfoundry.training.distributed import DistInfo


class _Forward(torch.nn.Module):
    """One module around the policy and its heads whose forward is ``fn(policy, ...)``."""

    def __init__(self, model: torch.nn.Module, extras: list[torch.nn.Module]):
        super().__init__()
        self.model = model
        self.extras = torch.nn.ModuleList(extras)

    def forward(self, fn: Callable[..., Any], *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def _no_forward_buffer_sync(ddp_cls) -> dict[str, bool]:
    """DDP option that skips the per-forward buffer broadcast (the buffers here are constant
    rotary tables); its name changed in newer torch versions."""
    import inspect

    params = inspect.signature(ddp_cls.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {
        "broadcast_buffers": False}


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated decoder layers FSDP2 shards one by one (the model's ``_no_split_modules``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


class ParallelPolicy:
    """Wraps the policy (and extra trainable heads) for ``strategy`` in a world of ``dist``.

    ``root`` is the wrapper module holding the policy (as ``model``) and the heads (as
    ``extras``); its state dict is what FSDP2 checkpoints hold.
    """

    def __init__(self, model: torch.nn.Module, extras: list[torch.nn.Module], strategy: str,
                 dist: DistInfo, device: torch.device):
        self.model = model
        self.root = _Forward(model, extras)
        self.strategy = strategy if dist.enabled else "single"
        self.loss_scale = 1.0  # gradients are summed over ranks (kept for custom loops)
        self._ddp = None
        self._blocks: list[torch.nn.Module] = []
        self._frozen: list[list[torch.nn.Module]] = []  # sharded frozen modules: layers + root
        self._frozen_roots: dict[int, torch.nn.Module] = {}
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.root, device_ids=ids,
                                                **_no_forward_buffer_sync(DistributedDataParallel))
            self._ddp.register_comm_hook(None, _sum_allreduce)
        elif self.strategy == "fsdp2":
            self._blocks = _fully_shard(self.root, model)
            with torch.no_grad():  # FSDP2 makes the first module to run forward its root:
                self.root(_nothing)  # claim it now, before any rollout runs a layer directly
            self.root.reshard()  # the sharded parameters are the ones the optimizer must get

    def __call__(self, fn: Callable[..., Any], *args, **kwargs):
        if self._ddp is not None:
            return self._ddp(fn, *args, **kwargs)
        if self.sharded:
            return self.root(fn, *args, **kwargs)
        return fn(self.model, *args, **kwargs)

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp2"

    def sync_gradients(self, sync: bool):
        """DDP: skip the all-reduce (``no_sync``) for all but the last micro-batch of a step.
        FSDP2 reduce-scatters every micro-batch (keeping gradients sharded)."""
        if self._ddp is not None and not sync:
            return self._ddp.no_sync()
        return nullcontext()

    @contextmanager
    def full_parameters(self) -> Iterator[None]:
        """FSDP2: gather all parameters for a stretch of gradient-free forwards (the count may
        differ across ranks), then re-shard. A no-op for the other strategies."""
        if not self.sharded:
            yield
            return
        modules = [*self._blocks, self.root] + [m for group in self._frozen for m in group]
        resharding = [*self._blocks] + [m for group in self._frozen for m in group]
        for module in modules:
            module.set_reshard_after_forward(False, recurse=False)
            module.unshard()
        try:
            yield
        finally:
            for module in modules:
                module.reshard()
            for module in resharding:  # the policy root keeps FSDP2's root default (no reshard)
                module.set_reshard_after_forward(True, recurse=False)

    def add_frozen(self, module: torch.nn.Module) -> None:
        """Shard a frozen, gradient-free ``module`` (a full reference model) like the policy
        under FSDP2: each decoder layer and then the module itself become ``fully_shard``
        units that re-shard after every forward, so a rank holds only its 1/world share
        between forwards. Other strategies keep the module whole (a no-op)."""
        if not self.sharded:
            return
        from torch.distributed.fsdp import fully_shard

        blocks = transformer_blocks(module)
        wrapper = _Forward(module, [])  # its forward is the one FSDP2 hooks: see run_frozen
        for block in blocks:
            fully_shard(block, reshard_after_forward=True)
        fully_shard(wrapper, reshard_after_forward=True)  # explicit: the root re-shards too
        with torch.no_grad():
            wrapper(_nothing)  # claim the root before any layer runs on its own
        self._frozen.append([*blocks, wrapper])
        self._frozen_roots[id(module)] = wrapper

    def run_frozen(self, module: torch.nn.Module, fn: Callable[..., Any], *args, **kwargs):
        """``fn(module, *args, **kwargs)`` for a module given to :meth:`add_frozen`: under
        FSDP2 through its sharded wrapper (embeddings and head gathered for the call, each
        layer for its own forward); a plain call otherwise."""
        wrapper = self._frozen_roots.get(id(module))
        if wrapper is None:
            return fn(module, *args, **kwargs)
        return wrapper(fn, *args, **kwargs)

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip to ``max_norm`` by the global gradient norm (over all shards); return it."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _nothing(model: torch.nn.Module) -> None:
    return None


def _sum_allreduce(process_group, bucket):
    """DDP communication hook: all-reduce a gradient bucket as a plain SUM (DDP's default
    divides by the world size, which the loss weights already account for)."""
    import torch.distributed as dist

    group = process_group if process_group is not None else dist.group.WORLD
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def _fully_shard(root: torch.nn.Module, model: torch.nn.Module) -> list[torch.nn.Module]:
    """Shard each decoder layer of ``model``, then ``root`` (embeddings, head, extras);
    return the layers."""
    from torch.distributed.fsdp import fully_shard

    blocks = transformer_blocks(model)
    if not blocks:
        raise ConfigError(
            f"training.distributed.strategy: fsdp2 found no decoder layers to shard in "
            f"{type(model).__name__} (its _no_split_modules is empty); use strategy: ddp"
        )
    for block in blocks:
        fully_shard(block)
    fully_shard(root)
    for module in [*blocks, root]:
        _sum_not_average(module)
    return blocks


def _sum_not_average(module) -> None:
    """FSDP2: reduce gradients with a plain SUM (the loss weights are already global shares).
    A divide factor of 1 alone would make fp32/bf16 gradients use NCCL's PREMUL_SUM, which
    gloo lacks; forcing sum-type reductions keeps every backend on SUM (the division by 1
    that remains is exact)."""
    if hasattr(module, "set_force_sum_reduction_for_comms"):
        module.set_force_sum_reduction_for_comms(True)
    if hasattr(module, "set_gradient_divide_factor"):
        module.set_gradient_divide_factor(1.0)
    else:  # torch < 2.7 named it after the reduce-scatter
        module.set_reduce_scatter_divide_factor(1.0)
