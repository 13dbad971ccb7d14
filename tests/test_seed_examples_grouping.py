"""The GRPO grouping examples of the seed documents (examples/seed_000/grpo_*.py,
examples/seed_004/dynamic_grpo_loss.py, examples/configs/custom_grpo.yaml) run and print
what they claim. Each script runs in-process as ``__main__`` (no interpreter start-up)."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest

from rlfoundry.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
SEED_000 = ROOT / "examples" / "seed_000"
pytestmark = pytest.mark.slow


def run_example(path: Path, capsys, monkeypatch) -> str:
    monkeypatch.syspath_prepend(str(path.parent))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(path), run_name="__main__")
    return capsys.readouterr().out


def groups_of_numbers(line: str) -> list[list[float]]:
    return [[float(x) for x in g.split()] for g in re.findall(r"\[([^\]]*)\]", line)]


def test_form_groups_random(capsys, monkeypatch):
    out = run_example(SEED_000 / "grpo_form_groups.py", capsys, monkeypatch)
    steps = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(steps) == 2
    for line in steps:
        groups = groups_of_numbers(line.split(":", 1)[1])
        assert [len(g) for g in groups] == [4, 4, 4, 4]
        assert sorted(x for g in groups for x in g) == sorted([0, 1, 2, 3] * 4)
    assert re.search(r"\d of 4 groups mix prompts; num_groups=4, mean_group_size=4", out)


def test_semantic_grouping(capsys, monkeypatch):
    out = run_example(SEED_000 / "grpo_semantic_grouping.py", capsys, monkeypatch)
    assert "library 'semantic' strategy forms the same groups: True" in out
    assert "grouped 16 of 16 samples" in out


def test_performance_grouping(capsys, monkeypatch):
    out = run_example(SEED_000 / "grpo_performance_grouping.py", capsys, monkeypatch)
    assert "library 'performance' strategy forms the same groups: True" in out
    groups = groups_of_numbers(out.splitlines()[0].split(":", 1)[1])
    flat = [x for g in groups for x in g]
    assert flat == sorted(flat, reverse=True) and len(flat) == 16
    spread = dict(re.findall(r"(\w+): within-group reward std ([\d.]+)", out))
    assert float(spread["performance"]) < float(spread["by_prompt"])


def test_adaptive_grouping(capsys, monkeypatch):
    out = run_example(SEED_000 / "grpo_adaptive_grouping.py", capsys, monkeypatch)
    used = re.findall(r"step (\d) \(progress ([\d.]+)\): (\w+) -> 4 groups", out)
    assert [u[2] for u in used] == ["random", "random", "performance", "performance", "semantic"]
    assert "adaptive would use: random -> random -> performance -> performance -> semantic" in out


def test_multi_criteria_grouping(capsys, monkeypatch):
    out = run_example(SEED_000 / "grpo_multi_criteria_grouping.py", capsys, monkeypatch)
    assert "library 'multi_criteria' strategy forms the same groups: True" in out
    groups = groups_of_numbers(out.splitlines()[0].split(":", 1)[1])
    assert [len(g) for g in groups] == [4, 4, 4, 4]


def test_dialogue_trainer(capsys, monkeypatch):
    out = run_example(SEED_000 / "grpo_dialogue_trainer.py", capsys, monkeypatch)
    assert "every group is one conversation: True" in out
    groups = re.findall(r"\[([a-z ]+)\]", out.splitlines()[0])
    assert len(groups) == 6 and all(len(set(g.split())) == 1 for g in groups)
    values = dict(re.findall(r"(\w+)=(-?[\d.e+-]+)", out.splitlines()[-1]))
    assert set(values) >= {"loss", "base_loss", "coherence_loss", "engagement_loss", "grad_norm"}
    assert float(values["grad_norm"]) > 0


def test_monitor_group_quality(capsys, monkeypatch):
    out = run_example(SEED_000 / "grpo_monitor_group_quality.py", capsys, monkeypatch)
    assert "agrees with the seed formula on unit embeddings: True" in out
    for formed, random in re.findall(r"formed ([\d.]+), random ([\d.]+)", out):
        assert float(formed) > float(random)  # semantic groups are tighter than random ones
    assert "group/ungrouped_frac=0" in out


def test_debug_algorithm(capsys, monkeypatch):
    out = run_example(SEED_000 / "grpo_debug_algorithm.py", capsys, monkeypatch)
    n = int(re.search(r"Number of groups: (\d+)", out).group(1))
    assert len(re.findall(r"Group \d+ diversity: [\d.]+", out)) == n > 0
    average = float(re.search(r"Average group size: ([\d.]+)", out).group(1))
    assert 2 <= average <= 6  # dynamic groups between min_group_size and max_group_size


def test_dynamic_grpo_loss(capsys, monkeypatch):
    out = run_example(ROOT / "examples" / "seed_004" / "dynamic_grpo_loss.py", capsys, monkeypatch)
    assert "dynamic groups of 7 toy responses (threshold 0.8): [[0, 1, 2], [3, 4], [5], [6]]" in out
    assert "trainer grouping: dynamic (threshold 0.7, max size 6)" in out
    groups, size = re.search(r"num_dynamic_groups=(\d+), avg_group_size=([\d.]+)", out).groups()
    assert int(groups) * float(size) == pytest.approx(16, abs=0.05)


def test_custom_grpo_configuration_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = cli_main(["train", "examples/configs/custom_grpo.yaml", f"training.output_dir={tmp_path}",
                     "training.max_steps=2", "logging.progress_bar=false",
                     "logging.tensorboard=false"])
    assert code == 0
    last = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert "group/cohesion" in last and "value_loss" in last  # semantic groups, a value head
    assert last["group/max_size"] <= 6
