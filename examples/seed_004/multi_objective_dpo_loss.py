"""Seed 004, step 2: MultiObjectiveDPOLossFn.

The seed's class with minimal fixes (marked): the parent gets the config without the
auxiliary keys; ``total_loss += ...`` aliased ``main_loss`` (so main_dpo_loss reported the
total) and is now ``total_loss = total_loss + ...``; the perplexity term shifts logits and labels (position t predicts token t+1)
and reads the chosen logits, which is what it has; and the consistency and safety terms,
zeros in the seed, call the built-in ``consistency`` and ``safety`` objectives, which compute
something. In configs prefer the built-in ``multi_objective_dpo``, which needs no logits
([B, T, V] logits are never materialised by the trainers):

    loss: {type: multi_objective_dpo, auxiliary_losses: [perplexity, consistency, safety],
           auxiliary_options: {safety: {banned_phrases: ["..."]}}}
"""

from typing import Any

import torch
import torch.nn.functional as F

from rlfoundry.algorithms.loss_functions import DPOLossConfig, DPOLossFn, LossFunctionRegistry
from rlfoundry.models import build_tokenizer


@LossFunctionRegistry.register("seed_multi_objective_dpo")
class MultiObjectiveDPOLossFn(DPOLossFn):
    """DPO loss with multiple auxiliary objectives."""

    def __init__(self, cfg: DPOLossConfig):
        aux_keys = ("auxiliary_losses", "auxiliary_weights", "banned_phrases")  # fix: own keys
        super().__init__({k: v for k, v in cfg.items() if k not in aux_keys})
        self.auxiliary_losses = cfg.get("auxiliary_losses", {})
        self.auxiliary_weights = cfg.get("auxiliary_weights", {})
        self.consistency = LossFunctionRegistry.build({"type": "consistency"})
        self.safety = LossFunctionRegistry.build({"type": "safety",
                                                  "banned_phrases": cfg.get("banned_phrases", ["!!"])})

    def bind_tokenizer(self, tokenizer) -> None:
        self.safety.bind_tokenizer(tokenizer)

    def _compute_auxiliary_losses(self, batch: dict[str, torch.Tensor],
                                  model_outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute auxiliary loss components."""
        auxiliary_losses = {}

        # Perplexity loss
        if "perplexity" in self.auxiliary_losses:
            logits = model_outputs["chosen_logits"][:, :-1]  # fix: shifted chosen logits
            targets = batch["chosen_input_ids"][:, 1:]
            perplexity_loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
            auxiliary_losses["perplexity"] = perplexity_loss

        # Consistency loss
        if "consistency" in self.auxiliary_losses:
            consistency_loss = self._compute_consistency_loss(batch, model_outputs)
            auxiliary_losses["consistency"] = consistency_loss

        # Safety loss
        if "safety" in self.auxiliary_losses:
            safety_loss = self._compute_safety_loss(batch, model_outputs)
            auxiliary_losses["safety"] = safety_loss

        return auxiliary_losses

    def _token_view(self, batch, model_outputs):
        ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
        logits = torch.cat([model_outputs["chosen_logits"], model_outputs["rejected_logits"]])
        logprobs = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        b = batch["chosen_input_ids"].shape[0]
        view = {"input_ids": ids, "response_mask": torch.ones_like(logprobs, dtype=torch.bool),
                "is_chosen": torch.arange(2 * b) < b}
        sums = logprobs.sum(-1)
        outputs = {"logprobs": logprobs, "policy_chosen_logps": sums[:b]}
        view["reference_chosen_logps"] = batch.get("reference_chosen_logps", sums[:b].detach())
        view["chosen_token_counts"] = torch.full((b,), float(logprobs.shape[1]))
        return view, outputs

    def _compute_consistency_loss(self, batch: dict[str, torch.Tensor],
                                  model_outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Compute consistency loss between similar examples."""
        return self.consistency(*self._token_view(batch, model_outputs))[0]  # fix: real objective

    def _compute_safety_loss(self, batch: dict[str, torch.Tensor],
                             model_outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Compute safety loss to prevent harmful outputs."""
        return self.safety(*self._token_view(batch, model_outputs))[0]  # fix: real objective

    def __call__(self, batch: dict[str, torch.Tensor],
                 model_outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        # Compute main DPO loss
        main_loss, metrics = super().__call__(batch, model_outputs)

        # Compute auxiliary losses
        auxiliary_losses = self._compute_auxiliary_losses(batch, model_outputs)

        # Combine losses
        total_loss = main_loss
        for loss_name, loss_value in auxiliary_losses.items():
            weight = self.auxiliary_weights.get(loss_name, 1.0)
            total_loss = total_loss + weight * loss_value  # fix: `+=` also changed main_loss
            metrics[f"auxiliary_{loss_name}_loss"] = loss_value.item()

        metrics["total_loss"] = total_loss.item()
        metrics["main_dpo_loss"] = main_loss.item()

        return total_loss, metrics


if __name__ == "__main__":
    tok = build_tokenizer()
    g = torch.Generator().manual_seed(0)
    chosen = torch.tensor([tok("ok!! fine")["input_ids"], tok("sure fine")["input_ids"]])
    rejected = torch.randint(3, 200, chosen.shape, generator=g)
    batch = {"chosen_input_ids": chosen, "rejected_input_ids": rejected,
             "reference_chosen_logps": torch.tensor([-60.0, -61.0]),
             "reference_rejected_logps": torch.tensor([-62.0, -58.0])}
    logits = {"chosen_logits": torch.randn(*chosen.shape, len(tok), generator=g, requires_grad=True),
              "rejected_logits": torch.randn(*rejected.shape, len(tok), generator=g, requires_grad=True)}
    loss_fn = LossFunctionRegistry.get("seed_multi_objective_dpo")(
        {"reference_policy_kl_penalty": 0.1, "auxiliary_losses": ["perplexity", "consistency", "safety"],
         "auxiliary_weights": {"perplexity": 0.1}, "banned_phrases": ["!!"]})
    loss_fn.bind_tokenizer(tok)
    loss, metrics = loss_fn(batch, logits)
    loss.backward()
    print({k: round(float(v), 4) for k, v in metrics.items() if k.startswith(("aux", "total", "main"))})
