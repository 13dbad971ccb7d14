"""TRL stays out of rlfoundry. (benchmarks/run_gpu.sh --device cpu --quick, the GPU command's
smoke run with TRL, is a step of .ci/run, not a test: it installs the bench extra first.)"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_rlfoundry_never_imports_trl():
    """TRL stays a benchmark dependency: importing rlfoundry and its trainers loads no trl."""
    code = ("import sys, rlfoundry, rlfoundry.algorithms.dpo, rlfoundry.algorithms.grpo, "
            "rlfoundry.ops.packed; sys.exit(1 if any(m == 'trl' or m.startswith('trl.') "
            "for m in sys.modules) else 0)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
