"""Seed 000, "Debugging Tips": debug_algorithm (the DPO branch; the GRPO branch is in
grpo_debug_algorithm.py). Called from compute_loss on the first micro-batch of each step with
the implicit rewards beta * (policy - reference).
"""

from rlfoundry.algorithms.dpo import DPOTrainer


class DebugDPOTrainer(DPOTrainer):
    def debug_algorithm(self, algorithm_type, **kwargs):
        """
        Debug algorithm-specific components
        """
        if algorithm_type == 'dpo':
            chosen_rewards = kwargs.get('chosen_rewards')
            rejected_rewards = kwargs.get('rejected_rewards')

            print(f"Chosen rewards range: {chosen_rewards.min():.3f} to {chosen_rewards.max():.3f}")
            print(f"Rejected rewards range: {rejected_rewards.min():.3f} to {rejected_rewards.max():.3f}")
            print(f"Reward gap: {(chosen_rewards - rejected_rewards).mean():.3f}")

    def compute_loss(self, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                     reference_rejected_logps, **extra):
        beta = self.loss_fn.beta
        self.debug_algorithm("dpo", chosen_rewards=beta * (policy_chosen_logps - reference_chosen_logps).detach(),
                             rejected_rewards=beta * (policy_rejected_logps - reference_rejected_logps).detach())
        return super().compute_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                    reference_rejected_logps, **extra)


if __name__ == "__main__":
    config = {"model": {"name_or_path": "builtin:tiny"},
              "data": {"train": "builtin:sort_preferences", "train_size": 32, "eval_size": 8},
              "training": {"max_steps": 2, "batch_size": 8, "learning_rate": 3e-3,
                           "output_dir": "runs/seed_debug_dpo"},
              "logging": {"tensorboard": False, "progress_bar": False}}
    DebugDPOTrainer(config=config).train()
