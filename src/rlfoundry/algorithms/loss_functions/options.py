"""Validation shared by the built-in losses' option dicts (``algorithm.loss``)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from numbers import Real
from typing import Any

from rlfoundry.errors import ConfigError
from rlfoundry.registry import did_you_mean

# key -> (may be None, predicate, the requirement as the error message states it)
NumberChecks = dict[str, tuple[bool, Callable[[float], bool], str]]


def check_loss_options(cfg: Mapping[str, Any] | None, path: str, defaults: Mapping[str, Any],
                       number_checks: NumberChecks, *, extra_keys: Iterable[str] = (),
                       allow_unknown: bool = False) -> dict[str, Any]:
    """``cfg`` with defaults filled and numbers checked, or a ``ConfigError`` naming the key path.

    A ``type`` key (the registry name) is dropped and ``beta`` is accepted as an alias of
    ``reference_policy_kl_penalty``. ``extra_keys`` pass unchecked. Other unknown keys are
    rejected, unless ``allow_unknown`` (user subclasses reading their own keys), in which case
    only close misspellings of the known keys (the defaults and ``extra_keys``) are rejected.
    """
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{path}: must be a mapping of loss options, got {type(cfg).__name__}")
    out = dict(cfg)
    out.pop("type", None)
    if "beta" in out:
        beta = out.pop("beta")
        if "reference_policy_kl_penalty" in out and out["reference_policy_kl_penalty"] != beta:
            raise ConfigError(
                f"{path}.beta: {beta!r} conflicts with reference_policy_kl_penalty "
                f"{out['reference_policy_kl_penalty']!r} (beta is an alias); give only one"
            )
        out["reference_policy_kl_penalty"] = beta

    extra = set(extra_keys)
    base = list(defaults) + ["beta"]
    for key in out:
        if key in defaults or key in extra:
            continue
        # a loss's own declared keys (extra_keys) count as known for the typo check too
        close = difflib.get_close_matches(str(key), base + sorted(extra), n=1, cutoff=0.8)
        if allow_unknown and not close:
            continue
        raise ConfigError(
            f"{path}.{key}: unknown key{did_you_mean(key, base + sorted(extra))}; "
            f"known keys: {', '.join(base + sorted(extra))}"
        )

    for key, default in defaults.items():
        out.setdefault(key, default)
    for key, (nullable, ok, requirement) in number_checks.items():
        value = out[key]
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ConfigError(f"{path}.{key}: must be a number, got {value!r} ({type(value).__name__})")
        if not (math.isfinite(value) and ok(value)):
            raise ConfigError(f"{path}.{key}: {requirement}, got {value!r}")
        out[key] = float(value)
    return out
