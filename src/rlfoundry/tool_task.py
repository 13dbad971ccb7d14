"""``rlfoundry quickstart --task tools``: a task where a tool measurably helps.

The tiny random-init model (``builtin:tiny``) is asked ``(a+b) mod 7`` (or ``-``, ``mod 9``)
for two bound 4-digit numbers (``builtin:tool_modulo``), which it cannot learn to do in its head
in a few CPU minutes; the calculator evaluates ``(a+b)%7`` over the row's variables.
Two policies are trained the same way, SFT on partly wrong demonstrations and then multi-turn
GRPO with the ``tools`` environment and an exact-match reward:

- ``tools``: the demonstrations call the ``calculator`` (``<calculator>(a+b)%7</calculator>``,
  the ``tags`` format) and then answer with its result; half of them skip the tool and guess
  the first digit of ``a``. GRPO runs with the calculator available;
- ``no_tools``: the demonstrations answer directly (half of them the same guess); GRPO runs
  with no tools (``environment.args.tools: []``).

Held-out exact match (greedy episodes), tool calls and turns per episode are reported for the
SFT start and after GRPO of each. Stage configs are package recipes
(``rlfoundry/recipes/tools_*.yaml``); ``output_dir`` gets one run directory per stage,
``summary.json`` and ``report.md`` with the table.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from rlfoundry.config import RunConfig, load_config
from rlfoundry.errors import ConfigError
from rlfoundry.quickstart import RECIPES, save_config, split_overrides, torch_threads, train_stage


@dataclass(frozen=True)
class ToolStage:
    name: str
    recipe: str
    start_from: str | None  # the stage whose final model it starts from
    settings: tuple[str, ...]  # what makes it this stage (after the recipe)
    fast: tuple[str, ...]


STAGES = (
    ToolStage("sft_tools", "tools_sft.yaml", None, (),
              ("training.max_steps=10", "training.eval_every=5", "data.eval_size=16")),
    ToolStage("grpo_tools", "tools_grpo.yaml", "sft_tools", (),
              ("training.max_steps=2", "training.eval_every=1", "data.eval_size=16",
               "training.batch_size=4")),
    ToolStage("sft_no_tools", "tools_sft.yaml", None, ("data.builtin_options.tools=false",),
              ("training.max_steps=10", "training.eval_every=5", "data.eval_size=16")),
    ToolStage("grpo_no_tools", "tools_grpo.yaml", "sft_no_tools", ("environment.args.tools=[]",),
              ("training.max_steps=2", "training.eval_every=1", "data.eval_size=16",
               "training.batch_size=4")),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
EVAL_KEYS = {"accuracy": "accuracy", "tool_calls": "env/tool_calls", "turns": "env/turns"}


def stage_configs(root: Path, overrides: Sequence[str] = (), fast: bool = False,
                  progress: bool = True) -> dict[str, RunConfig]:
    """Every stage's validated config, loaded before anything trains."""
    per_stage = split_overrides(overrides, STAGE_NAMES)
    configs = {}
    for stage in STAGES:
        fixed = [f"training.output_dir={root / stage.name}", f"logging.progress_bar={str(progress).lower()}"]
        if stage.start_from:
            fixed.append(f"model.name_or_path={root / stage.start_from / 'final'}")
        extra = ["training.overwrite=true", *stage.settings, *(stage.fast if fast else ()),
                 *per_stage[stage.name], *fixed]
        try:
            configs[stage.name] = load_config(RECIPES / stage.recipe, extra)
        except ConfigError as e:
            raise ConfigError(f"tool task stage '{stage.name}': {e}") from None
    return configs


def eval_figures(metrics: dict[str, float]) -> dict[str, float | None]:
    """Exact match, tool calls per episode and turns per episode from a GRPO evaluation."""
    return {k: (float(metrics[v]) if v in metrics else None) for k, v in EVAL_KEYS.items()}


def run_tool_task(output_dir: str | Path = "runs/tools", *, fast: bool = False,
                  overrides: Sequence[str] = (), progress: bool = True, threads: int = 1,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the four stages; write ``summary.json`` and ``report.md``; return the summary."""
    root = Path(output_dir)
    with torch_threads(threads, "tool task"):
        configs = stage_configs(root, overrides, fast, progress)
        start = time.perf_counter()
        stages: dict[str, dict[str, Any]] = {}
        for i, stage in enumerate(STAGES, start=1):
            cfg = configs[stage.name]
            log(f"\n[{i}/{len(STAGES)}] {stage.name} ({cfg.training.max_steps} steps, "
                f"model {cfg.model.name_or_path})")
            save_config(cfg, root / stage.name / "config.yaml")
            trainer, seconds = train_stage(cfg)
            stages[stage.name] = {"steps": trainer.step, "seconds": round(seconds, 1),
                                  "before": dict(trainer.initial_eval), "after": dict(trainer.last_eval)}
    summary = {
        "fast": fast, "threads": threads, "total_seconds": round(time.perf_counter() - start, 1),
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}, "
                   f"torch {torch.__version__}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "results": results(stages), "stages": stages,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (root / "report.md").write_text(render_table(summary) + "\n", encoding="utf-8")
    return summary


def results(stages: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (policy, moment): the SFT start is the GRPO stage's step-0 evaluation."""
    rows = []
    for policy, name in (("tools", "grpo_tools"), ("no tools", "grpo_no_tools")):
        for moment, key in (("SFT start", "before"), ("after GRPO", "after")):
            rows.append({"policy": policy, "moment": moment, **eval_figures(stages[name][key])})
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_table(summary: dict[str, Any]) -> str:
    """The before/after table as Markdown."""
    lines = ["| policy | moment | held-out exact match | tool calls / episode | turns / episode |",
             "|---|---|---|---|---|"]
    for r in summary["results"]:
        lines.append(f"| {r['policy']} | {r['moment']} | {_fmt(r['accuracy'])} | "
                     f"{_fmt(r['tool_calls'])} | {_fmt(r['turns'])} |")
    secs = ", ".join(f"{k} {v['seconds']} s" for k, v in summary["stages"].items())
    lines.append(f"\n{summary['date']}; {summary['machine']}; {summary['threads']} torch thread(s); "
                 f"total {summary['total_seconds']} s ({secs})" + ("; --fast" if summary["fast"] else ""))
    return "\n".join(lines)
