"""Seed 000, "Custom Loss Functions" (GRPO): custom_grpo_loss with a value loss and a
group-aware regulariser.

Minimal fixes, marked below: the seed multiplies per-token ratios ``[N, T]`` by per-sequence
advantages ``[N]`` and averages over padding, so advantages are broadcast over tokens and the
means are taken over response tokens only; ``compute_group_loss`` (undefined in the seed) is
the variance of length-normalised log-probs within each group (groups from the trainer's
``group_id``); ``self.clip_ratio`` comes from the config.

A value loss is not part of GRPO (its baseline is the group mean, not a critic), so the
built-in GRPO loss has ``value_loss_coef: 0`` by default; this example turns the optional
value head on (``value_loss_coef: 0.5``) because the seed's loss uses ``value_preds``.
"""

import torch
import torch.nn.functional as F
from _grpo_shared import alnum_share, tiny_grpo_config

from rlfoundry.algorithms.grpo import GRPOTrainer


class CustomLossGRPOTrainer(GRPOTrainer):
    @property
    def clip_ratio(self):
        return self.loss_fn.cfg["clip_ratio"]

    def custom_grpo_loss(self, policy_logps, value_preds, advantages,
                         old_policy_logps, returns, groups):
        """
        Custom GRPO loss with group-aware components
        """
        mask = self._mask.to(policy_logps.dtype)
        advantages = advantages.unsqueeze(-1)  # fix: one advantage per sequence, over its tokens

        # Standard PPO loss
        ratio = torch.exp(policy_logps - old_policy_logps)
        surr1 = ratio * advantages
        surr2 = torch.clamp(ratio, 1 - self.clip_ratio, 1 + self.clip_ratio) * advantages
        policy_loss = -(torch.min(surr1, surr2) * mask).sum() / mask.sum()  # fix: response tokens only

        # Value loss
        value_loss = F.mse_loss(value_preds, returns)

        # Group-aware regularization
        group_loss = self.compute_group_loss(groups, policy_logps)

        # Combine losses
        total_loss = policy_loss + 0.5 * value_loss + 0.1 * group_loss
        return total_loss

    def compute_group_loss(self, groups, policy_logps):
        """Mean within-group variance of the per-token log-prob of each response."""
        mask = self._mask.to(policy_logps.dtype)
        per_seq = (policy_logps * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        losses = [per_seq[groups == g].var() for g in groups.unique() if (groups == g).sum() > 1]
        return torch.stack(losses).mean() if losses else per_seq.sum() * 0

    def train_step(self, batch):
        self._mask = batch["response_mask"]
        old = batch["old_policy_logps"]
        old = batch["policy_logps"].detach() if old is None else old  # mu = 1: ratio 1
        loss = self.custom_grpo_loss(batch["policy_logps"], batch["value_preds"], batch["advantages"],
                                     old, batch["returns"], batch["group_id"])
        return loss, {"value_mse": F.mse_loss(batch["value_preds"], batch["returns"]).detach()}


if __name__ == "__main__":
    cfg = tiny_grpo_config("runs/seed_custom_grpo_loss", max_steps=3, value_loss_coef=0.5)
    trainer = CustomLossGRPOTrainer(config=cfg, reward_fns=[alnum_share])
    metrics = trainer.train()
    print(f"custom_grpo_loss: loss {metrics['loss']:.4f}, value_mse {metrics['value_mse']:.4f}, "
          f"value head trained: {trainer.value_head is not None}")
