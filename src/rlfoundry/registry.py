"""A tiny name -> object registry shared by losses, trainers, rewards, groupings, schedules."""

from __future__ import annotations

import difflib
import inspect
import warnings
from collections.abc import Callable
from typing import Generic, TypeVar

from rlfoundry.errors import ConfigError

T = TypeVar("T")


class RegistryOverrideWarning(UserWarning):
    """A name already registered was registered again (the new entry replaces the old one)."""


def did_you_mean(name: str, candidates) -> str:
    """' (did you mean 'x'?)' when a close candidate exists, else ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """Maps names to classes or functions. ``@reg.register("name")`` adds one, ``reg.get`` finds it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, override: bool = False):
        """Register ``obj`` under ``name``; usable as a decorator (``@reg.register("x")``).

        Registering a name that already holds a different object replaces it, with a
        :class:`RegistryOverrideWarning` naming both (a built-in replaced by a user class
        changes every config that names it); ``override=True`` says it is meant and is silent.
        Re-running the same definition (same module and qualified name, e.g. a notebook cell
        run twice) replaces it silently.
        """

        def decorator(o: T) -> T:
            old = self._entries.get(name)
            if old is not None and not override and describe_object(old) != describe_object(o):
                warnings.warn(
                    f"{self.kind} '{name}' was already registered as {describe_object(old)}; "
                    f"{describe_object(o)} now replaces it for every config that names "
                    f"'{name}'. Pick another name, or pass override=True if replacing it is "
                    f"intended", RegistryOverrideWarning, stacklevel=3)
            self._entries[name] = o
            return o

        return decorator(obj) if obj is not None else decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ConfigError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
                f"registered: {known}. Custom ones must be registered first "
                f"(list their module under 'plugins:' in the config)."
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        """name -> the first paragraph of the entry's docstring, on one line (a summary that
        wraps over several lines is kept whole)."""
        out = {}
        for name in self.names():
            doc = inspect.getdoc(self._entries[name]) or ""
            out[name] = " ".join(doc.split("\n\n")[0].split())
        return out


def describe_object(obj: object) -> str:
    """``module.QualName`` of a registered class or function (its repr otherwise)."""
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None)
    return f"{module}.{name}" if module and name else repr(obj)


def import_object(spec: str) -> Callable:
    """Import 'package.module:attr' (or 'package.module.attr')."""
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import '{spec}': {e}") from e
