"""examples/dialogue_grpo.py: GRPO on multi-turn prompts grouped by conversation context."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "dialogue_grpo.py"


@pytest.fixture(scope="module")
def example():
    return runpy.run_path(str(EXAMPLE))


def test_checked_in_data_matches_the_generator(example):
    rows = [json.loads(line) for line in (ROOT / "examples/data/dialogues.jsonl").read_text().splitlines()]
    assert rows == example["dialogue_rows"]()


def test_says_name_reward(example):
    says_name = example["says_name"]
    assert says_name([None] * 3, ["hi ana!", "an", "xyz"], name=["ana", "ana", "bo"]) == \
        [1.0, 0.5, 0.0]


@pytest.mark.slow
def test_dialogue_grpo_trains_with_conversation_groups(example, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    metrics = example["main"]([f"training.output_dir={tmp_path}", "training.max_steps=2"])
    out = capsys.readouterr().out
    assert "grouped by 'context'" in out
    groups = re.findall(r"group \d+: ([a-z/]+): (\d+) samples, (\d+) follow-ups", out)
    assert groups and all("/" not in names for names, _, _ in groups)  # one conversation each
    assert sum(int(n) for _, n, _ in groups) == 6 * 4  # every sample grouped (merge policy)
    assert all(int(n) <= 8 + 1 for _, n, _ in groups)  # max_group_size 8, + merged leftovers
    assert any(int(q) > 1 for _, _, q in groups)  # groups span several prompts
    assert metrics["grad_norm"] > 0 and metrics["group/ungrouped_frac"] == 0
