"""``rlfoundry quickstart``: the built-in demonstration, SFT -> GRPO and DPO, start to finish.

1. SFT: the tiny random-init model (``builtin:tiny``) learns "name the largest digit" from
   demonstrations of which 60% are wrong (they name the first digit), so it ends up right
   only about a third of the time on held-out lists;
2. GRPO from that model, with a correctness reward: held-out exact match before (the SFT
   model) and after;
3. DPO on synthetic preferences (sorted letters preferred), from a fresh tiny model:
   held-out preference accuracy before (0.5: policy = reference) and after.

The stage configs are package recipes (``rlfoundry/recipes/quickstart_*.yaml``), so it
runs from a pip install with no downloads. ``output_dir`` gets one run directory per stage
(each with its ``config.yaml``, ``metrics.jsonl`` and ``final/`` model), ``plots/*.png``,
``report.md`` and ``summary.json`` (the figures). Same seed, same figures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlfoundry.config import RunConfig, load_config
from rlfoundry.data import PreferenceDataset, PromptDataset, render_prompt
from rlfoundry.data.sources import load_dataset_spec
from rlfoundry.errors import ConfigError
from rlfoundry.training.run_record import save_config

RECIPES = Path(__file__).parent / "recipes"
NUM_SAMPLES = 5  # held-out generations / pairs shown in the report


@dataclass(frozen=True)
class Stage:
    name: str
    recipe: str
    title: str
    task: str
    metric: str  # key of the trainer's evaluate() shown before/after
    metric_title: str
    fast: tuple[str, ...]  # overrides of --fast (a smoke run; its figures mean nothing)


STAGES = (
    Stage("sft", "quickstart_sft.yaml", "SFT warm start", "largest digit; 60% of demos wrong",
          "loss", "held-out completion NLL",
          ("training.max_steps=10", "training.eval_every=5", "data.eval_size=32")),
    Stage("grpo", "quickstart_grpo.yaml", "GRPO", "largest digit; reward = correct",
          "accuracy", "held-out exact match",
          ("training.max_steps=2", "training.eval_every=1", "data.eval_size=32",
           "training.batch_size=8")),
    Stage("dpo", "quickstart_dpo.yaml", "DPO", "sort letters; synthetic preferences",
          "accuracy", "held-out preference accuracy",
          ("training.max_steps=6", "training.eval_every=3", "data.eval_size=32")),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def split_overrides(overrides: Sequence[str], stages: Sequence[str] = STAGE_NAMES) -> dict[str, list[str]]:
    """Per-stage overrides: ``grpo.training.max_steps=80`` goes to that stage only, a key
    without a stage prefix (``training.seed=1``) to every stage (of ``stages``)."""
    out: dict[str, list[str]] = {name: [] for name in stages}
    for item in overrides:
        head, _, rest = item.partition(".")
        if head in out and rest:
            out[head].append(rest)
        else:
            for name in stages:
                out[name].append(item)
    return out


def stage_configs(output_dir: Path, overrides: Sequence[str] = (), fast: bool = False,
                  progress: bool = True) -> dict[str, RunConfig]:
    """Every stage's validated config (all loaded before anything trains, so a typo in an
    override fails at once). Stage 2 starts from stage 1's final model."""
    per_stage = split_overrides(overrides)
    configs = {}
    for stage in STAGES:
        fixed = [f"training.output_dir={output_dir / stage.name}",
                 f"logging.progress_bar={str(progress).lower()}"]
        if stage.name == "grpo":
            fixed.append(f"model.name_or_path={output_dir / 'sft' / 'final'}")
        # the demo rebuilds its stage directories on every run (unless told otherwise)
        extra = ["training.overwrite=true", *(stage.fast if fast else ()), *per_stage[stage.name], *fixed]
        try:
            configs[stage.name] = load_config(RECIPES / stage.recipe, extra)
        except ConfigError as e:
            raise ConfigError(f"quickstart stage '{stage.name}': {e}") from None
    return configs


def train_stage(cfg: RunConfig):
    """Build and train one stage; return the trainer and its wall time in seconds."""
    from rlfoundry.algorithms.trainer_registry import TRAINERS

    start = time.perf_counter()
    trainer = TRAINERS.get(cfg.algorithm.name)(config=cfg)
    trainer.train()
    return trainer, time.perf_counter() - start


def stage_summary(stage: Stage, cfg: RunConfig, trainer, seconds: float) -> dict[str, Any]:
    t = cfg.training
    return {
        "name": stage.name, "title": stage.title, "task": stage.task,
        "metric": stage.metric, "metric_title": stage.metric_title,
        "before": trainer.initial_eval.get(stage.metric), "after": trainer.last_eval.get(stage.metric),
        "steps": trainer.step, "seconds": round(seconds, 1), "output_dir": stage.name,
        "settings": {"model": cfg.model.name_or_path, "data": cfg.data.train,
                     "batch_size": t.batch_size, "learning_rate": t.learning_rate,
                     "loss": cfg.algorithm.loss.get("type"), "seed": t.seed},
    }


def grpo_samples(sft_model, grpo_trainer, cfg: RunConfig, n: int = NUM_SAMPLES) -> list[dict[str, Any]]:
    """The first ``n`` held-out GRPO prompts with the greedy answers of the SFT model (before)
    and of the GRPO model (after)."""
    from rlfoundry.evaluation import first_rows, generate
    from rlfoundry.rollout import SamplingParams

    tok = grpo_trainer.tokenizer
    probe = first_rows(load_dataset_spec(cfg.data, "eval", PromptDataset), n)
    ids = probe.tokenize(tok)
    params = SamplingParams(0.0, 1.0, 0, cfg.algorithm.sampling.max_new_tokens)
    before = generate(sft_model, tok, ids, 1, params)
    after = generate(grpo_trainer.model, tok, ids, 1, params)
    return [{"prompt": render_prompt(tok, ex.prompt), "answer": ex.extras.get("answer"), "sft": b, "grpo": a}
            for ex, b, a in zip(probe, before, after)]


def dpo_pairs(dpo_trainer, cfg: RunConfig, n: int = NUM_SAMPLES) -> list[dict[str, Any]]:
    """The first ``n`` held-out pairs with the trained model's implicit-reward margin against
    the reference it started from (rebuilt from the config: model path and seed)."""
    from rlfoundry.evaluation import first_rows, pair_margins
    from rlfoundry.models import load_model

    tok = dpo_trainer.tokenizer
    pairs = first_rows(load_dataset_spec(cfg.data, "eval", PreferenceDataset), n)
    reference = load_model(cfg.model.name_or_path, tok, cfg.model.dtype, seed=cfg.training.seed)
    margins = pair_margins(dpo_trainer.model, tok, pairs, reference.to(dpo_trainer.device).eval(),
                           max_length=cfg.data.max_length)
    return [{"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected, "margin": float(m)}
            for ex, m in zip(pairs, margins)]


def run_quickstart(output_dir: str | Path = "runs/quickstart", *, fast: bool = False,
                   overrides: Sequence[str] = (), progress: bool = True, threads: int = 1,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the three stages, then write plots, report.md and summary.json; return the summary.

    ``threads`` is torch's intra-op thread count while it runs (restored after): the tiny
    model's matrices are too small to gain from more, and on a machine whose cores are busy
    extra threads mostly spin (measured 5x slower with 2 threads than 1 on 2 shared cores).
    One thread also makes the figures independent of the machine's core count.
    """
    overrides = [f"training.num_threads={threads}", *overrides]  # each stage's trainer keeps it
    with torch_threads(threads, "quickstart"):
        return _run(Path(output_dir), fast, overrides, progress, log)


@contextmanager
def torch_threads(threads: int, where: str) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside, restored after (the demos'
    ``--threads``); ConfigError naming ``where`` for a count below 1."""
    if threads < 1:
        raise ConfigError(f"{where}: threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run(root: Path, fast: bool, overrides: Sequence[str], progress: bool,
         log: Callable[[str], None]) -> dict[str, Any]:
    from rlfoundry.plotting import plot_runs
    from rlfoundry.report import render_report

    configs = stage_configs(root, overrides, fast, progress)
    start = time.perf_counter()
    stages, trainers = [], {}
    for i, stage in enumerate(STAGES, start=1):
        cfg = configs[stage.name]
        log(f"\n[{i}/{len(STAGES)}] {stage.title}: {stage.task} "
            f"({cfg.training.max_steps} steps, model {cfg.model.name_or_path})")
        save_config(cfg, root / stage.name / "config.yaml")
        trainer, seconds = train_stage(cfg)
        trainers[stage.name] = trainer
        stages.append(stage_summary(stage, cfg, trainer, seconds))
    plots = plot_runs([root / s.name for s in STAGES], root / "plots", labels=list(STAGE_NAMES),
                      panels=True)
    samples = grpo_samples(trainers["sft"].model, trainers["grpo"], configs["grpo"])
    pairs = dpo_pairs(trainers["dpo"], configs["dpo"])
    summary = {
        "fast": fast,
        "threads": torch.get_num_threads(),
        "total_seconds": round(time.perf_counter() - start, 1),
        "stages": stages,
        "grpo_samples": samples,
        "dpo_pairs": pairs,
        "plots": [p.relative_to(root).as_posix() for p in plots],
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (root / "report.md").write_text(render_report(summary), encoding="utf-8")
    return summary
