"""Process-group helpers for runs launched with ``torchrun`` (data parallel, one or more nodes).

``torchrun`` starts one process per device and tells each its place through the environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). ``init_distributed``
reads it and joins the process group (gloo on CPU, nccl on CUDA). Every helper here is a
no-op (or the identity) in a single-process run, which never imports or initialises
``torch.distributed``: a run without ``torchrun`` is exactly the plain single-process loop.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from rlfoundry.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its global rank, the number of processes and its local rank."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE = DistInfo()


def launched_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when the process was started without it)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init_distributed(device_type: str, backend: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Join the torchrun process group (once per process) and return this process's place.

    ``backend``: 'auto' picks nccl for CUDA and gloo for CPU. Without torchrun
    (``WORLD_SIZE`` unset or 1) nothing is initialised and ``DistInfo()`` is returned.
    """
    if launched_world_size() == 1:
        return SINGLE
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("training.distributed: WORLD_SIZE > 1 but this torch build has no "
                          "torch.distributed support")
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl" and device_type != "cuda":
        raise ConfigError("training.distributed.backend: 'nccl' needs training.device cuda; "
                          "use 'gloo' (or 'auto') on CPU")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        atexit.register(cleanup)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def current() -> DistInfo:
    """This process's place in the running process group (``DistInfo()`` when there is none)."""
    if not _initialized():
        return SINGLE
    import torch.distributed as dist

    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def cleanup() -> None:
    """Leave the process group (registered at exit by ``init_distributed``)."""
    if _initialized():
        import torch.distributed as dist

        dist.destroy_process_group()


def _comm_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all ranks (a new tensor on the input's device)."""
    if not _initialized():
        return tensor
    import torch.distributed as dist

    out = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_reduce_max(value: int) -> int:
    """The largest ``value`` over all ranks."""
    if not _initialized():
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.long, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects; ``[obj]`` without a group)."""
    if not _initialized():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not _initialized():
        return obj
    import torch.distributed as dist

    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of ``range(n)``: shares differ by at most one item
    (lower ranks take the extra ones), and concatenated in rank order they are ``range(n)``."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))

