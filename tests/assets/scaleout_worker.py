"""Worker for tests/test_scaleout2.py, started by torchrun with 2 or 3 processes (gloo, CPU).

One launch runs several short float64 trainings one after the other in the same process
group, so the import and start-up cost is paid once:

- ``fresh``: DPO with DDP and FSDP2, 4 steps each, checkpoints at step 2
  (``<root>/w<N>/<name>``); ``grpo``: GRPO with DDP and FSDP2, 2 steps;
- ``resume``: every step-2 checkpoint listed in ``<root>/resume_from_<N>.json`` resumed with
  the given strategy to step 4 (``<root>/w<N>/<name>``);
- ``reference``: the FSDP2-sharded DPO reference model against an unsharded copy (bytes per
  rank and log-probs), written to ``<root>/w<N>/reference.json``;
- ``sigterm``: the CLI trains DPO with FSDP2 and every rank gets SIGTERM before step 3;
- ``kill``: the CLI trains DPO with DDP and rank 1 is SIGKILLed before step 2 (the survivors'
  stderr is the point). Both end the launch, so they come last.

The test process compares the final weights with single-process runs.
"""

import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(sys.argv[1])
PHASES = sys.argv[2].split(",")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaleout_configs import config  # noqa: E402

from rlfoundry.algorithms.dpo import DPOTrainer  # noqa: E402
from rlfoundry.algorithms.grpo import GRPOTrainer  # noqa: E402
from rlfoundry.training import distributed  # noqa: E402

TRAINERS = {"dpo": DPOTrainer, "grpo": GRPOTrainer}


def run(algo: str, strategy: str, out: Path, resume: str | None = None) -> None:
    TRAINERS[algo](config=config(algo, out, strategy, resume)).train()


def reference_check(out: Path) -> None:
    """Shard the reference under FSDP2 and compare with an unsharded copy."""
    from rlfoundry.algorithms.reference import sequence_logps
    from rlfoundry.models import build_policy

    trainer = DPOTrainer(config=config("dpo", out, "fsdp2", None, reference_precompute=False,
                                       max_steps=1))
    trainer.train()
    dist = trainer.dist
    local = sum(p.to_local().numel() * p.element_size() if hasattr(p, "to_local")
                else p.numel() * p.element_size() for p in trainer.ref_model.parameters())
    # an unsharded copy of the initial weights: its size, and the reference log-probs
    initial = build_policy(trainer.config.model, trainer.tokenizer, seed=trainer.config.training.seed)
    initial.eval()
    full = sum(p.numel() * p.element_size() for p in initial.parameters())
    batch = trainer.collate([0, 1])
    with torch.no_grad():
        sharded = trainer.reference_logps(batch)
        plain = sequence_logps(initial, batch)
    b = batch["num_sequences"]
    diff = max(float((sharded[0].cpu() - plain[:b]).abs().max()),
               float((sharded[1].cpu() - plain[b:]).abs().max()))
    rows = distributed.all_gather_object({"rank": dist.rank, "local_bytes": local,
                                          "full_bytes": full, "logp_diff": diff})
    if dist.is_main:
        (out / "reference.json").write_text(json.dumps(rows))


def cli_run(name: str, strategy: str, env: dict[str, str], **training) -> int:
    """``rlfoundry train`` in this process (the CLI's messages and exit code)."""
    from rlfoundry.cli import main as cli_main

    out = ROOT / f"w{distributed.launched_world_size()}" / name
    cfg = config("dpo", out, strategy)
    cfg["training"].update(training)
    cfg["plugins"] = [str(Path(__file__).with_name("scaleout_plugin.py"))]
    path = ROOT / f"{name}_{distributed.launched_world_size()}_rank{os.environ['RANK']}.json"
    path.write_text(json.dumps(cfg))  # one file per rank: no rank reads a half-written one
    os.environ.update(env)
    return cli_main(["train", str(path)])


def main() -> None:
    world = distributed.launched_world_size()
    here = ROOT / f"w{world}"
    if "fresh" in PHASES:
        run("dpo", "ddp", here / "dpo_ddp")
        run("dpo", "fsdp2", here / "dpo_fsdp2")
    if "grpo" in PHASES:
        run("grpo", "ddp", here / "grpo_ddp")
        run("grpo", "fsdp2", here / "grpo_fsdp2")
    if "resume" in PHASES:
        plan = json.loads((ROOT / f"resume_from_{world}.json").read_text())
        for name, (strategy, checkpoint) in plan.items():
            run("dpo", strategy, here / name, resume=checkpoint)
    if "reference" in PHASES:
        reference_check(here / "reference")
    if "sigterm" in PHASES:
        sys.exit(cli_run("sigterm", "fsdp2", {"RLF_TEST_SIGTERM_AT": "3"}, save_every=None))
    if "kill" in PHASES:
        sys.exit(cli_run("kill", "ddp", {"RLF_TEST_SIGKILL_AT": "1:2"}, save_every=1))
    distributed.barrier()


if __name__ == "__main__":
    main()
