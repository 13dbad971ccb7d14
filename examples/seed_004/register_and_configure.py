"""Seed 004, "Configuration and Usage": register a custom loss and use it from a config.

``LossFunctionRegistry.register(name)(cls)`` registers without the decorator syntax; the
config's ``loss_function:`` key (the seed's spelling of ``algorithm.loss``) picks it by name,
and its other keys reach the class as its config.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the seed's AdaptiveDPOLossFn lives next door

from adaptive_dpo_loss import AdaptiveDPOLossFn  # noqa: E402

from rlfoundry.algorithms.dpo import DPOTrainer  # noqa: E402
from rlfoundry.algorithms.loss_functions import LossFunctionRegistry  # noqa: E402


class MyCustomDPOLossFn(AdaptiveDPOLossFn):
    """The adaptive DPO loss under a user's own name."""


# Register custom loss functions
LossFunctionRegistry.register("my_custom_dpo")(MyCustomDPOLossFn)

# Use in configuration
config = {
    "loss_function": {
        "type": "my_custom_dpo",
        "reference_policy_kl_penalty": 0.1,
        "final_beta": 0.01,
        "warmup_steps": 1000
    }
}

if __name__ == "__main__":
    run = {**config, "model": {"name_or_path": "builtin:tiny"},
           "data": {"train": "builtin:sort_preferences", "train_size": 32, "eval_size": 8},
           "training": {"max_steps": 3, "batch_size": 8, "output_dir": "runs/seed_register"},
           "logging": {"tensorboard": False, "progress_bar": False}}
    trainer = DPOTrainer(config=run)
    metrics = trainer.train()
    print(f"loss class {type(trainer.loss_fn).__name__}; adaptive_beta {metrics['adaptive_beta']:.5f}; "
          f"loss {metrics['loss']:.4f}")
