import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests use tiny models: one intra-op thread per process is as fast on a quiet 2-core
# machine and far faster when processes share the cores (subprocesses inherit this).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tokenizer():
    from rlfoundry.models import build_tokenizer

    return build_tokenizer()



# ---- end-to-end runs shared by the tests that assert on them (one run per session) ----------
ROOT = Path(__file__).resolve().parents[1]
SFT_EXAMPLE = ROOT / "examples" / "configs" / "sft_max.yaml"


@dataclass(frozen=True)
class QuickstartRun:
    out: Path  # --output-dir: sft/, grpo/, dpo/, plots/, report.md, summary.json
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> QuickstartRun:
    """`rlfoundry quickstart` with its default settings, run once in a fresh process; the tests
    check its figures and outputs (tests/test_quickstart.py), and its SFT stage is the GRPO
    demos' warm start (`sft_max_model`)."""
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    proc = subprocess.run([sys.executable, "-m", "rlfoundry", "quickstart", "--output-dir", str(out),
                           "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    return QuickstartRun(out, proc)


def _training_run(config) -> dict:
    """A config without the keys that change where a run writes and how often it evaluates,
    not the weights it trains (SFT evaluation draws no random numbers)."""
    dumped = config.model_dump(mode="json")
    for key in ("output_dir", "eval_every"):
        dumped["training"].pop(key)
    return dumped


def quickstart_sft_is_the_sft_example() -> bool:
    from rlfoundry.config import load_config
    from rlfoundry.quickstart import RECIPES

    return _training_run(load_config(SFT_EXAMPLE)) == _training_run(load_config(RECIPES / "quickstart_sft.yaml"))


@pytest.fixture(scope="session")
def sft_max_model(request, tmp_path_factory) -> Path:
    """The model `rlfoundry train examples/configs/sft_max.yaml` saves: the warm start of the
    GRPO demos (README). Training is deterministic for a config, so when this session runs the
    quickstart anyway and its SFT stage is the same run (same recipe apart from output_dir and
    eval_every), the quickstart's SFT model is that model, bit for bit; otherwise (a test file run
    on its own, or the two recipes diverged) sft_max.yaml is trained here."""
    from rlfoundry.cli import main

    session_runs_quickstart = any("quickstart_run" in getattr(item, "fixturenames", ())
                                  for item in request.session.items)
    if session_runs_quickstart and quickstart_sft_is_the_sft_example():
        run = request.getfixturevalue("quickstart_run")
        assert run.proc.returncode == 0, run.proc.stderr[-3000:]
        return run.out / "sft" / "final"
    out = tmp_path_factory.mktemp("sft_max") / "sft"
    assert main(["train", str(SFT_EXAMPLE), f"training.output_dir={out}", "logging.progress_bar=false",
                 "logging.tensorboard=false"]) == 0
    return out / "final"
