"""``TRAINERS``: algorithms selectable by ``algorithm.name`` (built-in and user-registered)."""

from __future__ import annotations

from rlfoundry.registry import Registry

TRAINERS: Registry[type] = Registry("algorithm")


def load_builtin_trainers() -> None:
    """Import the built-in trainer modules so they register themselves."""
    import rlfoundry.algorithms.dpo  # noqa: F401
    import rlfoundry.algorithms.grpo  # noqa: F401
    import rlfoundry.algorithms.kto  # noqa: F401
    import rlfoundry.algorithms.online_dpo  # noqa: F401
    import rlfoundry.algorithms.reward_model  # noqa: F401
    import rlfoundry.algorithms.seed_algorithms  # noqa: F401  (custom_dpo, custom_grpo)
    import rlfoundry.algorithms.sft  # noqa: F401
