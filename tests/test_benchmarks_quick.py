"""benchmarks/run_gpu.sh runs end to end on CPU (the GPU command's smoke test, issue 20)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_run_gpu_script_passes_on_cpu_quick(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    libraries = "trl,rlfoundry"
    try:
        import trl  # noqa: F401  (a benchmark dependency, never a runtime one)
    except ImportError:
        libraries = "rlfoundry"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "run_gpu.sh"), "--device", "cpu", "--quick",
         "--out", str(tmp_path), "--libraries", libraries],
        env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = (tmp_path / "results.md").read_text()
    for section in ("## dpo", "## grpo", "## scaling"):
        assert section in results
    assert "measured / executed" in results and "load" in results
    assert (tmp_path / "scaling.png").stat().st_size > 1000
    for lib in libraries.split(","):
        assert lib in (tmp_path / "dpo.txt").read_text()


def test_rlfoundry_never_imports_trl():
    """TRL stays a benchmark dependency: importing rlfoundry and its trainers loads no trl."""
    code = ("import sys, rlfoundry, rlfoundry.algorithms.dpo, rlfoundry.algorithms.grpo, "
            "rlfoundry.ops.packed; sys.exit(1 if any(m == 'trl' or m.startswith('trl.') "
            "for m in sys.modules) else 0)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
