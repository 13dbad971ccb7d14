"""Seed 004, step 5: ClippedLossFunction ("loss function with gradient clipping").

The seed clips gradients inside the loss call. At that moment backward has not run, so the
parameters hold no gradients for this batch (``p.grad`` is None on the first step, or the
previous step's stale gradient later): the clip does nothing useful and the grad_norm metric
crashes or reports the wrong step. What a user wants is "clip gradients when training with
this loss": the wrapper below carries ``max_grad_norm`` and the trainer clips with it after
every micro-batch's backward, logging the true ``grad_norm`` (the same as
``training.max_grad_norm`` in a config).
"""

from typing import Any

import torch

from rlfoundry.algorithms.loss_functions import LossFunctionRegistry


@LossFunctionRegistry.register("clipped_loss")
class ClippedLossFunction:
    """A base loss plus a gradient-clipping threshold applied by the trainer after backward."""

    def __init__(self, base_loss, max_grad_norm: float = 1.0):
        if isinstance(base_loss, dict):  # from YAML: {type: clipped_loss, base: {...}, max_grad_norm}
            cfg = base_loss
            base_loss, max_grad_norm = LossFunctionRegistry.build(cfg["base"]), cfg.get("max_grad_norm", 1.0)
        self.base_loss = base_loss
        self.max_grad_norm = max_grad_norm
        self.reduction = getattr(base_loss, "reduction", "sequence")
        self.requires_reference = getattr(base_loss, "requires_reference", True)

    def __call__(self, batch: dict[str, torch.Tensor],
                 model_outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.base_loss(batch, model_outputs)


if __name__ == "__main__":
    from rlfoundry.algorithms.dpo import DPOTrainer

    config = {"model": {"name_or_path": "builtin:tiny"},
              "algorithm": {"loss": {"type": "clipped_loss", "base": {"type": "dpo"}, "max_grad_norm": 0.05}},
              "data": {"train": "builtin:sort_preferences", "train_size": 32, "eval_size": 8},
              "training": {"max_steps": 2, "batch_size": 8, "max_grad_norm": None, "learning_rate": 1e-3,
                           "output_dir": "runs/seed_clipped_loss"},
              "logging": {"tensorboard": False, "progress_bar": False}}
    trainer = DPOTrainer(config=config)
    seen = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        seen.append(max_norm)
        return clip(params, max_norm, *args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = spy
    try:
        metrics = trainer.train()
    finally:
        torch.nn.utils.clip_grad_norm_ = clip
    print(f"trainer clipped at {seen[0]} after backward; pre-clip grad_norm {metrics['grad_norm']:.3f}")
