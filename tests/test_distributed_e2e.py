"""Data-parallel runs under torchrun (gloo, CPU) against a single-process run of the same
global batch, in float64: GRPO with DDP on one node (two processes), and DPO with FSDP2 on two
torchrun agents (``--nnodes=2``, one process each), killed after a sharded checkpoint,
resumed, then exported.

Each test runs the real CLI, ``python -m torch.distributed.run ... -m rlfoundry train``.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.algorithms.grpo import GRPOTrainer
from rlfoundry.cli import main

ROOT = Path(__file__).resolve().parents[1]
CRASH_PLUGIN = str(ROOT / "tests" / "assets" / "crash_at_step.py")
TIMEOUT_S = 420
# float64 end to end; differences come only from the order of floating-point sums
# (all-reduce vs. one process), which Adam can amplify on near-zero gradients to ~1e-12
ATOL = 1e-9

pytestmark = pytest.mark.slow

DPO = {
    "model": {"name_or_path": "builtin:tiny", "dtype": "float64"},
    "data": {"train": "builtin:sort_preferences", "train_size": 32, "eval_size": 16, "max_length": 48},
    "reference": {"precompute": True},
    "training": {"batch_size": 8, "micro_batch_size": 2, "max_steps": 4, "learning_rate": 1e-3,
                 "seed": 0, "eval_every": 4, "save_every": 2},
    "logging": {"tensorboard": False, "progress_bar": False},
}

GRPO = {
    "algorithm": {"name": "grpo", "group_size": 4, "num_iterations": 2,
                  "sampling": {"max_new_tokens": 5, "seed_per_prompt": True},
                  "rewards": [{"name": "format", "args": {"pattern": "\\d", "mode": "search"}},
                              {"name": "length_penalty", "args": {"target_length": 2}}],
                  "loss": {"type": "dapo", "reference_policy_kl_penalty": 0.05}},
    "model": {"name_or_path": "builtin:tiny", "dtype": "float64"},
    "data": {"train": "builtin:addition", "train_size": 32, "eval_size": 8},
    "training": {"batch_size": 4, "micro_batch_size": 4, "max_steps": 4, "learning_rate": 1e-3,
                 "seed": 0, "lr_scheduler": "constant"},
    "logging": {"tensorboard": False, "progress_bar": False},
}


def with_output(cfg, out_dir, **training):
    return {**cfg, "training": {**cfg["training"], "output_dir": str(out_dir), **training}}


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*launch_args: str, config: Path, overrides=(), env_extra=None) -> subprocess.Popen:
    env = {**os.environ, **(env_extra or {}),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch_args,
           "-m", "rlfoundry", "train", str(config), *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(*procs: subprocess.Popen) -> list[tuple[int, str]]:
    results = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT_S)
            results.append((p.returncode, out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


def single_node(config: Path, nproc: int = 2, overrides=(), env_extra=None) -> tuple[int, str]:
    proc = torchrun(f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
                    f"--master_port={free_port()}", config=config, overrides=overrides,
                    env_extra=env_extra)
    return finish(proc)[0]


def two_nodes(config: Path, overrides=(), env_extra=None) -> list[tuple[int, str]]:
    port = free_port()
    agents = [torchrun("--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
                       "--master_addr=127.0.0.1", f"--master_port={port}", config=config,
                       overrides=overrides, env_extra=env_extra) for rank in (0, 1)]
    return finish(*agents)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


def max_param_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(a: list[dict], b: list[dict], skip=()):
    assert [r["step"] for r in a] == [r["step"] for r in b]  # written once, by rank 0
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k, v in x.items():
            if k not in skip:
                assert y[k] == pytest.approx(v, rel=1e-9, abs=1e-9), (x["step"], k)


def test_grpo_ddp_two_processes_match_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    GRPOTrainer(config=with_output(GRPO, one)).train()
    cfg = write_config(tmp_path / "grpo.yaml", with_output(GRPO, two))
    code, out = single_node(cfg)
    assert code == 0, out
    assert out.count("finished 4 steps of 'grpo'") == 1  # rank 0 reports
    diff = max_param_diff(final_weights(one), final_weights(two))
    print(f"GRPO DDP 2 processes vs 1: max |param difference| = {diff:.3e}")
    assert diff < ATOL
    timing = ("generation_tokens_per_s", "training_tokens_per_s")
    assert_same_metrics(records(one), records(two), skip=timing)
    assert any(r.get("reward_std", 0) > 0 for r in records(one))  # groups carried signal


def test_two_nodes_fsdp2_resume_after_kill_and_export(tmp_path):
    """Two torchrun agents (--nnodes=2, one process each) train with FSDP2, are killed after the
    sharded checkpoint of step 2, resume from it, and end where one process ends; the sharded
    checkpoint exports to one Hugging Face directory."""
    from transformers import AutoModelForCausalLM

    dpo_single, run = tmp_path / "single", tmp_path / "fsdp2"
    DPOTrainer(config=with_output(DPO, dpo_single)).train()
    cfg = with_output(DPO, run, distributed={"strategy": "fsdp2"})
    cfg["plugins"] = [CRASH_PLUGIN]
    path = write_config(tmp_path / "dpo_fsdp2.yaml", cfg)
    crashed = two_nodes(path, env_extra={"RLF_TEST_CRASH_AT_STEP": "3"})
    assert all(code != 0 for code, _ in crashed), crashed
    step2 = run / "checkpoints" / "step_000002"
    assert sorted(p.name for p in (step2 / "sharded").iterdir() if p.suffix == ".distcp") == \
        ["__0_0.distcp", "__1_0.distcp"]  # each rank wrote its shard
    assert not (run / "final").exists()

    resumed = two_nodes(path, overrides=["training.resume=auto"])
    assert all(code == 0 for code, _ in resumed), resumed
    assert "resumed from" in resumed[0][1] and "at step 2" in resumed[0][1]
    diff = max_param_diff(final_weights(dpo_single), final_weights(run))
    print(f"DPO FSDP2 2 nodes x 1 process, killed at step 3 and resumed, vs 1 process "
          f"uninterrupted: max |param difference| = {diff:.3e}")
    assert diff < ATOL
    assert_same_metrics(records(dpo_single), records(run))

    exported = tmp_path / "exported"
    assert main(["export", str(run), str(exported)]) == 0
    model = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float64)
    final = AutoModelForCausalLM.from_pretrained(run / "final", dtype=torch.float64)
    ids = torch.tensor([[10, 20, 30, 40, 50]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, final(ids).logits)
