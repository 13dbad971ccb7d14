"""Dialogue GRPO: replies that continue the same conversation share one baseline.

A small synthetic multi-turn task. Each conversation opens with the user giving a name
("hi, i am ana" / "hi ana!"), then asks one of several follow-ups ("what is my name?", "who
am i?", ...). Each (conversation, follow-up) is one prompt row, so several prompts share a
conversation context. With ``group_strategy: context`` the trainer groups the completions of
all follow-ups of a conversation together (the chat before the last user turn is the
context), so a reply is compared with every reply given in that conversation, not only with
the other samples of its own follow-up. The reward ``says_name`` scores how much of the
user's name the reply repeats (1 for the whole name, partial credit for its letters).

Run from the repository root (a few seconds on a CPU):

    python examples/dialogue_grpo.py [key.path=value ...]
    rlfoundry train examples/configs/dialogue_grpo.yaml      # the same run, from YAML

This file is also the config's plugin (it registers the ``says_name`` reward).
``python examples/dialogue_grpo.py --write-data`` rewrites examples/data/dialogues.jsonl.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from rlfoundry.rewards import REWARDS

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "configs" / "dialogue_grpo.yaml"
DATA = ROOT / "examples" / "data" / "dialogues.jsonl"
NAMES = ("ana", "bo", "cy")
FOLLOW_UPS = ("what is my name?", "say my name.", "greet me again.", "who am i?")


def dialogue_rows() -> list[dict]:
    """One row per (conversation, follow-up): the chat so far and the user's ``name``."""
    return [{"prompt": [{"role": "user", "content": f"hi, i am {name}"},
                        {"role": "assistant", "content": f"hi {name}!"},
                        {"role": "user", "content": question}],
             "name": name}
            for name in NAMES for question in FOLLOW_UPS]


@REWARDS.register("says_name")
def says_name(prompts, completions, name, **columns) -> list[float]:
    """1.0 if the reply contains the user's name, else half the share of its letters used."""
    out = []
    for reply, who in zip(completions, name):
        reply = reply.lower()
        out.append(1.0 if who in reply else 0.5 * len(set(who) & set(reply)) / len(set(who)))
    return out


def conversation_of(rendered_prompt: str) -> str:
    """The name a rendered prompt's conversation is about ('?' if none)."""
    found = re.search(r"i am (\w+)", rendered_prompt)
    return found.group(1) if found else "?"


def main(overrides: list[str] | None = None) -> dict[str, float]:
    from rlfoundry.algorithms.grpo import GRPOTrainer
    from rlfoundry.config import load_config

    cfg = load_config(CONFIG, overrides or [])
    trainer = GRPOTrainer(config=cfg)
    metrics = trainer.train()
    log = [json.loads(line) for line in (trainer.output_dir / "metrics.jsonl").open()]
    rewards = [r["reward_mean"] for r in log if "reward_mean" in r]
    print(f"trained {trainer.step} steps grouped by '{trainer.grouping_name}': reward_mean "
          f"{rewards[0]:.3f} -> {rewards[-1]:.3f}, groups={metrics['group/num_groups']:.0f}, "
          f"mean size={metrics['group/mean_size']:.1f}, grad_norm={metrics['grad_norm']:.3g}")
    buffer = trainer.buffer
    print("groups of the last rollout (conversation: samples, distinct follow-ups):")
    for k in buffer["group_id"].unique().tolist():
        members = [i for i, g in enumerate(buffer["group_id"].tolist()) if g == k]
        names = {conversation_of(buffer["prompts"][i]) for i in members}
        questions = {buffer["prompts"][i] for i in members}
        print(f"  group {k}: {'/'.join(sorted(names))}: {len(members)} samples, "
              f"{len(questions)} follow-ups")
    return metrics


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-data"]:
        DATA.write_text("".join(json.dumps(row) + "\n" for row in dialogue_rows()))
        print(f"wrote {DATA}")
    else:
        main(sys.argv[1:])
