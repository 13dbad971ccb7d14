"""Seed 004, "Testing Custom Loss Functions": test_custom_loss_function.

Runs the seed's test as written but for one fix: the seed's batch has no reference log-probs,
which a reference-based DPO loss needs, so the config sets ``reference_free: True`` (the loss
then compares the policy's chosen and rejected log-probs directly). The logits-form inputs
(``chosen_logits`` + ``chosen_input_ids``) are scored by the loss itself. For a thorough check
of a loss, run ``rlfoundry check-loss examples/seed_004/adaptive_dpo_loss.py:AdaptiveDPOLossFn
-o reference_policy_kl_penalty=0.1``.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from adaptive_dpo_loss import AdaptiveDPOLossFn  # noqa: E402


def test_custom_loss_function():
    """Test custom loss function implementation."""

    # Create test data
    batch = {
        "input_ids": torch.randint(0, 1000, (4, 128)),
        "attention_mask": torch.ones(4, 128),
        "chosen_input_ids": torch.randint(0, 1000, (4, 128)),
        "rejected_input_ids": torch.randint(0, 1000, (4, 128))
    }

    model_outputs = {
        "logits": torch.randn(4, 128, 1000),
        "chosen_logits": torch.randn(4, 128, 1000),
        "rejected_logits": torch.randn(4, 128, 1000)
    }

    # Test custom loss function
    loss_fn = AdaptiveDPOLossFn({
        "reference_policy_kl_penalty": 0.1,
        "final_beta": 0.01,
        "warmup_steps": 1000,
        "reference_free": True,  # fix: the batch above has no reference log-probs
    })

    loss, metrics = loss_fn(batch, model_outputs)

    print(f"Loss: {loss.item()}")
    print(f"Metrics: {metrics}")
    assert torch.isfinite(loss)


if __name__ == "__main__":
    torch.manual_seed(0)
    test_custom_loss_function()
