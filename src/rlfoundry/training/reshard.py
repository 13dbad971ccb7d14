"""Resume a checkpoint on any number of processes, with either strategy.

Two checkpoint layouts exist (:mod:`rlfoundry.training.checkpoint`): *plain* (one process or
DDP: ``model/`` holds the whole policy, ``optimizer.safetensors`` the optimizer state keyed by
parameter position) and *sharded* (FSDP2: ``sharded/`` holds every rank's shards of the
wrapper module and of the optimizer, keyed by parameter name, written with
``torch.distributed.checkpoint``). Either can be resumed by a run of any world size and
strategy:

==================  =======================================================================
checkpoint -> run   how
==================  =======================================================================
plain -> plain      the files as they are (the optimizer keys are positions, which do not
                    depend on the number of ranks)
sharded -> FSDP2    ``torch.distributed.checkpoint`` re-shards to the new number of ranks
sharded -> plain    each rank reads every shard into its whole model and optimizer
                    (``dcp.load(no_dist=True)``: no collective, any world size)
plain -> FSDP2      the weights are loaded into the whole policy *before* it is sharded
                    (:func:`preload_weights`); the optimizer state is renamed from
                    positions to parameter names and split into this rank's shards
                    (``set_optimizer_state_dict(full_state_dict=True)``)
==================  =======================================================================

Weights and optimizer moments come back bit for bit, so a resumed run continues the
uninterrupted one; only the per-rank random streams are re-seeded when the number of ranks
changed (they are per rank by nature).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from rlfoundry.errors import CheckpointError
from rlfoundry.training import checkpoint as ckpt


def preload_weights(path: Path | None, model: torch.nn.Module, strategy: str) -> bool:
    """Before FSDP2 shards ``model``: load a plain checkpoint's weights (or LoRA adapter) into
    the whole model, so sharding then keeps each rank's share of the resumed weights. Returns
    whether it loaded anything (only for a plain checkpoint resumed under FSDP2)."""
    if path is None or strategy != "fsdp2" or ckpt.is_sharded(path):
        return False
    ckpt.load_checkpoint(path, model)
    return True


def restore(path: Path, engine, model: torch.nn.Module, optimizer) -> dict[str, Any]:
    """Load checkpoint ``path``'s weights and optimizer state into this run (``engine``: its
    :class:`~rlfoundry.training.parallel.ParallelPolicy`); return the trainer state. Under
    FSDP2 every rank must call it (collective); the weights of a plain checkpoint must have
    been loaded by :func:`preload_weights`."""
    sharded_checkpoint = ckpt.is_sharded(path)
    if engine.sharded and sharded_checkpoint:
        return ckpt.load_sharded_checkpoint(path, engine.root, optimizer)
    if sharded_checkpoint:
        return _sharded_into_whole(path, engine.root, optimizer)
    state = ckpt.read_state(path) if engine.sharded else ckpt.load_checkpoint(path, model)
    if "optimizer" not in state:
        raise CheckpointError(f"checkpoint '{path}' has no optimizer state "
                              f"({ckpt.OPTIMIZER_FILE} is missing)")
    ckpt.check_finite_settings(state)
    if engine.sharded:
        _positions_into_shards(state["optimizer"], engine.root, optimizer)
    else:
        optimizer.load_state_dict(state["optimizer"])
    return state


def _sharded_into_whole(path: Path, root: torch.nn.Module, optimizer) -> dict[str, Any]:
    """A sharded checkpoint into an unsharded ``root`` (one process, or each DDP rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(root, optimizer)
    bundle = {"model": model_state, "optimizer": optim_state}
    with warnings.catch_warnings():  # reading every shard in this one process is the point
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(bundle, checkpoint_id=Path(path) / ckpt.SHARDED_DIR, no_dist=True)
    set_state_dict(root, optimizer, model_state_dict=bundle["model"],
                   optim_state_dict=bundle["optimizer"])
    return ckpt.read_state(path)


def by_name(positional: dict[str, Any], root: torch.nn.Module, optimizer) -> dict[str, Any]:
    """A plain ``optimizer.state_dict()`` (parameters numbered in the order of the optimizer's
    groups) keyed by the parameters' names in ``root`` instead: the layout of
    ``get_optimizer_state_dict(full_state_dict=True)``."""
    names = {id(p): n for n, p in root.named_parameters()}  # a tied weight: its first name
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if len(params) != sum(len(g["params"]) for g in positional["param_groups"]):
        raise ValueError(f"the checkpoint's optimizer holds "
                         f"{sum(len(g['params']) for g in positional['param_groups'])} "
                         f"parameters, this run's {len(params)}")
    missing = [i for i, p in enumerate(params) if id(p) not in names]
    if missing:
        raise ValueError(f"optimizer parameters {missing[:5]} are not part of the sharded "
                         f"model (learnable loss parameters cannot be sharded)")
    fqn = [names[id(p)] for p in params]
    state = {fqn[int(i)]: value for i, value in positional["state"].items()}
    groups = [{**g, "params": [fqn[int(i)] for i in g["params"]]}
              for g in positional["param_groups"]]
    return {"state": state, "param_groups": groups}


def _positions_into_shards(positional: dict[str, Any], root: torch.nn.Module, optimizer) -> None:
    """A plain optimizer state into the FSDP2 optimizer: renamed, then split into shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(root, optimizer, by_name(positional, root, optimizer),
                             options=StateDictOptions(full_state_dict=True))
