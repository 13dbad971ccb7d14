"""The ``rlfoundry`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys
from pathlib import Path

from rlfoundry.errors import ConfigError, PeerLostError, RLFoundryError, TrainingInterrupted

DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "dpo_tiny.yaml"


def _train(args) -> int:
    from rlfoundry.algorithms.trainer_registry import TRAINERS
    from rlfoundry.config import load_config
    from rlfoundry.training.storage import check_writable

    flags = ([f"training.resume={args.resume}"] if args.resume else []) + (
        ["training.overwrite=true"] if args.overwrite else []) + (
        [f"training.num_threads={args.threads}"] if args.threads is not None else [])
    cfg = load_config(args.config or DEFAULT_RECIPE, [*args.overrides, *flags])
    if not args.config:
        print(demo_notice(cfg), file=sys.stderr)
    check_writable(cfg.training.output_dir)  # before the model is loaded
    trainer = TRAINERS.get(cfg.algorithm.name)(config=cfg)
    try:
        metrics = trainer.train()
    except TrainingInterrupted as e:
        if trainer.dist.local_rank == 0:  # one line per node: each node's own torchrun command
            print(f"rlfoundry: stopped at step {e.step}; resume with: {resume_command(args)}",
                  file=sys.stderr)
        return 128 + e.signum  # the shell convention: 130 for SIGINT, 143 for SIGTERM
    except PeerLostError as e:  # every survivor says it: rank 0 may be the one that is gone
        print(f"rlfoundry: error: {error_text(e)}\nrlfoundry: resume with: {resume_command(args)}",
              file=sys.stderr)
        return 2
    if not trainer.dist.is_main:  # under torchrun rank 0 reports
        return 0
    before, after = trainer.initial_eval, trainer.last_eval
    print(f"\nfinished {trainer.step} steps of '{cfg.algorithm.name}'; model saved to "
          f"{trainer.output_dir / 'final'}; metrics in {trainer.output_dir / 'metrics.jsonl'}")
    if metrics:
        print("last step: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    for key in ("accuracy", "reward_gap", "loss"):
        if key in after:
            shown = f"{before[key]:.3f} -> " if key in before else ""
            print(f"held-out {key}: {shown}{after[key]:.3f}")
    return 0


def demo_notice(cfg) -> str:
    """What ``rlfoundry train`` without a config file is about to do (it trains a demo)."""
    t = cfg.training
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epochs"
    return (f"rlfoundry: no config file given: training the built-in demo ({DEFAULT_RECIPE.name}: "
            f"{cfg.algorithm.name} on {cfg.model.name_or_path} with {cfg.data.train}, "
            f"{length}, into {cfg.training.output_dir}). To train your own, "
            f"pass a YAML config: rlfoundry train my_run.yaml (examples in examples/configs/, "
            f"every key in docs/configuration.md).")


def resume_command(args, argv: list[str] | None = None) -> str:
    """The command line that continues this run from its newest checkpoint; under torchrun
    with the launcher and its arguments as they started this process (``argv``: this
    program's arguments, default ``sys.argv[1:]``)."""
    from rlfoundry.training.distributed import launcher_words

    launcher = launcher_words(sys.argv[1:] if argv is None else argv)
    words = (launcher or ["rlfoundry"]) + ["train"] + ([args.config] if args.config else [])
    words += [o for o in args.overrides if not o.startswith("training.resume=")]
    return shlex.join(words + ["training.resume=auto"])


def registries() -> dict[str, dict[str, str]]:
    """Every extension point, name -> one-line doc, by kind (built-ins and plugins)."""
    from rlfoundry.algorithms.advantages import ADVANTAGE_ESTIMATORS
    from rlfoundry.algorithms.grouping import GROUPINGS
    from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
    from rlfoundry.algorithms.trainer_registry import TRAINERS, load_builtin_trainers
    from rlfoundry.environments import ENVIRONMENTS
    from rlfoundry.rewards import REWARDS
    from rlfoundry.training.schedules import SCHEDULES

    load_builtin_trainers()
    return {"algorithms": TRAINERS.describe(), "losses": LossFunctionRegistry.describe(),
            "advantage estimators": ADVANTAGE_ESTIMATORS.describe(),
            "grouping strategies": GROUPINGS.describe(), "rewards": REWARDS.describe(),
            "schedules": SCHEDULES.describe(), "environments": ENVIRONMENTS.describe(),
            **tool_registries()}


def tool_registries() -> dict[str, dict[str, str]]:
    """The tools and tool-call parsers of the ``tools`` environment (docs/tools.md)."""
    from rlfoundry.environments import TOOL_PARSERS, TOOLS

    return {"tools": {name: TOOLS.get(name).description for name in TOOLS.names()},
            "tool parsers": TOOL_PARSERS.describe()}


def _list(args) -> int:
    from rlfoundry.plugins import import_plugins

    import_plugins(args.plugins)
    for kind, described in {**registries(), **builtins()}.items():
        if args.kind and kind.split()[0] != args.kind:
            continue
        print(f"{kind}:")
        for name, doc in described.items():
            print(f"  {name:<24} {doc}")
    return 0


def builtins() -> dict[str, dict[str, str]]:
    """The built-in data sets and models (``builtin:NAME`` in data.train / model.name_or_path)."""
    from rlfoundry.data.synthetic import BUILTIN_DATASETS
    from rlfoundry.models.tiny import SIZES

    def summary(fn) -> str:  # the docstring's first paragraph, reST markup removed
        text = " ".join((fn.__doc__ or "").split("\n\n")[0].split())
        return re.sub(r":\w+:`([^`]*)`", r"\1", text).replace("``", "`")

    datasets = {f"builtin:{name}": f"({kind}) {summary(make)}"
                for name, (make, kind, _n) in BUILTIN_DATASETS.items()}
    models = {f"builtin:{name}": f"random-init Qwen2: {s['num_hidden_layers']} layers, hidden "
              f"{s['hidden_size']}, {s['num_attention_heads']} heads (no download)"
              for name, s in SIZES.items()}
    return {"datasets": datasets, "models": models}


def _check_loss(args) -> int:
    from rlfoundry.config.loader import parse_value
    from rlfoundry.loss_check import check_loss, loss_factory

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--option expects key=value, got '{item}'")
        options[key] = parse_value(value, f"--option {key}")
    report = check_loss(loss_factory(args.loss, options), args.kind)
    print(report.format())
    return 0 if report.passed else 1


def _quickstart(args) -> int:
    from rlfoundry.quickstart import run_quickstart
    from rlfoundry.report import expected_range_text, headline, results_table

    if args.task == "tools":  # the tool task (docs/environments.md, "A task where tools help")
        from rlfoundry.tool_task import render_table, run_tool_task

        out = Path(args.output_dir if args.output_dir != "runs/quickstart" else "runs/tools")
        summary = run_tool_task(out, fast=args.fast, overrides=args.overrides,
                                progress=not args.no_progress, threads=args.threads)
        print("\n" + render_table(summary) + f"\n\nreport: {out / 'report.md'}")
        return 0

    summary = run_quickstart(args.output_dir, fast=args.fast, overrides=args.overrides,
                             progress=not args.no_progress, threads=args.threads)
    out = Path(args.output_dir)
    print("\n" + results_table(summary) + "\n\n" + headline(summary))
    print("\n" + expected_range_text(summary, default_settings=not args.overrides))
    print(f"\nreport: {out / 'report.md'}; plots: {out / 'plots'}; models: "
          f"{out}/{{sft,grpo,dpo}}/final")
    return 0


def _reward_model_demo(args) -> int:
    from rlfoundry.reward_model_demo import format_summary, run_demo

    summary = run_demo(args.output_dir, fast=args.fast, overrides=args.overrides,
                       progress=not args.no_progress, threads=args.threads)
    print("\n" + format_summary(summary))
    print(f"\nsummary: {Path(args.output_dir) / 'summary.json'}; runs: {args.output_dir}/{{rm,sft,grpo}}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"values must be >= 1, got '{text}'")
    return values


def _eval(args) -> int:
    from rlfoundry import evaluation
    from rlfoundry.models import load_model, load_tokenizer
    from rlfoundry.training.base import select_device
    from rlfoundry.training.threads import apply_threads

    if not args.prompts and not args.pairs:
        raise ConfigError("eval: give --prompts (accuracy, pass@k) and/or --pairs (preference accuracy)")
    device = select_device(args.device)
    apply_threads(args.threads, device)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, tokenizer, seed=args.seed).to(device).eval()
    result: dict = {"model": args.model}
    if args.prompts and args.environment:
        _eval_environment(args, model, tokenizer, result)
    elif args.prompts:
        reward_fns = _eval_rewards(args)
        dataset = evaluation.load_prompts(args.prompts, args.limit)
        ks = args.k if args.num_samples else []
        metrics, samples = evaluation.evaluate_prompts(
            model, tokenizer, dataset, reward_fns, ks=ks, num_samples=args.num_samples,
            temperature=args.temperature, max_new_tokens=args.max_new_tokens,
            threshold=args.threshold, seed=args.seed, show=args.show)
        result["prompts"] = {"source": args.prompts, "rewards": [n for n, _, _ in reward_fns], **metrics}
        result["samples"] = samples
        print(f"{args.prompts}: {int(metrics['num_prompts'])} prompts, reward "
              f"{' + '.join(result['prompts']['rewards'])}, correct = reward >= {args.threshold:g}")
        print(f"  accuracy (greedy)  {metrics['accuracy']:.3f}")
        print(f"  reward mean        {metrics['reward_mean']:.3f}")
        for k in ks:
            print(f"  pass@{k:<13} {metrics[f'pass@{k}']:.3f}   "
                  f"(n={args.num_samples} samples, temperature {args.temperature:g})")
        for i, sample in enumerate(samples, start=1):
            print(f"  [{i}] prompt {sample['prompt']!r} -> {sample['completion']!r} "
                  f"(answer {sample['answer']!r}, reward {sample['reward']})")
    if args.pairs:
        reference = (load_model(args.reference, tokenizer, seed=args.seed).to(device).eval()
                     if args.reference else None)
        pairs = evaluation.load_pairs(args.pairs, args.limit)
        margins = evaluation.pair_margins(model, tokenizer, pairs, reference)
        metrics = evaluation.margin_metrics(margins)
        samples = evaluation.pair_samples(model, tokenizer, pairs, margins, show=args.show,
                                          max_new_tokens=args.max_new_tokens)
        how = f"implicit reward vs {args.reference}" if reference is not None else "log-probs, no reference"
        result["pairs"] = {"source": args.pairs, "reference": args.reference, **metrics}
        result["pair_samples"] = samples
        print(f"{args.pairs}: {int(metrics['num_pairs'])} pairs ({how})")
        print(f"  preference accuracy {metrics['preference_accuracy']:.3f}")
        print(f"  mean margin         {metrics['margin_mean']:+.3f}")
        for i, sample in enumerate(samples, start=1):
            print(f"  [{i}] prompt {sample['prompt']!r} -> {sample['completion']!r} (chosen "
                  f"{sample['chosen']!r}, rejected {sample['rejected']!r}, margin {sample['margin']:+.2f})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _eval_environment(args, model, tokenizer, result: dict) -> None:
    """``eval --environment``: episodes of the prompt rows (docs/environments.md)."""
    from rlfoundry import evaluation
    from rlfoundry.config.schema import EnvironmentConfig
    from rlfoundry.environments.build import build_environment, episode_settings
    from rlfoundry.environments.evaluation import evaluate_episodes

    try:
        env_args = json.loads(args.env_args)
        env_cfg = EnvironmentConfig(name=args.environment, args=env_args, max_turns=args.max_turns)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"eval --environment/--env-args/--max-turns: {e}") from None
    reward_fns = _eval_rewards(args, required=False)
    env = build_environment(env_cfg)
    dataset = evaluation.load_prompts(args.prompts, args.limit)
    ks = args.k if args.num_samples else []
    metrics, samples = evaluate_episodes(
        model, tokenizer, dataset, env, reward_fns, settings=episode_settings(env_cfg, "raise"),
        ks=ks, num_samples=args.num_samples, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, threshold=args.threshold, seed=args.seed, show=args.show)
    result["prompts"] = {"source": args.prompts, "environment": args.environment,
                         "rewards": [n for n, _, _ in reward_fns], **metrics}
    result["samples"] = samples
    print(f"{args.prompts}: {int(metrics['num_prompts'])} episodes with environment "
          f"'{args.environment}', correct = reward >= {args.threshold:g}")
    print(f"  accuracy (greedy)  {metrics['accuracy']:.3f}")
    print(f"  reward mean        {metrics['reward_mean']:.3f}")
    print(f"  turns per episode  {metrics['env/turns']:.2f}")
    for k in ks:
        print(f"  pass@{k:<13} {metrics[f'pass@{k}']:.3f}   "
              f"(n={args.num_samples} episodes, temperature {args.temperature:g})")
    for i, sample in enumerate(samples, start=1):
        turns = " | ".join(f"{m['role']}: {m['content']!r}" for m in sample["messages"])
        print(f"  [{i}] {turns} ({sample['outcome']}, reward {sample['reward']})")


def _eval_rewards(args, required: bool = True):
    from rlfoundry.algorithms.grpo import DEFAULT_REWARDS
    from rlfoundry.plugins import import_plugins
    from rlfoundry.rewards import resolve_rewards

    import_plugins(args.plugins)
    names = args.reward
    if not names and not required:
        return []
    if not names:
        builtin = args.prompts[len("builtin:"):] if args.prompts.startswith("builtin:") else None
        if builtin not in DEFAULT_REWARDS:
            raise ConfigError("eval: --reward is needed for these prompts (e.g. --reward "
                              "math_accuracy, or my_module:my_reward); see `rlfoundry list`")
        names = [spec["name"] for spec in DEFAULT_REWARDS[builtin]]
    try:
        return resolve_rewards(names)
    except ConfigError as e:
        raise ConfigError(f"eval --reward: {e}") from None


def _plot(args) -> int:
    from rlfoundry.plotting import default_out_dir, plot_runs

    out = args.out or default_out_dir(args.runs)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    for path in plot_runs(args.runs, out, metrics):
        print(path)
    return 0


def _env(args) -> int:
    from rlfoundry.system_info import format_report

    print("rlfoundry environment (paste this into a bug report):")
    print(format_report())
    return 0


def _export(args) -> int:
    from rlfoundry.export import export

    used = export(args.checkpoint, args.out_dir)
    print(f"exported {used} to {args.out_dir} (loadable with AutoModelForCausalLM.from_pretrained)")
    return 0


def _rollout_server(args) -> int:
    from rlfoundry.rollout.vllm_server import run_server

    return run_server(args.model, args.host, args.port, args.dtype, args.max_model_len,
                      args.kv_cache_gib, [a for a in args.vllm_args if a != "--"])


def build_parser() -> argparse.ArgumentParser:
    from rlfoundry.system_info import version

    parser = argparse.ArgumentParser(
        prog="rlfoundry", description="Post-train language models with DPO and GRPO.",
        epilog="`rlfoundry COMMAND --help` describes a command. Start with `rlfoundry quickstart`.")
    parser.add_argument("--version", action="version", version=f"rlfoundry {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    p = sub.add_parser("train", help="train from a YAML config (default: DPO demo on builtin:tiny)",
                       description="Train from a YAML config with optional key.path=value overrides.",
                       epilog="Every config key, its type, default and meaning: docs/configuration.md "
                       "(also printed by `python -m rlfoundry.config.reference`); "
                       "example configs: examples/configs/. Without a config file the built-in DPO "
                       "demo runs (and says so).")
    p.add_argument("config", nargs="?", default=None,
                   help="YAML config file (omit for the built-in DPO demo)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.learning_rate=1e-5")
    p.add_argument("--resume", metavar="auto|CHECKPOINT",
                   help="continue a run: 'auto' (newest intact checkpoint of output_dir) or a "
                   "checkpoint directory (same as training.resume=...)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete another run's checkpoints and final/ in output_dir and start over "
                   "(same as training.overwrite=true)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (same as training.num_threads=N; default: 1 on CPU, "
                   "torch's default on CUDA)")
    p.set_defaults(func=_train)
    p = sub.add_parser(
        "quickstart", help="the built-in demo: SFT -> GRPO and DPO on a tiny model, with plots and a report",
        description="SFT warm start and GRPO on a verifiable task, DPO on synthetic preferences, "
        "all on the built-in tiny model (no downloads, about a minute on 2 CPU cores); prints the "
        "before/after table and writes plots, report.md and summary.json to the output directory.")
    p.add_argument("--output-dir", default="runs/quickstart", help="where the runs, plots and report go")
    p.add_argument("--fast", action="store_true",
                   help="a few steps per stage: checks the pipeline in seconds (figures not meaningful)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch CPU threads (default 1: the tiny model gains nothing from more; "
                   "see training.num_threads)")
    p.add_argument("--task", choices=("default", "tools"), default="default",
                   help="tools: the tool-use demo instead (SFT -> multi-turn GRPO with a calculator, "
                   "against a no-tool policy; output in runs/tools unless --output-dir)")
    p.add_argument("overrides", nargs="*",
                   help="config overrides for every stage (training.seed=1) or one (grpo.training.max_steps=80)")
    p.set_defaults(func=_quickstart)
    p = sub.add_parser(
        "reward-model-demo", help="train a reward model on preferences, then GRPO with it as the only reward",
        description="Three runs on the built-in tiny model (docs/reward_models.md): a Bradley-Terry "
        "reward model on builtin:sort_preferences, an SFT warm start on noisy sorting demos, and "
        "GRPO on sort prompts rewarded only by that model; prints held-out sortedness before/after.")
    p.add_argument("--output-dir", default="runs/reward_model_demo", help="where the three runs go")
    p.add_argument("--fast", action="store_true", help="a few steps per stage (figures not meaningful)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("overrides", nargs="*",
                   help="overrides for every stage (training.seed=1) or one (grpo.training.max_steps=40)")
    p.set_defaults(func=_reward_model_demo)
    p = sub.add_parser(
        "eval", help="accuracy / pass@k on prompts with a reward; preference accuracy on pairs",
        description="Evaluate a model (a local Hugging Face directory such as RUN/final, or builtin:tiny). "
        "--prompts: greedy accuracy (reward >= --threshold), mean reward and pass@k from "
        "--num-samples sampled completions; --pairs: share of pairs ranked chosen over rejected. "
        "Built-in sets (builtin:max, builtin:addition, builtin:sort_preferences, ...) use their "
        "held-out split, the one training evaluates on.")
    p.add_argument("model", help="model directory (e.g. runs/quickstart/grpo/final) or builtin:tiny")
    p.add_argument("--prompts", help="prompt rows (.jsonl/.json/.parquet/.csv or builtin:NAME)")
    p.add_argument("--reward", nargs="+", default=[],
                   help="reward functions by name or module:function (default for built-in sets: theirs)")
    p.add_argument("--threshold", type=float, default=1.0, help="a completion is correct when its reward >= this")
    p.add_argument("--k", type=_int_list, default=[1, 4], help="pass@k values, comma-separated (default 1,4)")
    p.add_argument("--num-samples", type=int, default=8,
                   help="sampled completions per prompt for pass@k (0: greedy accuracy only)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for pass@k")
    p.add_argument("--max-new-tokens", type=int, default=64, help="completion length limit")
    p.add_argument("--pairs", help="preference rows (prompt/chosen/rejected) or builtin:sort_preferences")
    p.add_argument("--reference", help="reference model for DPO's implicit reward (default: plain log-probs)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N rows only")
    p.add_argument("--show", type=int, default=3, help="sample generations to print")
    p.add_argument("--seed", type=int, default=0,
                   help="sampling seed, and the init seed of builtin: models (a run's training.seed "
                   "rebuilds its random-init reference, e.g. --reference builtin:tiny --seed 42)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: 1 on CPU, torch's default on CUDA)")
    p.add_argument("--plugins", nargs="*", default=[],
                   help="modules/files that register custom rewards or environments")
    p.add_argument("--environment", help="play each --prompts row as an episode with this "
                   "environment (registered name or module:Class); --reward is then optional")
    p.add_argument("--env-args", default="{}", help="the environment's arguments as JSON")
    p.add_argument("--max-turns", type=int, default=4, help="model turns per episode at most")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=_eval)
    p = sub.add_parser(
        "plot", help="PNG curves from metrics.jsonl; several runs overlaid",
        description="One PNG per metric family (loss, reward, kl, accuracy, length) or chosen key, "
        "every run drawn on the same axes (legend: the run directory's name).")
    p.add_argument("runs", nargs="+", help="run directories (each with a metrics.jsonl)")
    p.add_argument("--out", help="output directory (default: RUN/plots for one run; for several, "
                   "plots_A_vs_B in the working directory, named after the runs)")
    p.add_argument("--metrics", help="comma-separated families or keys, e.g. loss,eval/accuracy,grad_norm")
    p.set_defaults(func=_plot)
    p = sub.add_parser("list", help="list everything registered (algorithms, losses, advantages, "
                       "groupings, rewards, schedules, environments), built-in and from "
                       "plugins, and the built-in data sets and models")
    p.add_argument("kind", nargs="?", choices=["algorithms", "losses", "advantage", "grouping",
                                               "rewards", "schedules", "environments", "tools",
                                               "tool", "datasets", "models"],
                   help="only this kind")
    p.add_argument("--plugins", nargs="*", default=[], help="plugin modules/files to import first")
    p.set_defaults(func=_list)
    p = sub.add_parser("check-loss", help="run a loss on random and edge-case batches and report problems",
                       description="Checks: finite loss (random, equal log-probs, large magnitudes, "
                       "empty masks, batch of one), gradients reach the policy inputs, float64 "
                       "gradcheck, mean invariant to batch size, metric types. Exit 1 on failure.")
    p.add_argument("loss", help="module:Name, path/to/file.py:Name, or a registered loss name")
    p.add_argument("-o", "--option", action="append", default=[], help="loss option key=value (repeatable)")
    p.add_argument("--kind", default="auto", choices=["auto", "preference", "policy"],
                   help="inputs as the DPO trainer (preference) or GRPO trainer (policy) passes them")
    p.set_defaults(func=_check_loss)
    p = sub.add_parser("export", help="write a checkpoint as one Hugging Face model directory",
                       description="Merge LoRA adapters / gather FSDP2 shards of a checkpoint (or "
                       "of a run directory's newest checkpoint) into a plain HF directory.")
    p.add_argument("checkpoint", help="checkpoint directory or run output_dir")
    p.add_argument("out_dir", help="directory to write")
    p.set_defaults(func=_export)
    p = sub.add_parser(
        "rollout-server", help="serve GRPO rollouts from vLLM in its own process (rollout.mode: server)",
        description="Start vLLM's OpenAI-compatible server with the settings rollout.mode: server "
        "needs (token ids and log-probs out, weight reload and prefix-cache reset endpoints). "
        "Stops, with its engine processes, on Ctrl-C or SIGTERM. Needs the vllm extra.")
    p.add_argument("--model", required=True,
                   help="Hugging Face model directory with the policy's architecture and tokenizer "
                   "(or builtin:tiny); the trainer pushes its own weights before the first rollout")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="engine dtype (default: the checkpoint's)")
    p.add_argument("--max-model-len", type=int, default=None, help="longest prompt + completion")
    p.add_argument("--kv-cache-gib", type=int, default=None, help="CPU KV cache in GiB (default 1)")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER,
                   help="after --: more `vllm serve` options, e.g. -- --gpu-memory-utilization 0.8")
    p.set_defaults(func=_rollout_server)
    p = sub.add_parser("env", help="versions and hardware, for bug reports",
                       description="Print rlfoundry's version (and git commit), Python, torch, "
                       "transformers and other package versions, CPU, memory and GPUs.")
    p.set_defaults(func=_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    console_logging()
    parser = build_parser()
    if not argv:  # plain `rlfoundry`: what can I do?
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    from rlfoundry.training.run_record import set_command_line

    set_command_line(["rlfoundry", *argv])  # what run_info.json records
    if args.command == "train" and args.config and "=" in args.config and not Path(args.config).is_file():
        args.overrides.insert(0, args.config)  # `rlfoundry train key=value` with no file
        args.config = None
    try:
        return args.func(args)
    except RLFoundryError as e:
        print(f"rlfoundry: error: {error_text(e)}", file=sys.stderr)
        return 2
    except (SystemExit, GeneratorExit) as e:  # rlfoundry never exits from in here: user code did
        from rlfoundry.user_code import describe_exit, raise_site

        print(f"rlfoundry: error: user code {describe_exit(e)} at {raise_site(e)}; it must raise "
              f"an exception instead", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `rlfoundry list | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        set_command_line(None)


MAX_ERROR_CHARS = 4000


class _EscapingConsole(logging.StreamHandler):
    """Warnings of rlfoundry's loggers on the current ``sys.stderr``, control characters
    escaped (a warning may quote a reward's exception, i.e. text a completion chose)."""

    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.WARNING)

    @property
    def stream(self):  # the stderr of the moment (tests and tools swap it)
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def format(self, record: logging.LogRecord) -> str:
        from rlfoundry.safe_text import escape_control

        return escape_control(super().format(record))


def console_logging() -> None:
    """Show rlfoundry's warnings on stderr, escaped (once per process)."""
    package = logging.getLogger("rlfoundry")
    if not any(isinstance(h, _EscapingConsole) for h in package.handlers):
        package.addHandler(_EscapingConsole())


def error_text(error: BaseException) -> str:
    """An error message as printed: control characters escaped (it may quote a completion or
    a data row), and at most :data:`MAX_ERROR_CHARS` long."""
    from rlfoundry.safe_text import clip, escape_control

    return clip(escape_control(str(error)), MAX_ERROR_CHARS)


if __name__ == "__main__":
    sys.exit(main())
