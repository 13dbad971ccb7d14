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
    """Leave the process group (registered at exit by ``init_distributed``; skipped after a
    peer was lost, when leaving would wait on the missing rank)."""
    if _initialized() and not _peer_lost:
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



# ---- a lost rank ------------------------------------------------------------------------------
# What torch's backends say when a peer's socket closes or a collective gives up waiting.
PEER_FAILURE_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                        "Socket Timeout", "Connection refused", "NCCL communicator was aborted",
                        "Timed out waiting", "timed out")
_peer_lost = False  # set once a collective failed: leaving the group would only fail again


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) is a collective that failed
    because another rank is gone: torch's ``DistError`` family, or the backend's socket
    errors surfacing as ``RuntimeError`` (DDP's all-reduce runs inside autograd)."""
    import torch.distributed as dist

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, getattr(dist, "DistError", ())) and not isinstance(
                error, getattr(dist, "DistStoreError", ())):
            return True
        if isinstance(error, RuntimeError) and any(m in str(error) for m in PEER_FAILURE_MARKERS):
            return True
        error = error.__cause__ or error.__context__
    return False


def silent_ranks(wait_s: float = 3.0) -> list[int] | None:
    """After a failed collective: every rank still alive checks in at the rendezvous store;
    return the ranks that did not within ``wait_s`` seconds (None when the store itself is
    unreachable, e.g. the node that hosted it is the one that went away)."""
    import time

    import torch.distributed as dist

    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=wait_s))
        prefix = f"rlfoundry/alive/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        rank, world = dist.get_rank(), dist.get_world_size()
        store.set(prefix + str(rank), "1")
        deadline = time.monotonic() + wait_s
        while True:
            silent = [r for r in range(world) if not store.check([prefix + str(r)])]
            if not silent or time.monotonic() >= deadline:
                return silent
            time.sleep(0.05)
    except (RuntimeError, ValueError, AttributeError):  # the store is gone with its host
        return None


def peer_lost_error(error: BaseException, step: int, last_checkpoint: object | None):
    """The :class:`~rlfoundry.errors.PeerLostError` a surviving rank raises instead of the
    backend's traceback: which rank(s) went away (when the store can tell), at which step,
    what is intact, and how to go on."""
    from rlfoundry.errors import PeerLostError

    global _peer_lost
    _peer_lost = True
    me = current().rank
    lost = silent_ranks()
    who = (f"rank(s) {', '.join(map(str, lost))} stopped answering" if lost
           else "another rank stopped answering (which one could not be determined)")
    cause = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    kept = (f"the last checkpoint, {last_checkpoint}, is intact" if last_checkpoint
            else "no checkpoint had been written yet")
    return PeerLostError(
        f"rank {me}: {who} during step {step + 1}: its process or node is gone ({cause}). "
        f"This rank stops too; {kept}. Restart the job on every node with "
        f"training.resume=auto (a different number of processes works too)", lost=lost)


# ---- the command that started this process ----------------------------------------------------
def under_torchrun() -> bool:
    """Whether torchrun (torch.distributed.run / an elastic agent) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_WORLD_SIZE" in os.environ


def parent_argv() -> list[str] | None:
    """The command line of the parent process (torchrun's agent for its workers; Linux
    ``/proc``), or None when it cannot be read."""
    try:
        raw = open(f"/proc/{os.getppid()}/cmdline", "rb").read()  # noqa: SIM115 (tiny read)
    except OSError:
        return None
    words = [w.decode(errors="surrogateescape") for w in raw.split(b"\0") if w]
    return words or None


def launcher_words(own_args: list[str], parent: list[str] | None = None) -> list[str]:
    """The launcher part of the command that started this rank, i.e. everything before this
    program's own arguments ``own_args`` (``sys.argv[1:]``): ``torchrun --nproc_per_node=2
    ... -m rlfoundry``. Read from torchrun's own command line (``parent``, default: the parent
    process's) when it ends with ``own_args``; else rebuilt from the variables torchrun sets
    (``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``MASTER_ADDR``/``MASTER_PORT``).
    ``[]`` without torchrun."""
    if not under_torchrun():
        return []
    parent = parent_argv() if parent is None else parent
    if parent and len(parent) > len(own_args) and parent[len(parent) - len(own_args):] == own_args:
        words = parent[:len(parent) - len(own_args)]
        if len(words) > 1 and os.path.basename(words[1]) == "torchrun":
            words = ["torchrun", *words[2:]]  # `python /path/bin/torchrun` -> `torchrun`
        return words
    env = os.environ
    per_node = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    words = ["torchrun", f"--nnodes={max(1, launched_world_size() // per_node)}",
             f"--nproc_per_node={per_node}"]
    if launched_world_size() > per_node:
        words.append(f"--node_rank={env.get('GROUP_RANK', '0')}")
    if "MASTER_ADDR" in env:
        words += [f"--master_addr={env['MASTER_ADDR']}", f"--master_port={env.get('MASTER_PORT', '29500')}"]
    return [*words, "-m", "rlfoundry"]
