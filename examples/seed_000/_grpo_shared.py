"""Shared setup of the GRPO grouping seed examples: a tiny GRPO run and a dense toy reward.

Every example trains ``builtin:tiny`` (a random-init 1.6M-parameter model) on addition
prompts for a few steps, so it runs in seconds on a CPU. The reward is dense (the share of
letters and digits in the completion) so that groups have reward variance to learn from.
"""

from __future__ import annotations

from typing import Any


def alnum_share(prompts, completions, **columns) -> list[float]:
    """Share of ASCII letters and digits in each completion (a dense toy reward)."""
    return [sum(ch.isascii() and ch.isalnum() for ch in c) / max(len(c), 1) for c in completions]


def tiny_grpo_config(output_dir: str, max_steps: int = 2, **algorithm: Any) -> dict[str, Any]:
    """A GRPO run of ``max_steps`` steps: 4 prompts x 4 completions of 5 tokens per step."""
    return {
        "algorithm": {"name": "grpo", "group_size": 4, "sampling": {"max_new_tokens": 5},
                      **algorithm},
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"train": "builtin:addition", "train_size": 64},
        "training": {"output_dir": output_dir, "batch_size": 4, "max_steps": max_steps,
                     "learning_rate": 1e-3, "lr_scheduler": "constant", "seed": 0},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def show_groups(groups, labels) -> str:
    """``[a b c d] [e f g h]`` with each member shown by its label."""
    return " ".join("[" + " ".join(str(labels[int(i)]) for i in g) + "]" for g in groups)
