"""Read the two NeMo RL-style documents (shared/seeds/*.txt) and run their code blocks the way
a reader pasting them into a notebook would: in order, one namespace per document, with only
the import prefix ``nemo_rl`` changed to ``rlfoundry``.

The documents are found at test time: ``$RLFOUNDRY_SEEDS_DIR``, else the first
``shared/seeds`` folder beside the repository or one of its parents (CI checks out
``shared/`` next to the clone).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
DOCUMENTS = {"000": "000_*.txt", "004": "004_*.txt"}


def seeds_dir() -> Path | None:
    env = os.environ.get("RLFOUNDRY_SEEDS_DIR")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "seeds"
        if candidate.is_dir():
            return candidate
    return None


def document(key: str) -> Path | None:
    folder = seeds_dir()
    found = sorted(folder.glob(DOCUMENTS[key])) if folder else []
    return found[0] if found else None


@dataclass
class Block:
    index: int
    language: str
    code: str
    line: int


@dataclass
class Run:
    """What running a document gave: its namespace, each block's exception (or None)."""

    namespace: dict[str, Any]
    blocks: list[Block]
    errors: dict[int, BaseException | None] = field(default_factory=dict)

    def error(self, index: int) -> tuple[str, str] | None:
        e = self.errors[index]
        return None if e is None else (type(e).__name__, str(e))


def blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    out = []
    for i, m in enumerate(FENCE.finditer(text)):
        words = m.group(1).split()
        out.append(Block(i, words[0] if words else "", m.group(2).replace("nemo_rl", "rlfoundry"),
                         text.count("\n", 0, m.start(2)) + 1))
    return out


def run_document(path: Path, setup: dict[str, Any] | None = None) -> Run:
    """Execute the python blocks in order in one namespace (compiled without this module's
    ``from __future__`` flags, so annotations are evaluated as in a notebook) (``setup``: names a reader defines
    before running, e.g. ``model``); a block that raises is recorded and the next one runs."""
    run = Run({"__name__": "__seed_document__", **(setup or {})}, blocks(path))
    for block in run.blocks:
        if block.language != "python":
            continue
        try:
            exec(compile(block.code, f"{path.name}:{block.line}", "exec", dont_inherit=True),
                 run.namespace)
            run.errors[block.index] = None
        except Exception as e:  # noqa: BLE001 - recorded; the test pins every one
            run.errors[block.index] = e
    return run


def run_block(run: Run, index: int, prefix: str = "") -> None:
    """Run block ``index`` again in the document's namespace with ``prefix`` (the documented
    fix, e.g. a missing import) in front."""
    block = run.blocks[index]
    exec(compile(prefix + block.code, f"block {index} (fixed)", "exec", dont_inherit=True),
         run.namespace)
