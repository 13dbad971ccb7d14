"""Run a Markdown document's code blocks in order, the way a reader following it would.

Fenced blocks are read with their info string: ```` ```python ```` blocks are executed, in
order, in one shared namespace; a block tagged ``file=NAME`` (any language, e.g.
```` ```yaml file=run.yaml ````) is written to ``NAME`` in the working directory instead, for
later blocks to use; a block tagged ``notest`` is skipped. Blocks run with the working
directory as cwd and on ``sys.path`` (so ``import my_module`` finds a written file).
Tracebacks point at the Markdown file and line.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class CodeBlock:
    language: str
    code: str
    line: int  # line number of the block's first code line in the document
    file: str | None = None
    skip: bool = False


def code_blocks(text: str) -> list[CodeBlock]:
    """The fenced code blocks of a Markdown text, in order."""
    blocks = []
    for match in FENCE.finditer(text):
        words = match.group(1).split()
        language = words[0] if words else ""
        tags = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        line = text.count("\n", 0, match.start(2)) + 1
        blocks.append(CodeBlock(language, match.group(2), line, tags.get("file"),
                                "notest" in words[1:]))
    return blocks


def run_markdown(path: str | Path, workdir: str | Path) -> dict[str, Any]:
    """Write the ``file=`` blocks and execute the python blocks of ``path`` inside ``workdir``;
    return the shared namespace. Restores cwd, ``sys.path`` and the module cache after."""
    path, workdir = Path(path).resolve(), Path(workdir).resolve()
    namespace: dict[str, Any] = {"__name__": "__markdown__"}
    old_cwd, old_path, old_modules = os.getcwd(), list(sys.path), set(sys.modules)
    os.chdir(workdir)
    sys.path.insert(0, str(workdir))
    try:
        for block in code_blocks(path.read_text(encoding="utf-8")):
            if block.skip:
                continue
            if block.file:
                (workdir / block.file).parent.mkdir(parents=True, exist_ok=True)
                (workdir / block.file).write_text(block.code, encoding="utf-8")
            elif block.language == "python":
                padded = "\n" * (block.line - 1) + block.code  # tracebacks show document lines
                exec(compile(padded, str(path), "exec"), namespace)
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path
        for name in set(sys.modules) - old_modules:  # modules the document's files defined
            if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(workdir)):
                del sys.modules[name]
    return namespace
