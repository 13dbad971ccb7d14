"""Seed 000, "Integration with Training Pipeline" and "Start with Standard Implementations".

Custom trainers take ``model=``, ``tokenizer=``, ``config=`` (or positionally), a
``PreferenceDataset`` is built from ``chosen_data=``/``rejected_data=``, and ``train(dataset)``
runs both algorithms on it (GRPO samples from the pairs' prompts). The seed leaves the
configs, responses and rewards undefined; they are filled in here.
"""

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.algorithms.grpo import GRPOTrainer
from rlfoundry.data import PreferenceDataset
from rlfoundry.models import build_model, build_tokenizer


class CustomDPOTrainer(DPOTrainer):
    """DPO with the configured loss (see dpo_custom_trainer.py for a compute_loss override)."""


class CustomGRPOTrainer(GRPOTrainer):
    """GRPO with the configured grouping (see the grpo_* examples for form_groups overrides)."""


tokenizer = build_tokenizer()
model = build_model("tiny", tokenizer, seed=0)
common = {"logging": {"tensorboard": False, "progress_bar": False}}
dpo_config = {**common, "training": {"max_steps": 4, "batch_size": 4, "output_dir": "runs/seed_pipeline_dpo"}}
grpo_config = {**common, "algorithm": {"name": "grpo", "group_size": 4,
                                       "rewards": [{"name": "format", "args": {"pattern": r"^\d+$"}}],
                                       "sampling": {"max_new_tokens": 6}},
               "training": {"max_steps": 2, "batch_size": 2, "output_dir": "runs/seed_pipeline_grpo"}}

# Full texts; the shared beginning ("3+4=") is the implicit prompt.
chosen_responses = [f"{a}+{b}={a + b}" for a in range(4) for b in range(4)]
rejected_responses = [f"{a}+{b}={a + b + 1}" for a in range(4) for b in range(4)]

# Start with standard algorithms (the seed's best practice 1): positional arguments work too.
standard_dpo = DPOTrainer(model, tokenizer, dpo_config)
standard_grpo = GRPOTrainer(model, tokenizer, grpo_config)

# Initialize custom trainers
dpo_trainer = CustomDPOTrainer(
    model=model,
    tokenizer=tokenizer,
    config=dpo_config
)

grpo_trainer = CustomGRPOTrainer(
    model=model,
    tokenizer=tokenizer,
    config=grpo_config
)

# Load preference data
dataset = PreferenceDataset(
    chosen_data=chosen_responses,
    rejected_data=rejected_responses
)

if __name__ == "__main__":
    # Train with custom algorithms
    dpo_metrics = dpo_trainer.train(dataset)
    grpo_metrics = grpo_trainer.train(dataset)
    print(f"{len(dataset)} pairs; DPO loss {dpo_metrics['loss']:.4f}; "
          f"GRPO reward_mean {grpo_metrics['reward_mean']:.3f} over {grpo_trainer.step} steps")
