"""Seed 000, "Multi-Objective DPO": multi_objective_dpo_loss with fluency and coherence terms.

The seed's function is kept; the helpers it calls are real: ``standard_dpo_loss`` is the
configured DPO loss, ``compute_fluency_loss`` the mean per-token NLL of the chosen responses
and ``compute_coherence_loss`` the built-in ``coherence`` objective (std of token surprisal
within each response). ``additional_metrics`` is the token-level view of the batch the
trainer provides. For configs, the built-in ``multi_objective_dpo`` loss does the same:
``loss: {type: multi_objective_dpo, auxiliary_losses: {fluency: 0.1, coherence: 0.2}}``.
"""

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.algorithms.loss_functions import LossFunctionRegistry


class MultiObjectiveDPOTrainer(DPOTrainer):
    def multi_objective_dpo_loss(self, chosen_logps, rejected_logps,
                                 reference_chosen_logps, reference_rejected_logps,
                                 additional_metrics):
        """
        DPO loss with multiple objectives
        """
        # Standard DPO loss
        dpo_loss = self.standard_dpo_loss(chosen_logps, rejected_logps,
                                          reference_chosen_logps, reference_rejected_logps)

        # Additional objectives
        fluency_loss = self.compute_fluency_loss(chosen_logps)
        coherence_loss = self.compute_coherence_loss(additional_metrics)

        # Combine losses
        total_loss = dpo_loss + 0.1 * fluency_loss + 0.2 * coherence_loss
        return total_loss

    def standard_dpo_loss(self, pc, pr, rc, rr):
        loss, _ = self.loss_fn({"reference_chosen_logps": rc, "reference_rejected_logps": rr},
                               {"policy_chosen_logps": pc, "policy_rejected_logps": pr})
        return loss

    def compute_fluency_loss(self, chosen_logps):
        return (-chosen_logps / self._chosen_counts.clamp(min=1)).mean()

    def compute_coherence_loss(self, additional_metrics):
        coherence = LossFunctionRegistry.build({"type": "coherence"})
        return coherence(additional_metrics, {"logprobs": additional_metrics["logprobs"]})[0]

    def train_step(self, batch):
        self._chosen_counts = batch["chosen_token_counts"]
        additional_metrics = {k: batch[k] for k in ("logprobs", "response_mask", "is_chosen")}
        return self.multi_objective_dpo_loss(
            batch["policy_chosen_logps"], batch["policy_rejected_logps"],
            batch["reference_chosen_logps"], batch["reference_rejected_logps"], additional_metrics)


if __name__ == "__main__":
    config = {"model": {"name_or_path": "builtin:tiny"},
              "data": {"train": "builtin:sort_preferences", "train_size": 64, "eval_size": 32},
              "training": {"max_steps": 10, "batch_size": 8, "learning_rate": 2e-3, "eval_every": 10,
                           "output_dir": "runs/seed_multi_objective_dpo"},
              "logging": {"tensorboard": False, "progress_bar": False}}
    trainer = MultiObjectiveDPOTrainer(config=config)
    metrics = trainer.train()
    print(f"total loss {metrics['loss']:.4f}; held-out accuracy "
          f"{trainer.initial_eval['accuracy']:.3f} -> {trainer.last_eval['accuracy']:.3f}")
