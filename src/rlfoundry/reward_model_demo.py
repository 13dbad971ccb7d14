"""``rlfoundry reward-model-demo``: a reward model trained on preferences, then used as the only
GRPO reward (docs/reward_models.md).

1. ``rm``: a Bradley-Terry reward model (``algorithm.name: reward_model``) on the built-in sort
   preferences (3 of 16 letters; sorted letters chosen; rejected: another order, or an
   ascending answer that repeats, drops or invents a letter), from the tiny random-init model
   with a scalar head; its held-out pair accuracy is reported.
2. ``sft``: a warm start on sorting demonstrations of which 20% are wrong (another order).
3. ``grpo``: GRPO on sort prompts whose only reward is the stage-1 model
   (``rewards: [{name: reward_model, args: {path: <rm>/final}}]``).

The figures that matter are measured on the held-out prompts' greedy answers, before (the SFT
model) and after GRPO, by :func:`sortedness` -- not by the reward model: ``ordered`` (the share
of adjacent letters of the answer in ascending order: held-out sortedness), ``exact`` (the
answer is the prompt's letters sorted) and ``kept`` (the answer is a permutation of the
prompt's letters, which tells a policy that sorts from one that games the reward model). The stage configs are package recipes
(``rlfoundry/recipes/reward_model_*.yaml``); ``output_dir`` gets one run directory per stage
and ``summary.json``. The figures measured so far (docs/reward_models.md) still show reward
hacking: the RM's score rises while the measured exact-sorted rate falls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from rlfoundry.config import RunConfig, load_config
from rlfoundry.errors import ConfigError
from rlfoundry.quickstart import split_overrides, torch_threads

RECIPES = Path(__file__).parent / "recipes"
STAGES = {"rm": "reward_model_sort.yaml", "sft": "reward_model_demo_sft.yaml",
          "grpo": "reward_model_demo_grpo.yaml"}
FAST = {"rm": ["training.max_steps=4", "training.eval_every=2", "data.eval_size=16"],
        "sft": ["training.max_steps=4", "training.eval_every=2", "data.eval_size=16"],
        "grpo": ["training.max_steps=2", "training.eval_every=1", "data.eval_size=16",
                 "training.batch_size=4"]}


def stage_config(root: Path, name: str, overrides: Sequence[str], fast: bool = False,
                 progress: bool = True) -> RunConfig:
    """The validated config of stage ``name`` under ``root``; GRPO starts from ``root/sft/final``
    and scores with ``root/rm/final`` (so it is loaded after those stages ran)."""
    recipe = yaml.safe_load((RECIPES / STAGES[name]).read_text(encoding="utf-8"))
    if name == "grpo":
        recipe["model"]["name_or_path"] = str(root / "sft" / "final")
        recipe["algorithm"]["rewards"][0]["args"]["path"] = str(root / "rm" / "final")
    fixed = [f"training.output_dir={root / name}", f"logging.progress_bar={str(progress).lower()}"]
    extra = ["training.overwrite=true", *(FAST[name] if fast else ()), *overrides, *fixed]
    try:
        return load_config(recipe, extra)
    except ConfigError as e:
        raise ConfigError(f"reward-model demo stage '{name}': {e}") from None


def sortedness(prompt: str, answer: str) -> dict[str, float]:
    """``ordered``: share of adjacent pairs of the answer's letters in ascending order (0 for
    fewer than two letters); ``exact``: the answer is the prompt's letters sorted; ``kept``:
    the answer holds exactly the prompt's letters. ``prompt`` is ``"sort: q d m a\\n"``."""
    letters, got = prompt.split()[1:], answer.split()
    pairs = list(zip(got, got[1:]))
    ordered = sum(a < b for a, b in pairs) / len(pairs) if pairs else 0.0
    return {"ordered": ordered, "exact": float(got == sorted(letters)),
            "kept": float(sorted(got) == sorted(letters))}


def held_out_sortedness(model, tokenizer, cfg: RunConfig, show: int = 3) -> dict[str, Any]:
    """Mean :func:`sortedness` of greedy answers to the held-out prompts of ``cfg`` (GRPO's),
    and the first ``show`` (prompt, answer) pairs."""
    from rlfoundry.data import PromptDataset
    from rlfoundry.data.sources import load_dataset_spec
    from rlfoundry.evaluation import generate
    from rlfoundry.rollout import SamplingParams

    rows = load_dataset_spec(cfg.data, "eval", PromptDataset)
    prompts = [ex.prompt for ex in rows]
    params = SamplingParams(0.0, 1.0, 0, cfg.algorithm.sampling.max_new_tokens)
    was_training = model.training
    answers = generate(model.eval(), tokenizer, rows.tokenize(tokenizer), 1, params)
    model.train(was_training)
    scores = [sortedness(p, a) for p, a in zip(prompts, answers)]
    out: dict[str, Any] = {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}
    out["samples"] = [[p.strip(), a] for p, a in list(zip(prompts, answers))[:show]]
    return out


def run_demo(output_dir: str | Path = "runs/reward_model_demo", *, fast: bool = False,
             overrides: Sequence[str] = (), progress: bool = True, threads: int = 1,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the three stages; write and return the summary (see the module docstring).
    ``threads``: torch's intra-op threads while it runs (1 suits the tiny model; restored after)."""
    with torch_threads(threads, "reward-model demo"):
        return _run(Path(output_dir), fast, overrides, progress, log)


def _run(root: Path, fast: bool, overrides: Sequence[str], progress: bool,
         log: Callable[[str], None]) -> dict[str, Any]:
    from rlfoundry.algorithms.trainer_registry import TRAINERS

    per_stage = split_overrides(overrides, list(STAGES))
    configs = {n: stage_config(root, n, per_stage[n], fast, progress) for n in ("rm", "sft")}
    start, trainers, seconds = time.perf_counter(), {}, {}
    for i, name in enumerate(STAGES, start=1):
        if name == "grpo":
            configs[name] = stage_config(root, name, per_stage[name], fast, progress)
        cfg = configs[name]
        log(f"\n[{i}/3] {name}: {cfg.algorithm.name} on {cfg.data.train} "
            f"({cfg.training.max_steps} steps, model {cfg.model.name_or_path})")
        began = time.perf_counter()
        trainers[name] = TRAINERS.get(cfg.algorithm.name)(config=cfg)
        trainers[name].train()
        seconds[name] = round(time.perf_counter() - began, 1)
    rm, grpo = trainers["rm"], trainers["grpo"]
    with torch.no_grad():
        before = held_out_sortedness(trainers["sft"].model, grpo.tokenizer, configs["grpo"])
        after = held_out_sortedness(grpo.model, grpo.tokenizer, configs["grpo"])
    summary = {
        "fast": fast, "threads": torch.get_num_threads(),
        "total_seconds": round(time.perf_counter() - start, 1), "seconds": seconds,
        "rm": {"accuracy": rm.last_eval.get("accuracy"),
               "accuracy_before": rm.initial_eval.get("accuracy"), "steps": rm.step},
        "sortedness": {"before": before, "after": after, "steps": grpo.step,
                       "eval_prompts": configs["grpo"].data.eval_size},
        "rm_reward_mean": {"before": grpo.initial_eval.get("reward_mean"),
                           "after": grpo.last_eval.get("reward_mean")},
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The figures as a few lines of text."""
    def num(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    rm, sort, rew = summary["rm"], summary["sortedness"], summary["rm_reward_mean"]
    b, a = sort["before"], sort["after"]
    lines = [f"reward model: held-out pair accuracy {num(rm['accuracy_before'])} -> "
             f"{num(rm['accuracy'])} ({rm['steps']} steps)",
             f"GRPO with the reward model as the only reward ({sort['steps']} steps), greedy "
             f"answers to {sort['eval_prompts']} held-out prompts, SFT model -> GRPO model:",
             f"  sortedness (adjacent letters in order)   {num(b['ordered'])} -> {num(a['ordered'])}",
             f"  exactly sorted                           {num(b['exact'])} -> {num(a['exact'])}",
             f"  keeps the prompt's letters               {num(b['kept'])} -> {num(a['kept'])}",
             f"  mean reward-model score                  {num(rew['before'])} -> {num(rew['after'])}"]
    lines += [f"  {p!r}: {x!r} -> {y!r}" for (p, x), (_, y) in zip(b["samples"], a["samples"])]
    lines.append(f"total {summary['total_seconds']} s, {summary['threads']} thread(s)")
    if summary["fast"]:
        lines.append("(--fast: a smoke run; these figures mean nothing)")
    return "\n".join(lines)
