"""The ``rlfoundry`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlfoundry.errors import ConfigError, RLFoundryError

DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "dpo_tiny.yaml"


def _train(args) -> int:
    from rlfoundry.algorithms.trainer_registry import TRAINERS
    from rlfoundry.config import load_config

    cfg = load_config(args.config or DEFAULT_RECIPE, args.overrides)
    trainer = TRAINERS.get(cfg.algorithm.name)(config=cfg)
    metrics = trainer.train()
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


def registries() -> dict[str, dict[str, str]]:
    """Every extension point, name -> one-line doc, by kind (built-ins and plugins)."""
    from rlfoundry.algorithms.advantages import ADVANTAGE_ESTIMATORS
    from rlfoundry.algorithms.grouping import GROUPINGS
    from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
    from rlfoundry.algorithms.trainer_registry import TRAINERS, load_builtin_trainers
    from rlfoundry.rewards import REWARDS
    from rlfoundry.training.schedules import SCHEDULES

    load_builtin_trainers()
    return {"algorithms": TRAINERS.describe(), "losses": LossFunctionRegistry.describe(),
            "advantage estimators": ADVANTAGE_ESTIMATORS.describe(),
            "grouping strategies": GROUPINGS.describe(), "rewards": REWARDS.describe(),
            "schedules": SCHEDULES.describe()}


def _list(args) -> int:
    from rlfoundry.plugins import import_plugins

    import_plugins(args.plugins)
    for kind, described in registries().items():
        if args.kind and kind.split()[0] != args.kind:
            continue
        print(f"{kind}:")
        for name, doc in described.items():
            print(f"  {name:<24} {doc}")
    return 0


def _check_loss(args) -> int:
    import yaml

    from rlfoundry.loss_check import check_loss, loss_factory

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--option expects key=value, got '{item}'")
        options[key] = yaml.safe_load(value)
    report = check_loss(loss_factory(args.loss, options), args.kind)
    print(report.format())
    return 0 if report.passed else 1


def _export(args) -> int:
    from rlfoundry.export import export

    used = export(args.checkpoint, args.out_dir)
    print(f"exported {used} to {args.out_dir} (loadable with AutoModelForCausalLM.from_pretrained)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlfoundry", description="Post-train language models with DPO and GRPO.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("train", help="train from a YAML config (default: DPO demo on builtin:tiny)",
                       description="Train from a YAML config with optional key.path=value overrides.")
    p.add_argument("config", nargs="?", default=None,
                   help="YAML config file (omit for the built-in DPO demo)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.learning_rate=1e-5")
    p.set_defaults(func=_train)
    p = sub.add_parser("list", help="list everything registered (algorithms, losses, advantages, "
                       "groupings, rewards, schedules), built-in and from plugins")
    p.add_argument("kind", nargs="?", choices=["algorithms", "losses", "advantage", "grouping",
                                               "rewards", "schedules"], help="only this kind")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.config and "=" in args.config:
        args.overrides.insert(0, args.config)  # `rlfoundry train key=value` with no file
        args.config = None
    try:
        return args.func(args)
    except RLFoundryError as e:
        print(f"rlfoundry: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
