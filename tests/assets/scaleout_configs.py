"""Run configs shared by tests/test_scaleout2.py and its torchrun worker: tiny float64 runs whose
global batch splits evenly over 1, 2 and 3 processes."""

from pathlib import Path

DPO = {
    "model": {"name_or_path": "builtin:tiny", "dtype": "float64"},
    "data": {"train": "builtin:sort_preferences", "train_size": 24, "eval_size": 6,
             "max_length": 40},
    "reference": {"precompute": True},
    "training": {"batch_size": 6, "micro_batch_size": 1, "max_steps": 4, "learning_rate": 1e-3,
                 "seed": 0, "save_every": 2, "keep_last": 2},
    "logging": {"tensorboard": False, "progress_bar": False},
}

GRPO = {
    "algorithm": {"name": "grpo", "group_size": 2, "num_iterations": 1,
                  "sampling": {"max_new_tokens": 4, "seed_per_prompt": True},
                  "rewards": [{"name": "format", "args": {"pattern": "\\d", "mode": "search"}},
                              {"name": "length_penalty", "args": {"target_length": 2}}],
                  "loss": {"reference_policy_kl_penalty": 0.05}},
    "model": {"name_or_path": "builtin:tiny", "dtype": "float64"},
    "data": {"train": "builtin:addition", "train_size": 12, "eval_size": 4},
    "training": {"batch_size": 6, "micro_batch_size": 2, "max_steps": 2, "learning_rate": 1e-3,
                 "seed": 0, "lr_scheduler": "constant"},
    "logging": {"tensorboard": False, "progress_bar": False},
}

BASE = {"dpo": DPO, "grpo": GRPO}


def config(algo: str, out: Path, strategy: str = "ddp", resume: str | None = None, *,
           reference_precompute: bool = True, max_steps: int | None = None) -> dict:
    base = BASE[algo]
    training = {**base["training"], "output_dir": str(out), "distributed": {"strategy": strategy}}
    if resume is not None:
        training["resume"] = resume
    if max_steps is not None:
        training["max_steps"] = max_steps
    cfg = {**base, "training": training}
    if algo == "dpo":
        cfg["reference"] = {"precompute": reference_precompute}
    return cfg
