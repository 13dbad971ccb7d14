"""The README's code cannot rot: its custom-loss example runs and learns, its commands exist."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def code_block(heading: str, language: str) -> str:
    """The first ``language`` code block after the markdown ``heading``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    match = re.compile(rf"```{language}\n(.*?)```", re.DOTALL).search(text, start)
    assert match is not None, f"no {language} block after {heading!r}"
    return match.group(1)


@pytest.mark.slow
def test_custom_loss_example_runs_and_learns(tmp_path):
    code = code_block("## A custom loss in 30 lines", "python")
    assert len(code.splitlines()) <= 30
    # run as a script in a fresh interpreter, as a reader would (it writes runs/ under cwd)
    script = tmp_path / "margin_dpo.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    match = re.search(r"preference accuracy (\d\.\d\d) -> (\d\.\d\d)", out.stdout)
    assert match is not None, out.stdout
    before, after = map(float, match.groups())
    assert before == 0.5 and after >= 0.9, (before, after)
    assert (tmp_path / "runs" / "margin_dpo" / "final" / "config.json").is_file()


def test_readme_commands_are_real_subcommands_and_options():
    from rlfoundry.cli import build_parser

    lines = [line for line in README.read_text(encoding="utf-8").splitlines() if "rlfoundry " in line]
    commands = [part.strip().split()[1:] for line in lines for part in line.split("&&")
                if part.strip().startswith("rlfoundry ")]
    assert {c[0] for c in commands} >= {"quickstart", "train", "eval", "plot"}
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(command)  # unknown options exit with an error
        assert callable(args.func)
