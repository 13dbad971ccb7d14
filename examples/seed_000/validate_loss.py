"""Seed 000, best practice 2 "Validate Custom Losses": validate_loss.

The seed's check as written, called on a few values; then what rlfoundry does for you: the
training loop checks every step's loss and gradient and (``training.on_nonfinite: raise``)
stops with an error naming the step and the non-finite component before any update or
checkpoint; ``rlfoundry check-loss module:Name`` checks a loss before training.
"""

import torch

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.errors import NonFiniteError
from rlfoundry.loss_check import check_loss, loss_factory


def validate_loss(self, loss_value):
    """
    Validate loss values for numerical stability
    """
    if torch.isnan(loss_value) or torch.isinf(loss_value):
        raise ValueError("Loss is NaN or infinite")

    if loss_value < 0:
        print("Warning: Negative loss value detected")


class NaNAfterFirstStep:
    """A loss that goes NaN on its third call, to show the trainer's own check."""

    def __init__(self, cfg=None):
        self.calls = 0

    def __call__(self, batch, model_outputs):
        self.calls += 1
        loss = -(model_outputs["policy_chosen_logps"] - model_outputs["policy_rejected_logps"]).mean() * 1e-3
        return (loss * float("nan") if self.calls >= 3 else loss), {}


if __name__ == "__main__":
    for value in (0.7, -0.1, float("nan")):
        try:
            validate_loss(None, torch.tensor(value))
            print(f"validate_loss({value}): ok")
        except ValueError as e:
            print(f"validate_loss({value}): ValueError: {e}")
    config = {"model": {"name_or_path": "builtin:tiny"}, "algorithm": {"loss": {"type": "simpo"}},
              "data": {"train": "builtin:sort_preferences", "train_size": 32, "eval_size": 8},
              "training": {"max_steps": 4, "batch_size": 8, "output_dir": "runs/seed_validate_loss"},
              "logging": {"tensorboard": False, "progress_bar": False}}
    try:
        DPOTrainer(config=config, loss_fn=NaNAfterFirstStep()).train()
    except NonFiniteError as e:
        print(f"trainer: NonFiniteError: {str(e).splitlines()[0][:90]}...")
    print("check-loss on the built-in dpo loss:", "passed" if check_loss(loss_factory("dpo", {})).passed else "failed")
