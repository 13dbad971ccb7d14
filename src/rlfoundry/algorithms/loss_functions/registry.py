"""``LossFunctionRegistry``: losses chosen by name from config (``algorithm.loss.type``)."""

from __future__ import annotations

from typing import Any

from rlfoundry.registry import Registry

_REGISTRY: Registry[type] = Registry("loss function")


class LossFunctionRegistry:
    """Registry for loss functions (built-in and custom).

    >>> @LossFunctionRegistry.register("my_dpo")
    ... class MyDPO(DPOLossFn): ...
    >>> LossFunctionRegistry.get("my_dpo")
    """

    _registry = _REGISTRY

    @classmethod
    def register(cls, name: str, *, override: bool = False):
        """Decorator that registers a loss class (or factory) under ``name``; an existing
        name is replaced with a ``RegistryOverrideWarning`` naming both classes, unless
        ``override=True``."""
        return _REGISTRY.register(name, override=override)

    @classmethod
    def get(cls, name: str) -> type:
        """The loss class registered as ``name`` (``ConfigError`` with a hint if unknown)."""
        return _REGISTRY.get(name)

    @classmethod
    def names(cls) -> list[str]:
        return _REGISTRY.names()

    @classmethod
    def describe(cls) -> dict[str, str]:
        return _REGISTRY.describe()

    @classmethod
    def build(cls, cfg: dict[str, Any]):
        """Instantiate the loss named by ``cfg['type']`` with the rest of ``cfg``."""
        cfg = dict(cfg)
        name = cfg.pop("type")
        return _REGISTRY.get(name)(cfg)
