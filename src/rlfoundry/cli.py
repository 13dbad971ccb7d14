"""The ``rlfoundry`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlfoundry.errors import RLFoundryError

DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "dpo_tiny.yaml"


def _train(args) -> int:
    from rlfoundry.algorithms.trainer_registry import TRAINERS
    from rlfoundry.config import load_config

    cfg = load_config(args.config or DEFAULT_RECIPE, args.overrides)
    trainer = TRAINERS.get(cfg.algorithm.name)(config=cfg)
    metrics = trainer.train()
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


def _list(args) -> int:
    from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
    from rlfoundry.algorithms.trainer_registry import TRAINERS, load_builtin_trainers
    from rlfoundry.plugins import import_plugins

    load_builtin_trainers()
    import_plugins(args.plugins)
    for kind, described in (("algorithms", TRAINERS.describe()),
                            ("losses", LossFunctionRegistry.describe())):
        print(f"{kind}:")
        for name, doc in described.items():
            print(f"  {name:<24} {doc}")
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
    p = sub.add_parser("list", help="list registered algorithms and losses")
    p.add_argument("--plugins", nargs="*", default=[], help="plugin modules/files to import first")
    p.set_defaults(func=_list)
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
