"""Every tutorial under docs/tutorials runs as written (see tests/markdown_runner.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.markdown_runner import code_blocks, run_markdown

ALL_TUTORIALS = sorted((Path(__file__).resolve().parent.parent / "docs" / "tutorials").glob("*.md"))
TUTORIALS = ALL_TUTORIALS


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_code_blocks_run(path, tmp_path):
    assert any(b.language == "python" and not b.file for b in code_blocks(path.read_text()))
    run_markdown(path, tmp_path)


def test_every_tutorial_is_run_by_some_test():
    names = {p.name for p in ALL_TUTORIALS}
    assert {"custom_grouping.md", "write_your_own_loss.md", "write_a_grpo_loss.md"} <= names


DOC = '''# Title

```python file=helper.py
VALUE = 41
```

```yaml file=conf/run.yaml
key: 1
```

Text.

```python
import helper
result = helper.VALUE + 1
```

```python notest
raise SystemExit("skipped")
```

```bash
echo not run
```
'''


def test_markdown_runner_writes_files_and_runs_python_in_order(tmp_path):
    blocks = code_blocks(DOC)
    assert [(b.language, b.file, b.skip) for b in blocks] == [
        ("python", "helper.py", False), ("yaml", "conf/run.yaml", False), ("python", None, False),
        ("python", None, True), ("bash", None, False)]
    assert blocks[2].line == 14 and blocks[2].code.startswith("import helper")
    doc = tmp_path / "doc.md"
    doc.write_text(DOC)
    work = tmp_path / "work"
    work.mkdir()
    namespace = run_markdown(doc, work)
    assert namespace["result"] == 42
    assert (work / "conf" / "run.yaml").read_text() == "key: 1\n"


def test_markdown_runner_failure_points_at_the_document_line(tmp_path):
    doc = tmp_path / "bad.md"
    doc.write_text("intro\n\n```python\nx = 1\nraise ValueError('boom')\n```\n")
    with pytest.raises(ValueError, match="boom") as info:
        run_markdown(doc, tmp_path)
    frame = info.traceback[-1]
    assert frame.path == doc and frame.lineno + 1 == 5  # pytest's lineno is 0-based
