"""When does data parallelism pay off on CPU: 1 process vs 2 processes with DDP and FSDP2.

Runs the same DPO job (builtin model, fp32, gloo on 127.0.0.1) three ways, one after the
other in this invocation, and prints per-step wall time (median over the steps after the
first), the speed-up over one process, the scaling efficiency (speed-up / processes), the CPU
time the run used per step (all processes) and the parameter + gradient + AdamW bytes each
rank holds. Not a test; see docs/distributed.md ("DDP or FSDP2") for measured figures.

    PYTHONPATH=src python benchmarks/bench_scaleout.py --size small --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _config(out: Path, size: str, steps: int, strategy: str) -> dict:
    return {
        "model": {"name_or_path": f"builtin:{size}", "dtype": "float32"},
        "data": {"train": "builtin:sort_preferences", "train_size": 64, "max_length": 64},
        "reference": {"precompute": True},
        "training": {"batch_size": 8, "micro_batch_size": 4, "max_steps": steps,
                     "learning_rate": 1e-4, "seed": 0, "output_dir": str(out),
                     "distributed": {"strategy": strategy}},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(work: Path, name: str, nproc: int, cfg: dict) -> dict:
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    train = ["-m", "rlfoundry", "train", str(path)]
    cmd = ([sys.executable, *train] if nproc == 1 else
           [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1", f"--master_port={_port()}", *train])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rows = [json.loads(line) for line in (Path(cfg["training"]["output_dir"]) / "timings.jsonl")
            .read_text().splitlines()]
    steps = [r["step_seconds"] for r in rows if "step_seconds" in r][1:]
    return {"step_s": statistics.median(steps), "run_wall_s": wall, "run_cpu_s": cpu,
            "cpu_per_wall": cpu / wall}


def _state_bytes(size: str) -> int:
    """Parameters + gradients + two AdamW moments, fp32, of the whole model."""
    from rlfoundry.models import build_model, build_tokenizer

    n = sum(p.numel() for p in build_model(size, build_tokenizer()).parameters())
    return 4 * 4 * n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    full = _state_bytes(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {}
        for name, nproc, strategy in (("1 process", 1, "ddp"), ("2 x DDP", 2, "ddp"),
                                      ("2 x FSDP2", 2, "fsdp2")):
            cfg = _config(work / name.replace(" ", "_"), args.size, args.steps, strategy)
            results[name] = {**_run(work, name.replace(" ", "_"), nproc, cfg),
                             "nproc": nproc,
                             "rank_state_mb": full / (nproc if strategy == "fsdp2" and nproc > 1 else 1) / 2**20}
            print(name, json.dumps(results[name]), flush=True)
    base = results["1 process"]["step_s"]
    print(f"builtin:{args.size}, fp32, global batch 8 pairs, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
    print(f"{'':<11}{'step s':>8}{'speed-up':>10}{'efficiency':>12}{'CPU/wall':>10}{'state MB/rank':>15}")
    for name, r in results.items():
        speedup = base / r["step_s"]
        print(f"{name:<11}{r['step_s']:>8.3f}{speedup:>10.2f}{speedup / r['nproc']:>12.0%}"
              f"{r['cpu_per_wall']:>10.2f}{r['rank_state_mb']:>15.1f}")


if __name__ == "__main__":
    main()
