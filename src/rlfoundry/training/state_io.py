"""Trainer state on disk without pickle: tensors in safetensors, everything else in JSON.

``torch.load(weights_only=False)`` runs whatever a pickle says, so a checkpoint someone else
could write would run their code at resume. Instead, :func:`save_state` splits a nested value
into a JSON tree and a flat set of tensors and stores both in one ``.safetensors`` file (the
tree in the header's metadata); :func:`load_state` reads them back with no code execution.

Accepted values: ``dict`` (any keys of the accepted scalar types), ``list``, ``tuple``,
``torch.Tensor`` (dense, any dtype; stored on the CPU), ``int``, ``float`` (``inf`` and
``nan`` included), ``str``, ``bool``, ``None`` and ``bytes``. That covers optimizer, scheduler,
sampler and scaler state dicts, ``random.getstate()`` and torch generator states. Anything
else is rejected when the checkpoint is *written*, with the key path of the offending value,
so a run never finds out at resume time that its state could not be stored.

JSON encoding: plain JSON for str-keyed dicts, lists, strings, ints, finite floats, booleans
and null; a one-key object tags the rest: ``{"__tensor__": name}``, ``{"__tuple__": [...]}``,
``{"__float__": "inf"|"-inf"|"nan"}``, ``{"__bytes__": base64}`` and ``{"__dict__": [[k, v],
...]}`` for dicts whose keys are not all strings (optimizer states are keyed by int) or that
use a tag as a key.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import torch

from rlfoundry.errors import CheckpointError

METADATA_KEY = "rlfoundry_state"
TAGS = ("__tensor__", "__tuple__", "__float__", "__bytes__", "__dict__")


class UnsupportedState(CheckpointError):
    """A value of the trainer state has a type that cannot be stored without pickle."""


def encode(value: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(json_tree, tensors)`` of ``value``; :class:`UnsupportedState` names the key path of
    the first value of an unsupported type."""
    tensors: dict[str, torch.Tensor] = {}
    return _encode(value, "state", tensors), tensors


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"__float__": repr(float(value))}
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            raise UnsupportedState(f"{path}: a {value.layout} tensor cannot be checkpointed; "
                                   f"store it dense")
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": name}
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{path}[{i}]", tensors) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(k in TAGS for k in value):
            return {k: _encode(v, f"{path}.{k}", tensors) for k, v in value.items()}
        pairs = []
        for k, v in value.items():
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise UnsupportedState(f"{path}: dict key {k!r} of type {type(k).__name__} "
                                       f"cannot be checkpointed (keys must be str/int/float/bool)")
            pairs.append([_encode(k, f"{path}<key>", tensors), _encode(v, f"{path}[{k!r}]", tensors)])
        return {"__dict__": pairs}
    raise UnsupportedState(
        f"{path}: a value of type {type(value).__module__}.{type(value).__qualname__} cannot be "
        f"checkpointed without pickle; return plain data (dict/list/tuple/tensor/int/float/str/"
        f"bool/None/bytes) from state_dict()/extra_state()")


def decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`; :class:`CheckpointError` on a malformed tree."""
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if isinstance(tree, list):
        return [decode(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        raise CheckpointError(f"unexpected JSON value of type {type(tree).__name__}")
    if len(tree) == 1:
        (tag, body), = tree.items()
        if tag == "__tensor__":
            if body not in tensors:
                raise CheckpointError(f"the state refers to tensor {body!r}, which is not stored")
            return tensors[body]
        if tag == "__tuple__":
            return tuple(decode(v, tensors) for v in _list(body, tag))
        if tag == "__float__":
            if body not in ("inf", "-inf", "nan"):
                raise CheckpointError(f"bad special float {body!r}")
            return float(body)
        if tag == "__bytes__":
            return base64.b64decode(str(body), validate=True)
        if tag == "__dict__":
            pairs = _list(body, tag)
            if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise CheckpointError("malformed __dict__ entry (expected [key, value] pairs)")
            return {decode(k, tensors): decode(v, tensors) for k, v in pairs}
    return {k: decode(v, tensors) for k, v in tree.items()}


def _list(body: Any, tag: str) -> list:
    if not isinstance(body, list):
        raise CheckpointError(f"malformed {tag} entry (expected a list)")
    return body


def save_state(value: Any, path: str | Path) -> None:
    """Write ``value`` to ``path`` (one safetensors file: tensors + the JSON tree as metadata)."""
    from safetensors.torch import save_file

    tree, tensors = encode(value)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(tree, allow_nan=False)})


def load_state(path: str | Path) -> Any:
    """Read a file written by :func:`save_state`; never unpickles. Any damage (truncated
    file, bad header, malformed tree) is a :class:`CheckpointError` naming the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if METADATA_KEY not in meta:
            raise CheckpointError("no trainer state in its metadata")
        return decode(json.loads(meta[METADATA_KEY]), tensors)
    except CheckpointError as e:
        raise CheckpointError(f"'{path}': {e}") from e
    except (Exception, RecursionError) as e:  # safetensors/json/base64 raise their own types
        raise CheckpointError(f"'{path}' cannot be read ({type(e).__name__}: {e})") from e
