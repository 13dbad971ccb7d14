"""Seed 004, "Advanced GRPO with Dynamic Grouping": ``DynamicGRPOLossFn`` (``dynamic_grpo``).

As written, the seed's class formed its groups inside the loss, from
``model_outputs["responses"]``, after the advantages had been computed from other groups,
and then called plain GRPO, so the groups changed nothing but two metrics. The minimal fix
moves group formation to where it can matter: the class is in the library
(``rlfoundry.algorithms.loss_functions.dynamic_grpo``) with the seed's name, registration,
config keys, helpers (``_compute_response_similarity``, ``_form_dynamic_groups``) and
metrics (``num_dynamic_groups``, ``avg_group_size``), and it declares
``grouping = "dynamic"``: the GRPO trainer then groups the responses by embedding
similarity (threshold, ``max_group_size``) *before* computing the advantages. Pick it from
YAML with the seed's keys::

    algorithm:
      name: grpo
      loss: {type: dynamic_grpo, similarity_threshold: 0.8, max_group_size: 10}

The script shows the groups the loss's helper forms on toy response embeddings, then trains
a few steps with the loss picked by name and prints its group metrics.

    python examples/seed_004/dynamic_grpo_loss.py
"""

import tempfile

import torch

from rlfoundry.algorithms.grpo import GRPOTrainer
from rlfoundry.algorithms.loss_functions import DynamicGRPOLossFn, LossFunctionRegistry


def toy_responses() -> torch.Tensor:
    """Embeddings of 7 responses: 3 about one thing, 2 about another, 2 unrelated."""
    g = torch.Generator().manual_seed(0)
    topics = torch.eye(8)
    rows = [topics[0]] * 3 + [topics[1]] * 2 + [topics[2], topics[3]]
    return torch.stack(rows) + 0.05 * torch.randn(7, 8, generator=g)


def main() -> None:
    loss_fn = LossFunctionRegistry.build({"type": "dynamic_grpo", "similarity_threshold": 0.8,
                                          "max_group_size": 10})
    assert isinstance(loss_fn, DynamicGRPOLossFn)
    groups = loss_fn._form_dynamic_groups(toy_responses())
    print(f"dynamic groups of 7 toy responses (threshold 0.8): {groups}")

    config = {
        "algorithm": {"name": "grpo", "group_size": 4, "sampling": {"max_new_tokens": 5},
                      "rewards": [{"name": "format", "args": {"pattern": "[a-z]", "mode": "search"}}],
                      "loss": {"type": "dynamic_grpo", "similarity_threshold": 0.7,
                               "max_group_size": 6}},
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"train": "builtin:addition", "train_size": 64},
        "training": {"batch_size": 4, "max_steps": 2, "learning_rate": 1e-3, "seed": 0},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    with tempfile.TemporaryDirectory() as out:
        config["training"]["output_dir"] = out
        trainer = GRPOTrainer(config=config)
        metrics = trainer.train()
    print(f"trainer grouping: {trainer.grouping_name} (threshold "
          f"{trainer.grouping_options['similarity_threshold']}, max size "
          f"{trainer.grouping_options['max_group_size']})")
    print(f"num_dynamic_groups={metrics['num_dynamic_groups']:.0f}, "
          f"avg_group_size={metrics['avg_group_size']:.2f}, loss={metrics['loss']:.4g}, "
          f"grad_norm={metrics['grad_norm']:.3g}")


if __name__ == "__main__":
    main()
