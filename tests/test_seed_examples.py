"""Every seed example (examples/seed_000, examples/seed_004) runs and prints what it claims."""

import re
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# file -> regex its output must match (numbers are checked where the example asserts a result)
EXPECTED = {
    "seed_000/custom_grpo_loss.py": r"custom_grpo_loss: loss -?\d.*value_mse \d.*value head trained: True",
    "seed_000/dpo_custom_trainer.py": r"held-out accuracy 0\.500 -> 0\.(8|9)\d\d",
    "seed_000/dpo_math_reasoning_loss.py": r"math_reasoning_loss trained 6 steps",
    "seed_000/dpo_adaptive_beta_schedule.py": r"step 5: seed 0\.1250 built-in 0\.1250[\s\S]*"
                                              r"logged beta per step: \[0\.2, 0\.1625, 0\.125, 0\.0875\]",
    "seed_000/dpo_code_generation_loss.py": r"syntax score margin \(chosen - rejected\) 1\.00; "
                                            r"held-out accuracy 0\.500 -> (0\.9\d\d|1\.000)",
    "seed_000/dpo_multi_objective_loss.py": r"total loss \d",
    "seed_000/dpo_math_trainer.py": r"MathDPOTrainer\(math_weight=2\.0\) loss 0\.[0-5]",
    "seed_000/integration_pipeline.py": r"16 pairs; DPO loss \d\.\d+; GRPO reward_mean",
    "seed_000/validate_loss.py": r"Negative loss[\s\S]*ValueError: Loss is NaN[\s\S]*NonFiniteError: step 3"
                                 r"[\s\S]*check-loss on the built-in dpo loss: passed",
    "seed_000/log_training_metrics.py": r"3 monitor records; last reward_gap (-?[\d.]+) \(trainer's own: \1\)",
    "seed_000/adaptive_training.py": r"seed rule beta: (\[[^\]]+\])\s+built-in beta:\s+\1",
    "seed_000/debug_algorithm_dpo.py": r"Chosen rewards range: .*\nRejected rewards range: .*\nReward gap",
    "seed_004/loss_function_interface.py": r"isinstance\(loss_fn, LossFunction\): True; loss 2\.00",
    "seed_004/adaptive_dpo_loss.py": r"adaptive_beta per optimizer step \(2 micro-batches each\): "
                                     r"\[0\.1, 0\.0775, 0\.055, 0\.0325",
    "seed_004/multi_objective_dpo_loss.py": r"'auxiliary_safety_loss': 0\.0\d*[1-9]",
    "seed_004/multi_objective_grpo_loss.py": r"'diversity_loss': -\d",
    "seed_004/dynamic_multi_objective_loss.py": r"seed weights:\s+(\{[^}]+\})\nbuilt-in weights: \1",
    "seed_004/composed_dpo_grpo_loss.py": r"'adaptive_dpo/accuracy'[\s\S]*'dynamic_grpo/policy_loss'"
                                          r"[\s\S]*held-out accuracy 0\.500 -> 0\.[6-9]",
    "seed_004/clipped_loss.py": r"trainer clipped at 0\.05 after backward",
    "seed_004/register_and_configure.py": r"loss class MyCustomDPOLossFn; adaptive_beta 0\.09",
    "seed_004/test_custom_loss_function.py": r"Loss: \d",
}


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(EXAMPLES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_seed_example_runs(name, workdir, capsys):
    sys.path.insert(0, str((EXAMPLES / name).parent))  # as `python examples/...` would
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    out = capsys.readouterr().out
    assert re.search(EXPECTED[name], out), out


def test_every_seed_example_file_is_covered():
    mine = {str(p.relative_to(EXAMPLES)) for p in EXAMPLES.glob("seed_00*/*.py")
            if not p.name.startswith(("grpo_", "_", "dynamic_grpo"))}
    assert mine == set(EXPECTED)
