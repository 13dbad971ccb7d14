"""Seed 000, "Code Generation": DPO with syntax-aware rewards, syntax scores computed by
parsing the code responses.

The seed's code_generation_loss is the trainer's compute_loss; it receives the
``syntax_scores`` column because its signature names it. The trainer's ``collate`` fills
that column by parsing each pair's responses with Python's ``ast``: ``syntax_scores =
parses(chosen) - parses(rejected)`` (the seed adds a chosen-side bonus; a margin in parse
success is the same bonus when the chosen parses and the rejected does not, and no bonus when
both or neither parse).
"""

import ast
import random

import torch

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.data import PreferenceDataset


def parses(code: str) -> float:
    """1.0 if ``code`` is syntactically valid Python, else 0.0."""
    try:
        ast.parse(code)
        return 1.0
    except SyntaxError:
        return 0.0


class CodeDPOTrainer(DPOTrainer):
    def code_generation_loss(self, chosen_logps, rejected_logps,
                             reference_chosen_logps, reference_rejected_logps,
                             syntax_scores):
        """
        DPO loss with syntax-aware rewards for code generation
        """
        # Incorporate syntax correctness
        chosen_rewards = (chosen_logps - reference_chosen_logps) + syntax_scores
        rejected_rewards = (rejected_logps - reference_rejected_logps)

        losses = -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards)
        return losses.mean()

    def compute_loss(self, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                     reference_rejected_logps, syntax_scores):
        return self.code_generation_loss(policy_chosen_logps, policy_rejected_logps,
                                         reference_chosen_logps, reference_rejected_logps, syntax_scores)

    def collate(self, indices, pairs=None):
        batch = super().collate(indices, pairs)
        pairs = self.train_pairs if pairs is None else pairs
        decode = self.tokenizer.decode
        batch["syntax_scores"] = torch.tensor(
            [parses(decode(pairs[i].chosen_ids, skip_special_tokens=True))
             - parses(decode(pairs[i].rejected_ids, skip_special_tokens=True)) for i in indices])
        return batch


def code_preferences(n: int, seed: int) -> list[dict]:
    """Prompts asking for a small function; chosen code is valid, rejected code has a typical
    syntax error (missing colon, unbalanced parenthesis, misspelled keyword) or a wrong op."""
    rng = random.Random(seed)
    ops = [("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/"), ("mod", "%")]
    breakages = [lambda c: c.replace("):", ")", 1), lambda c: c.replace("(a, b)", "(a, b", 1),
                 lambda c: c.replace("return", "retrun", 1), lambda c: c.replace(" a ", " a  b ", 1)]
    rows = []
    for _ in range(n):
        name, op = rng.choice(ops)
        good = f"def {name}(a, b):\n    return a {op} b"
        rows.append({"prompt": f"{name} ->", "chosen": good, "rejected": rng.choice(breakages)(good)})
    return rows


if __name__ == "__main__":
    config = {"model": {"name_or_path": "builtin:tiny"},
              "data": {"max_length": 64},
              "training": {"max_steps": 20, "batch_size": 8, "learning_rate": 2e-3, "eval_every": 20,
                           "output_dir": "runs/seed_code_dpo"},
              "logging": {"tensorboard": False, "progress_bar": False}}
    trainer = CodeDPOTrainer(config=config)
    train = PreferenceDataset.from_rows(code_preferences(96, seed=0))
    held_out = PreferenceDataset.from_rows(code_preferences(32, seed=1))
    trainer.train(train, held_out)
    scores = trainer.collate(list(range(16)))["syntax_scores"]
    print(f"mean syntax score margin (chosen - rejected) {float(scores.mean()):.2f}; held-out "
          f"accuracy {trainer.initial_eval['accuracy']:.3f} -> {trainer.last_eval['accuracy']:.3f}")
