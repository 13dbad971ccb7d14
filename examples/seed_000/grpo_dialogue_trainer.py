"""Seed 000, "Example: Custom GRPO for Dialogue Systems": ``DialogueGRPOTrainer``.

The seed's class, import changed, trained on the synthetic conversations of
examples/dialogue_grpo.py (several follow-up questions per conversation; reward: repeat the
user's name). The seed leaves its helpers undefined and calls ``form_dialogue_groups`` in
``train_step``; minimal fixes, each marked ``# fix`` below:

- groups must exist before the advantages are computed, so the trainer's ``form_groups``
  hook calls ``form_dialogue_groups``; ``train_step`` (which the seed called with a missing
  ``batch_size``, after the advantages were fixed) takes those groups from the batch's
  ``group_id`` instead of forming new ones;
- ``extract_contexts``: each response's conversation context, the chat before its last user
  turn (``rlfoundry.algorithms.grouping.conversation_context``); ``encode_contexts``: the
  trainer's text embeddings (``algorithm.grouping.embedding``: the policy's mean-pooled
  hidden states by default, or a sentence encoder);
- ``form_dialogue_groups`` ranks only unused samples (the seed's version could leave a
  sample out for good, see grpo_semantic_grouping.py);
- ``compute_grpo_loss`` is the configured GRPO loss; ``extract_dialogue_metrics`` scores
  coherence (the reply repeats words of the conversation) and engagement (the reply ends in
  "!" or "?"); since a score alone has no gradient, the coherence and engagement losses are
  REINFORCE terms: -mean((score - mean score) * mean token log-prob of the reply).

The library's ``context`` strategy (``algorithm.group_strategy: context``, alias
``dialogue``) groups by conversation without any of this code; see
examples/configs/dialogue_grpo.yaml.

    python examples/seed_000/grpo_dialogue_trainer.py
"""

import re
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from rlfoundry.algorithms.grouping import conversation_context
from rlfoundry.algorithms.grpo import GRPOTrainer
from rlfoundry.data import PromptDataset
from rlfoundry.plugins import import_plugins
from rlfoundry.rewards import resolve_reward

EXAMPLES = Path(__file__).resolve().parent.parent


class DialogueGRPOTrainer(GRPOTrainer):
    def __init__(self, *args, dialogue_weight=1.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.dialogue_weight = dialogue_weight

    def form_groups(self, batch_size, group_size=4, prompts=None, responses=None):
        # fix: the hook the trainer calls before computing advantages
        self._prompts = prompts
        self.last_groups = self.form_dialogue_groups(responses, batch_size, group_size)
        return self.last_groups

    def extract_contexts(self, responses):
        # fix: undefined in the seed; the conversation each response continues
        return [conversation_context(prompt) for prompt in self._prompts]

    def encode_contexts(self, contexts):
        # fix: undefined in the seed; unit-norm embeddings of the context texts
        return F.normalize(self.embed_texts(contexts), dim=-1)

    def form_dialogue_groups(self, responses, batch_size, group_size=4):
        """
        Group dialogue responses by conversation context
        """
        # Extract conversation contexts
        contexts = self.extract_contexts(responses)

        # Group by context similarity
        context_embeddings = self.encode_contexts(contexts)
        similarities = torch.mm(context_embeddings, context_embeddings.t())

        groups = []
        used_indices = set()

        for i in range(batch_size):
            if i in used_indices:
                continue

            # Find similar contexts
            sim_scores = similarities[i].clone()
            sim_scores[list(used_indices)] = float("-inf")  # fix: rank unused samples only
            sim_scores[i] = float("inf")  # fix: the sample leads its own group
            similar_indices = torch.argsort(sim_scores, descending=True)[:group_size]

            group = [idx.item() for idx in similar_indices if idx.item() not in used_indices]

            if len(group) == group_size:
                groups.append(torch.tensor(group))
                used_indices.update(group)

        return groups

    def compute_dialogue_loss(self, policy_logps, value_preds, advantages,
                              old_policy_logps, returns, groups, dialogue_metrics):
        """
        GRPO loss optimized for dialogue systems
        """
        # Standard GRPO loss
        base_loss = self.compute_grpo_loss(policy_logps, value_preds, advantages,
                                           old_policy_logps, returns, groups)

        # Dialogue-specific components
        coherence_loss = self.compute_coherence_loss(dialogue_metrics)
        engagement_loss = self.compute_engagement_loss(dialogue_metrics)

        # Combine losses
        total_loss = base_loss + self.dialogue_weight * (coherence_loss + engagement_loss)
        self.components = {"base_loss": base_loss.detach(), "coherence_loss": coherence_loss.detach(),
                           "engagement_loss": engagement_loss.detach()}
        return total_loss

    def train_step(self, batch):
        """
        Custom training step for dialogue GRPO
        """
        # Form dialogue-specific groups
        # fix: the seed called form_dialogue_groups(batch['responses']) here (missing
        # batch_size, and too late to shape the advantages); use the groups formed above
        ids = batch["group_id"]
        groups = [torch.nonzero(ids == g).flatten() for g in ids.unique()]
        self._batch = batch

        # Extract dialogue metrics
        dialogue_metrics = self.extract_dialogue_metrics(batch)

        # Compute custom loss
        loss = self.compute_dialogue_loss(
            batch['policy_logps'],
            batch['value_preds'],
            batch['advantages'],
            batch['old_policy_logps'],
            batch['returns'],
            groups,
            dialogue_metrics
        )

        return loss, self.components  # rlfoundry: (loss, metrics) to log the components

    # fix: the helpers below are undefined in the seed
    def compute_grpo_loss(self, policy_logps, value_preds, advantages, old_policy_logps,
                          returns, groups):
        """The configured GRPO loss (clipped, group-relative advantages already in the batch)."""
        batch = {**self._batch, "advantages": advantages, "old_logprobs": old_policy_logps,
                 "returns": returns}
        loss, _ = self.loss_fn(batch, {"logprobs": policy_logps, "values": value_preds})
        return loss

    def extract_dialogue_metrics(self, batch):
        """Per reply: coherence, engagement (scores in [0, 1]) and its mean token log-prob."""
        coherence, engagement = [], []
        for prompt, reply in zip(batch["prompts"], batch["responses"]):
            context_words = set(re.findall(r"[a-z]+", prompt.lower()))
            reply_words = re.findall(r"[a-z]+", reply.lower())
            coherence.append(sum(w in context_words for w in reply_words) / max(len(reply_words), 1))
            engagement.append(float(reply.rstrip().endswith(("!", "?"))))
        mask = batch["response_mask"].to(batch["policy_logps"].dtype)
        logps = (batch["policy_logps"] * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        device = logps.device
        return {"coherence": torch.tensor(coherence, device=device),
                "engagement": torch.tensor(engagement, device=device), "logps": logps}

    def compute_coherence_loss(self, dialogue_metrics):
        return _reinforce(dialogue_metrics["coherence"], dialogue_metrics["logps"])

    def compute_engagement_loss(self, dialogue_metrics):
        return _reinforce(dialogue_metrics["engagement"], dialogue_metrics["logps"])


def _reinforce(score, logps):
    """-mean((score - mean score) * log-prob): raises the log-prob of above-average replies."""
    return -((score - score.mean()).to(logps.dtype) * logps).mean()


def dialogue_config(output_dir: str) -> dict:
    return {
        "algorithm": {"name": "grpo", "group_size": 4, "rewards": [{"name": "says_name"}],
                      "sampling": {"max_new_tokens": 8}},
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"train": str(EXAMPLES / "data" / "dialogues.jsonl")},
        "training": {"output_dir": output_dir, "batch_size": 6, "max_steps": 3,
                     "learning_rate": 3e-3, "lr_scheduler": "constant", "seed": 0},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def main() -> None:
    import_plugins([str(EXAMPLES / "dialogue_grpo.py")])  # registers the says_name reward
    resolve_reward("says_name")
    dataset = PromptDataset.from_file(EXAMPLES / "data" / "dialogues.jsonl")
    with tempfile.TemporaryDirectory() as out:
        trainer = DialogueGRPOTrainer(config=dialogue_config(out), dialogue_weight=1.5)
        metrics = trainer.train(dataset)
    names = [re.search(r"i am (\w+)", conversation_context(p)).group(1) for p in trainer._prompts]
    print("dialogue groups (conversation of each sample): "
          + " ".join("[" + " ".join(names[int(i)] for i in g) + "]" for g in trainer.last_groups))
    one = all(len({names[int(i)] for i in g}) == 1 for g in trainer.last_groups)
    print(f"every group is one conversation: {one}")
    print(", ".join(f"{k}={metrics[k]:.3g}" for k in ("loss", "base_loss", "coherence_loss",
                                                     "engagement_loss", "reward_mean", "grad_norm")))


if __name__ == "__main__":
    main()
