"""Kill a real training process and resume it: the result must match an uninterrupted run.

SIGKILL at a random (seeded) step, or while a checkpoint is being written; SIGTERM/SIGINT
stop cleanly with a checkpoint and a resume command. The child gets OMP_NUM_THREADS=1 like
this process (conftest): bitwise equality is only promised for the same thread count.
"""

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.cli import main
from rlfoundry.errors import TrainingInterrupted
from tests.test_dpo_trainer import run_config

ROOT = Path(__file__).resolve().parents[1]
SEED = 1234  # picks the kill steps; fixed so a failure reproduces

DPO = {
    "model": {"name_or_path": "builtin:tiny"},
    "data": {"train": "builtin:sort_preferences", "train_size": 32, "eval_size": 8, "max_length": 48},
    "training": {"batch_size": 8, "max_steps": 7, "learning_rate": 1e-3, "seed": 0, "save_every": 1,
                 "keep_last": 2, "eval_every": 3},
    "logging": {"tensorboard": False, "progress_bar": False},
}
GRPO = {
    "algorithm": {"name": "grpo", "group_size": 4, "num_iterations": 2,
                  "sampling": {"max_new_tokens": 5},
                  "rewards": [{"name": "length_penalty", "args": {"target_length": 2}}],
                  "loss": {"reference_policy_kl_penalty": 0.05}},
    "model": {"name_or_path": "builtin:tiny"},
    "data": {"train": "builtin:addition", "train_size": 32, "eval_size": 4},
    "training": {"batch_size": 4, "max_steps": 6, "learning_rate": 1e-3, "seed": 0, "save_every": 1,
                 "keep_last": 2, "lr_scheduler": "constant"},
    "logging": {"tensorboard": False, "progress_bar": False},
}
HANG_PLUGIN = '''
import os, time
from pathlib import Path
from rlfoundry.training import checkpoint

step, marker = os.environ["RLF_TEST_HANG_IN_CHECKPOINT"].split(":", 1)
original = checkpoint.save_pretrained

def save_pretrained(model, tokenizer, directory):
    original(model, tokenizer, directory)  # the weights are written, the trainer state not yet
    if f".tmp_step_{int(step):06d}_" in str(directory):
        Path(marker).write_text("inside the checkpoint")
        time.sleep(600)

checkpoint.save_pretrained = save_pretrained
'''


def write_config(path: Path, base: dict, output_dir: Path) -> Path:
    cfg = json.loads(json.dumps(base))
    cfg["training"]["output_dir"] = str(output_dir)
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(config: Path, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlfoundry", "train", str(config), *overrides],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.01)


def train_steps(out: Path) -> int:
    log = out / "metrics.jsonl"
    if not log.exists():
        return 0
    return sum('"loss"' in line for line in log.read_text().splitlines() if line.endswith("}"))


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()


@pytest.mark.slow
def test_dpo_sigkill_at_a_random_step_then_resume_matches(tmp_path):
    kill_after = random.Random(SEED).randint(2, DPO["training"]["max_steps"] - 2)
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert main(["train", str(write_config(tmp_path / "s.yaml", DPO, straight))]) == 0
    config = write_config(tmp_path / "c.yaml", DPO, crashed)
    proc = start(config)
    wait_for(lambda: train_steps(crashed) >= kill_after, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert main(["train", str(config), "training.resume=auto"]) == 0
    assert_same_run(straight, crashed)


@pytest.mark.slow
def test_grpo_sigkill_while_writing_a_checkpoint_then_resume_matches(tmp_path):
    kill_in = random.Random(SEED + 1).randint(2, GRPO["training"]["max_steps"] - 1)
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert main(["train", str(write_config(tmp_path / "s.yaml", GRPO, straight))]) == 0
    config = write_config(tmp_path / "c.yaml", GRPO, crashed)
    plugin, marker = tmp_path / "hang_plugin.py", tmp_path / "in_checkpoint"
    plugin.write_text(HANG_PLUGIN)
    proc = start(config, f"plugins=[{plugin}]",
                 env={"RLF_TEST_HANG_IN_CHECKPOINT": f"{kill_in}:{marker}"})
    wait_for(marker.exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    root = crashed / "checkpoints"
    partial = [p for p in root.iterdir() if p.name.startswith(f".tmp_step_{kill_in:06d}_")]
    assert len(partial) == 1 and (partial[0] / "model").is_dir()  # half-written: no trainer state
    assert main(["train", str(config), "training.resume=auto"]) == 0
    assert not partial[0].exists()
    assert_same_run(straight, crashed)
    records = [json.loads(x) for x in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, GRPO["training"]["max_steps"] + 1))


@pytest.mark.slow
def test_sigterm_checkpoints_and_prints_how_to_resume(tmp_path):
    out = tmp_path / "run"
    base = json.loads(json.dumps(DPO))
    base["training"].update(max_steps=500, save_every=None, eval_every=None)
    config = write_config(tmp_path / "cfg.yaml", base, out)
    proc = start(config, "logging.progress_bar=false")
    wait_for(lambda: train_steps(out) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "received SIGTERM: stopping after the current step" in err
    line = next(x for x in err.splitlines() if x.startswith("rlfoundry: stopped at step"))
    step = int(line.split()[4].rstrip(";"))
    command = line.split("resume with: ", 1)[1]
    assert command == f"rlfoundry train {config} logging.progress_bar=false training.resume=auto"
    assert train_steps(out) == step and (out / "checkpoints" / f"step_{step:06d}").is_dir()
    assert main(shlex.split(command)[1:] + [f"training.max_steps={step + 1}"]) == 0
    assert train_steps(out) == step + 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_the_step_checkpoints_and_restores_handlers(tmp_path, signum):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    t = DPOTrainer(config=run_config(tmp_path, max_steps=5))
    original = t.optimizer_step

    def signalled(indices):
        if t.step == 1:
            os.kill(os.getpid(), signum)  # arrives in the middle of step 2
        return original(indices)

    t.optimizer_step = signalled
    with pytest.raises(TrainingInterrupted, match=r"stopped at step 2 by SIG.*training.resume=auto") as info:
        t.train()
    assert info.value.step == 2 and info.value.signum == signum
    assert info.value.checkpoint == tmp_path / "checkpoints" / "step_000002"
    assert train_steps(tmp_path) == 2
    assert {s: signal.getsignal(s) for s in before} == before


def test_second_sigint_abandons_the_step(tmp_path):
    t = DPOTrainer(config=run_config(tmp_path, max_steps=5))
    original = t.optimizer_step

    def twice(indices):
        if t.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(indices)

    t.optimizer_step = twice
    with pytest.raises(KeyboardInterrupt):
        t.train()
    assert train_steps(tmp_path) == 1 and not (tmp_path / "checkpoints").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
