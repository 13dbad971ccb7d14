"""Seed 004, step 5: ComposableLossFunction and ComposedDPOGRPOLossFn.

``ComposableLossFunction`` is in the library (``rlfoundry.algorithms.loss_functions``) with
the seed's constructor ``(components, weights)``. One deliberate change from the seed's
version: metrics are not added together across components (two components' ``accuracy``
summed is meaningless); each component's metrics keep their own prefix (``dpo/accuracy``,
``dynamic_grpo/policy_loss``), and the weighted total stays exact under gradient accumulation.

In a DPO run the GRPO component sees each preference pair as a group of two with advantages
+1 (chosen) and -1 (rejected): a clipped policy-gradient term next to the DPO term. The
same composition from YAML, with no Python:

    loss: {type: composite, components: [{type: dpo, weight: 0.7}, {type: dynamic_grpo, weight: 0.3}]}
"""

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))  # the seed's AdaptiveDPOLossFn lives next door

from adaptive_dpo_loss import AdaptiveDPOLossFn  # noqa: E402

from rlfoundry.algorithms.dpo import DPOTrainer  # noqa: E402
from rlfoundry.algorithms.loss_functions import (  # noqa: E402
    ComposableLossFunction,
    DynamicGRPOLossFn,
    LossFunctionRegistry,
)


# Example usage
@LossFunctionRegistry.register("composed_dpo_grpo")
class ComposedDPOGRPOLossFn(ComposableLossFunction):
    """Composed loss combining DPO and GRPO components."""

    def __init__(self, cfg: dict[str, Any]):
        dpo_loss = AdaptiveDPOLossFn(cfg["dpo"])
        grpo_loss = DynamicGRPOLossFn(cfg["grpo"])

        components = [dpo_loss, grpo_loss]
        weights = [cfg.get("dpo_weight", 0.7), cfg.get("grpo_weight", 0.3)]

        super().__init__(components, weights)


if __name__ == "__main__":
    config = {"model": {"name_or_path": "builtin:tiny"},
              "algorithm": {"loss": {"type": "composed_dpo_grpo",
                                     "dpo": {"reference_policy_kl_penalty": 0.1, "final_beta": 0.05,
                                             "warmup_steps": 10},
                                     "grpo": {}, "dpo_weight": 0.7, "grpo_weight": 0.3}},
              "data": {"train": "builtin:sort_preferences", "train_size": 64, "eval_size": 32},
              "training": {"max_steps": 12, "batch_size": 8, "micro_batch_size": 4, "learning_rate": 2e-3,
                           "eval_every": 12, "output_dir": "runs/seed_composed_dpo_grpo"},
              "logging": {"tensorboard": False, "progress_bar": False}}
    trainer = DPOTrainer(config=config)
    metrics = trainer.train()
    print({k: round(v, 4) for k, v in metrics.items()
           if k.startswith(("adaptive_dpo/", "dynamic_grpo/")) and "frac" not in k})
    print(f"held-out accuracy {trainer.initial_eval['accuracy']:.3f} -> {trainer.last_eval['accuracy']:.3f}")
