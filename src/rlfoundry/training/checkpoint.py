"""Atomic, verified, resumable checkpoints in Hugging Face format.

Layout: ``<output_dir>/checkpoints/step_000120/{model/, trainer_state.safetensors,
optimizer.safetensors, rng_state.safetensors, manifest.json}``. A checkpoint is written into a
temporary sibling directory, synced to disk, sealed with a manifest (size and SHA-256 of every
file, see :mod:`rlfoundry.training.manifest`) and renamed into place only when complete, so a
crash mid-write never leaves a directory that ``resume: auto`` would pick up; the leftovers of
killed writers are deleted when the next run starts. ``final/`` is written the same way.

Trainer state is stored without pickle (:mod:`rlfoundry.training.state_io`); checkpoints of
rlfoundry versions that wrote ``trainer_state.pt`` (a pickle, which can run code when loaded)
are refused. ``resume: auto`` verifies the newest checkpoint against its manifest and falls
back to the newest intact one, warning about each it skipped and why.

``model/`` holds the full weights, or only the adapter when LoRA is used. Under FSDP2 every
rank writes its own shards of the model and optimizer with ``torch.distributed.checkpoint``
into ``sharded/`` (no rank ever holds the whole state) and ``model/`` keeps the config and
tokenizer; ``rlfoundry export`` consolidates such a checkpoint into one directory, and it can
be resumed on any number of ranks.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from rlfoundry.errors import CheckpointError, NonFiniteError
from rlfoundry.training import manifest, state_io
from rlfoundry.training.ownership import config_fingerprint
from rlfoundry.training.storage import describe_write_failure

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.safetensors"  # loop, schedules, loss, algorithm state, run config
OPTIMIZER_FILE = "optimizer.safetensors"  # the optimizer state (under FSDP2: in sharded/)
RNG_FILE = "rng_state.safetensors"  # random generators, of every rank
LEGACY_STATE_FILE = "trainer_state.pt"  # the pickle format of rlfoundry < 0.3: never loaded
PART_KEYS = {OPTIMIZER_FILE: ("optimizer",), RNG_FILE: ("rng", "ranks")}
REQUIRED_KEYS = ("step", "skipped_steps", "scheduler", "sampler", "rng", "loss_fn", "extra", "config")
STATE_TYPES = {"step": int, "skipped_steps": int, "skipped_by_cause": dict, "scheduler": dict,
               "sampler": dict, "rng": dict, "loss_fn": dict, "extra": dict, "config": dict,
               "optimizer": dict}
SHARDED_DIR = "sharded"
POLICY_PREFIX = "model."  # the policy inside the FSDP2 wrapper whose state sharded/ holds
TMP_PREFIX = ".tmp_step_"
TRASH_PREFIX = ".trash_"
LEFTOVER = re.compile(r"^\.(?:tmp|trash)_.*_(\d+)$")
FINAL_LEFTOVER = re.compile(r"^\.(?:tmp|trash)_final_(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`; CheckpointError when the stored state is malformed."""
    try:
        random.setstate(state["python"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"the checkpoint's random-generator state ({RNG_FILE}) is malformed "
                              f"({type(e).__name__}: {e}); {_RESUME_ELSEWHERE}") from e


def plain_state(obj: Any) -> dict[str, Any]:
    """Checkpointable state of a loss/schedule object: its ``state_dict()`` if it has one,
    else its plain-data attributes (numbers, strings, lists, dicts, tensors)."""
    if obj is None:
        return {}
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return {"state_dict": obj.state_dict()}
    return {"attrs": {k: v for k, v in vars(obj).items() if _is_plain(v) and k != "cfg"}}


def _is_plain(value: Any) -> bool:
    """Plain data all the way down; attributes holding code (functions, modules, other
    losses, e.g. a dict of objective functions) are configuration, not state, and are skipped."""
    if isinstance(value, (int, float, str, bool, torch.Tensor, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_plain(v) for k, v in value.items())
    return False


def restore_plain_state(obj: Any, state: dict[str, Any]) -> None:
    if obj is None or not state:
        return
    if "state_dict" in state:
        obj.load_state_dict(state["state_dict"])
    for k, v in state.get("attrs", {}).items():
        setattr(obj, k, v)


def save_pretrained(model, tokenizer, directory: Path) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per save would drown the training bar
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, state: dict[str, Any],
                    keep_last: int | None = None) -> Path:
    """Write checkpoint ``step`` atomically and prune to the newest ``keep_last``.

    Everything is written into ``.tmp_step_N_<pid>``, synced to disk, and renamed to
    ``step_N`` only when complete; a failure (a full disk raises ``OSError``,
    ``SafetensorError`` or ``RuntimeError`` depending on the writer) removes the partial
    directory and raises :class:`CheckpointError`, leaving every earlier checkpoint intact.
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f"{TMP_PREFIX}{step:06d}_{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        save_pretrained(model, tokenizer, tmp / "model")
        write_state(state, tmp)
        _seal(tmp, step, state)
        _publish(tmp, final)
    except state_io.UnsupportedState as e:
        raise CheckpointError(f"could not write the checkpoint of step {step}: {e}"
                              + _discard(tmp)) from e
    except Exception as e:  # the writers report a full disk with different exception types
        message = describe_write_failure(f"the checkpoint of step {step}", root, e)
        leftover = _discard(tmp)
        raise CheckpointError(message + leftover) from e
    if keep_last:
        prune_checkpoints(output_dir, keep_last, _fingerprint(state))
    return final


def write_state(state: dict[str, Any], directory: Path) -> None:
    """The trainer state as three pickle-free files: optimizer, RNG, and the rest."""
    rest = dict(state)
    for name, keys in PART_KEYS.items():
        part = {k: rest.pop(k) for k in keys if k in rest}
        if part:
            state_io.save_state(part, directory / name)
    state_io.save_state(rest, directory / STATE_FILE)


def _fingerprint(state: dict[str, Any]) -> str | None:
    return config_fingerprint(state["config"]) if isinstance(state.get("config"), dict) else None


def _seal(tmp: Path, step: int | None, state: dict[str, Any] | None) -> None:
    """Sync every file, then write the manifest (synced) last."""
    _fsync_tree(tmp)
    info: dict[str, Any] = {"step": step}
    if state is not None:
        info["config_fingerprint"] = _fingerprint(state)
    manifest.write_manifest(tmp, info)
    _fsync_dir(tmp)


def save_model_dir(model, tokenizer, directory: str | Path, what: str = "the final model") -> Path:
    """Write a plain Hugging Face directory atomically: into ``.tmp_<name>_<pid>`` beside it,
    synced and sealed with a manifest, then renamed into place (an older copy is renamed aside
    first and deleted after). On failure nothing is left at ``directory`` that was not there
    before (an older copy stays) and :class:`CheckpointError` says why."""
    directory = Path(directory)
    tmp = directory.with_name(f"{TMP_PREFIX.replace('_step_', '_')}{directory.name}_{os.getpid()}")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        save_pretrained(model, tokenizer, tmp)
        _seal(tmp, None, None)
        _publish(tmp, directory)
    except Exception as e:  # the writers report a full disk with different exception types
        message = describe_write_failure(f"{what} ('{directory.name}')", directory.parent, e)
        raise CheckpointError(message + _discard(tmp)) from e
    return directory


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` to ``final`` (replacing an older copy) and sync the parent."""
    if final.exists():  # rename the old copy away first: directories cannot be replaced in one step
        trash = final.with_name(f"{TRASH_PREFIX}{final.name}_{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def _discard(tmp: Path) -> str:
    """Remove a partial checkpoint directory; '' or a sentence saying it could not be removed."""
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
    except OSError as e:
        return f" The partial directory '{tmp}' could not be removed ({e}); delete it by hand."
    return ""


def _fsync_tree(path: Path) -> None:
    """Flush every file and directory under ``path`` to disk (so a rename publishes data)."""
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # cannot sync a directory here
            raise
    finally:
        os.close(fd)


def prune_checkpoints(output_dir: str | Path, keep_last: int,
                      fingerprint: str | None = None) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints of this run (those whose
    manifest carries ``fingerprint``; another run's checkpoints are never touched); return the
    deleted ones.

    Each is renamed away before it is deleted, so an interrupted deletion never leaves a
    half-deleted ``step_N`` that looks complete. Failures are logged, not raised: training
    goes on with an extra checkpoint on disk.
    """
    removed = []
    ours = [p for p in list_checkpoints(output_dir) if _manifest_fingerprint(p) == fingerprint]
    for old in ours[:-keep_last]:
        trash = old.with_name(f"{TRASH_PREFIX}{old.name}_{os.getpid()}")
        try:
            os.replace(old, trash)
            shutil.rmtree(trash)
        except OSError as e:
            logger.warning("could not delete old checkpoint '%s' (%s); delete it by hand", old, e)
            continue
        removed.append(old)
    return removed


def _manifest_fingerprint(path: Path) -> str | None:
    try:
        return manifest.read_manifest(path).get("config_fingerprint")
    except ValueError:
        return None


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete partial checkpoint and final/ directories left by killed runs (``.tmp_*`` and
    ``.trash_*`` whose writer process is gone); return them. Nothing ever reads them."""
    root = Path(output_dir) / "checkpoints"
    candidates = [(p, LEFTOVER.match(p.name)) for p in root.iterdir()] if root.is_dir() else []
    if Path(output_dir).is_dir():
        candidates += [(p, FINAL_LEFTOVER.match(p.name)) for p in Path(output_dir).iterdir()]
    removed = []
    for p, m in candidates:
        if not (m and p.is_dir()) or _alive(int(m.group(1))):
            continue
        try:
            shutil.rmtree(p)
        except OSError as e:
            logger.warning("could not delete partial checkpoint '%s' (%s); delete it by hand", p, e)
            continue
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing it (it is only now starting)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_complete(path: Path) -> bool:
    """A published checkpoint: its manifest (written last) is there. Whether its files are
    intact is :func:`verify_checkpoint`'s question."""
    return (path / manifest.MANIFEST).is_file()


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Published checkpoints, oldest first."""
    return [p for p in step_dirs(output_dir) if is_complete(p)]


def step_dirs(output_dir: str | Path) -> list[Path]:
    """Every ``step_N`` directory, complete or not, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def verify_checkpoint(path: Path) -> list[str]:
    """What is wrong with checkpoint ``path`` ('file: reason' each; [] when it is intact)."""
    path = Path(path)
    if (path / LEGACY_STATE_FILE).is_file() and not (path / STATE_FILE).is_file():
        return [f"{LEGACY_STATE_FILE}: written by an older rlfoundry as a pickle, which can run "
                f"code when loaded; it is not loaded (see docs/reliability.md, 'Checkpoint "
                f"format')"]
    sharded = (path / SHARDED_DIR).is_dir()
    required = (STATE_FILE, RNG_FILE) + ((f"{SHARDED_DIR}/.metadata",) if sharded else (OPTIMIZER_FILE,))
    problems = manifest.verify(path, required)
    if not problems:
        step = manifest.read_manifest(path).get("step")
        m = STEP_DIR.match(path.name)
        if m and step != int(m.group(1)):
            problems.append(f"{manifest.MANIFEST}: written for step {step}, not {int(m.group(1))}")
    return problems


def find_resumable(output_dir: str | Path) -> tuple[Path | None, dict[Path, list[str]]]:
    """The newest intact checkpoint of ``output_dir`` (None if none) and the problems of each
    newer one that was skipped (or of every one, when none is intact)."""
    skipped: dict[Path, list[str]] = {}
    for path in reversed(step_dirs(output_dir)):
        problems = verify_checkpoint(path)
        if not problems:
            return path, skipped
        skipped[path] = problems
    return None, skipped


def _problem_list(skipped: dict[Path, list[str]]) -> str:
    return "\n".join(f"  {p}: " + "; ".join(problems) for p, problems in skipped.items())


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """'auto' -> newest intact checkpoint (None when there is none at all), warning about each
    damaged newer one it skips; a path -> that checkpoint, which must be intact."""
    if resume is None:
        return None
    if resume == "auto":
        found, skipped = find_resumable(output_dir)
        if found is None and skipped:
            raise CheckpointError(
                f"training.resume=auto: no intact checkpoint under '{Path(output_dir) / 'checkpoints'}':\n"
                f"{_problem_list(skipped)}\nDelete the damaged ones to start over, or set "
                f"training.resume to a checkpoint you have a good copy of")
        if skipped:
            logger.warning("resume: skipped damaged checkpoint(s), resuming from %s:\n%s",
                           found, _problem_list(skipped))
        return found
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"training.resume: '{resume}' is not a checkpoint directory")
    problems = verify_checkpoint(path)
    if problems:
        raise CheckpointError(f"training.resume: checkpoint '{resume}' is damaged or incomplete: "
                              + "; ".join(problems))
    return path


def load_checkpoint(path: Path, model) -> dict[str, Any]:
    """Load weights (or a LoRA adapter) into ``model`` (in place); return the trainer state.

    The files are read before the model is touched, so an unreadable checkpoint raises
    :class:`CheckpointError` and leaves the model as it was.
    """
    from safetensors.torch import load_file

    from rlfoundry.models.lora import is_adapter_dir, load_adapter_weights

    adapter = is_adapter_dir(path / "model")
    weights = {}
    state = read_state(path)
    if "optimizer" not in state:
        raise CheckpointError(f"checkpoint '{path}' has no optimizer state ({OPTIMIZER_FILE} is "
                              f"missing)")
    try:
        for f in [] if adapter else sorted((path / "model").glob("*.safetensors")):
            weights.update(load_file(f))
    except Exception as e:  # safetensors raises its own type
        raise CheckpointError(_unreadable(path, e)) from e
    if adapter:
        load_adapter_weights(model, path / "model")
        return state
    if not weights:
        raise CheckpointError(f"checkpoint '{path}' has no model weights")
    load_state_dict_strict(model, weights, f"checkpoint '{path}'")
    return state


def check_finite_settings(state: dict[str, Any]) -> None:
    """ValueError naming the key when the optimizer's hyperparameters or the scheduler's numbers
    in a checkpoint are NaN/inf (a resealed, edited checkpoint: the manifest is no signature)."""
    import math

    def walk(value: Any, where: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where} is {value} in the checkpoint (edited?)")
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")

    optimizer = state.get("optimizer")
    if isinstance(optimizer, dict):
        walk(optimizer.get("param_groups"), "optimizer.param_groups")
    walk(state.get("scheduler"), "scheduler")


def saved_config(path: Path) -> dict[str, Any] | None:
    """The run config stored in checkpoint ``path`` (reads only its small state file)."""
    state = state_io.load_state(Path(path) / STATE_FILE)
    config = state.get("config") if isinstance(state, dict) else None
    return config if isinstance(config, dict) else None


def read_state(path: Path) -> dict[str, Any]:
    """The trainer state of checkpoint ``path`` (its three state files merged; never
    unpickled); CheckpointError naming the file when one is missing or cannot be read."""
    path = Path(path)
    if (path / LEGACY_STATE_FILE).is_file() and not (path / STATE_FILE).is_file():
        raise CheckpointError(f"checkpoint '{path}': {verify_checkpoint(path)[0]}")
    state: dict[str, Any] = {}
    for name in (STATE_FILE, RNG_FILE, OPTIMIZER_FILE):
        if not (path / name).is_file():
            if name == OPTIMIZER_FILE:
                continue  # FSDP2 keeps it in sharded/; load_checkpoint demands it otherwise
            raise CheckpointError(f"checkpoint '{path}': {name} is missing; "
                                  f"{_RESUME_ELSEWHERE}")
        part = state_io.load_state(path / name)
        if not isinstance(part, dict):
            raise CheckpointError(f"checkpoint '{path}': {name} does not hold a mapping")
        state.update(part)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint '{path}': the trainer state lacks {missing}; "
                              f"{_RESUME_ELSEWHERE}")
    wrong = [f"{k} ({type(state[k]).__name__}, expected {kind.__name__})"
             for k, kind in STATE_TYPES.items()
             if k in state and not (isinstance(state[k], kind) and not isinstance(state[k], bool))]
    if wrong or state["step"] < 0:
        raise CheckpointError(f"checkpoint '{path}': malformed trainer state: "
                              f"{', '.join(wrong) or 'negative step'}; {_RESUME_ELSEWHERE}")
    return state


_RESUME_ELSEWHERE = ("delete it to resume from the one before, or set training.resume to "
                     "another checkpoint")


def _unreadable(path: Path, error: BaseException) -> str:
    return (f"checkpoint '{path}' cannot be read ({type(error).__name__}: {error}); delete it to "
            f"resume from the one before, or set training.resume to another checkpoint")


def load_state_dict_strict(model, weights: dict[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(weights)``, tolerating only a missing tied output head."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [m for m in missing if m not in tied and not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"{what} does not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


def is_sharded(path: Path) -> bool:
    return (Path(path) / SHARDED_DIR).is_dir()


def save_model_files(model, tokenizer, directory: Path) -> None:
    """Config, generation config, adapter config and tokenizer: a model directory minus
    its weights (the weights of a sharded checkpoint live in ``sharded/``)."""
    from rlfoundry.models.lora import is_peft

    base = model.get_base_model() if is_peft(model) else model
    base.config.save_pretrained(directory)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(directory)
    if is_peft(model):
        model.peft_config[model.active_adapter].save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def save_sharded_checkpoint(output_dir: str | Path, step: int, root, optimizer, model, tokenizer,
                            state: dict[str, Any], keep_last: int | None = None) -> Path:
    """FSDP2: every rank writes its shards of ``root`` (the wrapper holding the policy as
    ``model.*`` and any heads) and of the optimizer (collective; call on every rank); rank 0
    writes the model files of ``model`` and the trainer state, then renames atomically."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from rlfoundry.training import distributed

    main = distributed.current().is_main
    where = Path(output_dir) / "checkpoints"
    final = where / f"step_{step:06d}"
    tmp = Path(distributed.broadcast_object(str(where / f"{TMP_PREFIX}{step:06d}_{os.getpid()}")))
    try:
        if main:
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "model").mkdir(parents=True)
            save_model_files(model, tokenizer, tmp / "model")
        distributed.barrier()
        model_state, optim_state = get_state_dict(root, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / SHARDED_DIR)
        if main:  # dcp.save returned: every rank's shards are written
            write_state(state, tmp)
            _seal(tmp, step, state)
            _publish(tmp, final)
    except state_io.UnsupportedState as e:
        raise CheckpointError(f"could not write the sharded checkpoint of step {step}: {e}"
                              + (_discard(tmp) if main else "")) from e
    except Exception as e:  # the writers report a full disk with different exception types
        message = describe_write_failure(f"the sharded checkpoint of step {step}", where, e)
        raise CheckpointError(message + (_discard(tmp) if main else "")) from e
    if main and keep_last:
        prune_checkpoints(output_dir, keep_last, _fingerprint(state))
    return final


def load_sharded_checkpoint(path: Path, root, optimizer) -> dict[str, Any]:
    """FSDP2: load this rank's shards of ``root`` and the optimizer (written on any number of
    ranks); return the trainer state (collective; call on every rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not is_sharded(path):
        raise CheckpointError(f"checkpoint '{path}' has no {SHARDED_DIR}/ state; it was not "
                              f"written with training.distributed.strategy fsdp2")
    model_state, optim_state = get_state_dict(root, optimizer)
    bundle = {"model": model_state, "optimizer": optim_state}
    dcp.load(bundle, checkpoint_id=path / SHARDED_DIR)
    set_state_dict(root, optimizer, model_state_dict=bundle["model"],
                   optim_state_dict=bundle["optimizer"])
    return read_state(path)


def load_sharded_weights(path: Path, model) -> None:
    """Fill an unsharded ``model`` with the weights of an FSDP2 checkpoint (one process; no
    process group needed: the shards are read and stitched by torch.distributed.checkpoint)."""
    import torch.distributed.checkpoint as dcp

    weights = {POLICY_PREFIX + k: v for k, v in model.state_dict().items()}
    bundle = {"model": weights}
    with warnings.catch_warnings():  # loading in one process is the point here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(bundle, checkpoint_id=Path(path) / SHARDED_DIR, no_dist=True)
    load_state_dict_strict(model, policy_weights(bundle["model"]), f"sharded checkpoint '{path}'")


def policy_weights(root_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The policy's entries of a wrapper state dict (``model.*``), without the prefix."""
    return {k[len(POLICY_PREFIX):]: v for k, v in root_state.items() if k.startswith(POLICY_PREFIX)}


def full_state_dict(root) -> dict[str, torch.Tensor]:
    """FSDP2: the policy's whole state gathered to CPU on rank 0 (empty on the other ranks;
    collective, call on every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return policy_weights(get_model_state_dict(
        root, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))


def nonfinite_parameters(model: torch.nn.Module, extra_modules: list[torch.nn.Module] = (),
                         loss_parameters: list[torch.Tensor] = ()) -> list[str]:
    """Names of the parameters and floating buffers holding NaN/inf (this rank's shards under
    FSDP2), each with its counts; one device sync for the lot."""
    named = [*model.named_parameters(), *model.named_buffers()]
    named += [(f"extra_modules[{i}].{n}", t) for i, m in enumerate(extra_modules)
              for n, t in [*m.named_parameters(), *m.named_buffers()]]
    named += [(f"loss_parameters[{i}]", t) for i, t in enumerate(loss_parameters)]
    named = [(n, t.detach().to_local() if hasattr(t, "to_local") else t.detach())
             for n, t in named if t.is_floating_point() or t.is_complex()]
    named = [(n, t) for n, t in named if t.numel()]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    bad = []
    for (name, t), ok in zip(named, flags):
        if not ok:
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            bad.append(f"{name} ({nan} NaN, {inf} inf of {t.numel()})")
    return bad


def refuse_nonfinite(bad: list[str], what: str, step: int, last_good: Path | None) -> None:
    """NonFiniteError when ``bad`` (from :func:`nonfinite_parameters`) is not empty."""
    if not bad:
        return
    kept = f"the last good checkpoint, {last_good}, is untouched" if last_good else "no checkpoint exists"
    raise NonFiniteError(
        f"step {step}: the model holds non-finite values, in {', '.join(bad[:5])}"
        f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}; refusing to write {what} ({kept}). "
        f"Lower training.learning_rate or check the optimizer settings and data, then resume "
        f"from the last good checkpoint.")
