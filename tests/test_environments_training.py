"""GRPO on multi-turn episodes with the tiny model: what is trained, with what log-probs, and
that a data-parallel run trains exactly what one process does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlfoundry.algorithms.grpo import GRPOTrainer
from rlfoundry.data.padding import pad_prompt_completions
from rlfoundry.ops.lm_head import token_logprobs

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = str(ROOT / "tests" / "assets" / "envcore_digits.py")
ROWS = [{"prompt": f"Say the digit {d}", "digit": d, "conversation_id": f"c{d % 2}"}
        for d in range(8)]


def config(out, environment=None, algorithm=None, **training):
    return {
        "plugins": [PLUGIN],
        "algorithm": {"name": "grpo", "group_size": 2,
                      "sampling": {"max_new_tokens": 3, "seed_per_prompt": True},
                      "loss": {"type": "grpo", "reference_policy_kl_penalty": 0.1},
                      "entropy_coef": 0.01, **(algorithm or {})},
        "environment": {"name": "test_digits", "max_turns": 3, **(environment or {})},
        "model": {"name_or_path": "builtin:tiny", "dtype": "float64"},
        "data": {"train": ROWS, "eval": ROWS[:2]},
        "training": {"output_dir": str(out), "batch_size": 2, "max_steps": 1, "seed": 0,
                     "learning_rate": 1e-3, "lr_scheduler": "constant", **training},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def test_environment_tokens_get_zero_gradient_and_model_tokens_their_single_turn_logprobs(tmp_path):
    t = GRPOTrainer(config=config(tmp_path))
    t.setup_data()
    t.total_steps = 1
    buffer, metrics = t.make_rollout([0, 1, 2])
    t.buffer = buffer
    assert metrics["env/turns"] > 1 and 0 < metrics["env/model_token_frac"] < 1
    model_tokens = buffer.loss_mask.bool()
    prompt_len = [len(p) for p in t.train_prompts[:3]]
    env_tokens = buffer.attention_mask.bool() & ~model_tokens
    env_tokens[:, :min(prompt_len)] = False  # count the environment's, not the prompt's
    assert env_tokens.any(), "the episodes should contain environment tokens"

    # gradient reaching the final hidden state at each position (it feeds only that
    # position's next-token prediction): nonzero where a model token is predicted, exactly
    # zero where an environment (or prompt/padding) token is
    grads = []
    norm = t.model.model.norm

    def keep_grad(module, inputs, out):
        out.register_hook(grads.append)  # returns None: the output is left as it is

    hook = norm.register_forward_hook(keep_grad)
    batch = t.collate(list(range(len(buffer))))
    loss, _ = t.micro_step(batch)
    loss.backward()
    hook.remove()
    per_position = grads[0].abs().sum(-1)[:, :-1]  # position p predicts token p + 1
    predicts_model = batch["loss_mask"][:, 1:].bool()
    assert (per_position[~predicts_model] == 0).all()
    assert (per_position[predicts_model] > 0).all()

    # each model turn's log-probs equal a single-turn computation: everything before the turn
    # as the prompt, the turn as the completion
    with torch.no_grad():
        multi = token_logprobs(t.model, buffer.input_ids, buffer.attention_mask, buffer.loss_mask).logprobs
        for row in range(len(buffer)):
            mask = buffer.loss_mask[row].tolist()
            ids = buffer.input_ids[row].tolist()
            turns, start = [], None
            for p, m in enumerate(mask + [0]):
                if m and start is None:
                    start = p
                if not m and start is not None:
                    turns.append((start, p))
                    start = None
            assert turns
            for a, b in turns:
                single = pad_prompt_completions([ids[:a]], [ids[a:b]], 0)
                lp = token_logprobs(t.model, *single).logprobs[0, a - 1:b - 1]
                torch.testing.assert_close(multi[row, a - 1:b - 1], lp, rtol=0, atol=1e-10)
                # and the engine's sampling log-probs (KV cache, turn by turn) agree too
                torch.testing.assert_close(buffer.sampling_logprobs[row, a - 1:b - 1], lp,
                                           rtol=0, atol=1e-8)
    assert (buffer.sampling_logprobs[~buffer.loss_mask[:, 1:].bool()] == 0).all()


def test_a_run_goes_on_through_failing_steps_groups_by_conversation_and_evaluates(tmp_path):
    cfg = config(tmp_path, {"args": {"flaky": True}},
                 {"reward_error": "zero", "group_strategy": "context",
                  "grouping": {"max_group_size": 8}}, batch_size=4, eval_every=1)
    t = GRPOTrainer(config=cfg)
    metrics = t.train()
    assert metrics["env/turns"] >= 1 and "env/tool_calls" in metrics and "env/errors" in metrics
    # context grouping: the episodes of one conversation (conversation_id) form one group
    conversation = {r["prompt"]: r["conversation_id"] for r in ROWS}
    groups: dict[int, set[str]] = {}
    for g, prompt in zip(t.buffer.group_id.tolist(), t.buffer.prompts):
        groups.setdefault(g, set()).add(conversation[prompt])
    assert all(len(c) == 1 for c in groups.values())
    assert len(groups) == len({conversation[p] for p in t.buffer.prompts})
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/accuracy" in r]
    assert evals and "eval/env/turns" in evals[0]


@pytest.mark.slow
def test_a_multi_turn_step_is_the_same_with_one_or_two_processes(tmp_path):
    from tests.test_distributed_e2e import final_weights, records, single_node, write_config

    one, two = tmp_path / "one", tmp_path / "two"
    GRPOTrainer(config=config(one, micro_batch_size=2)).train()
    code, out = single_node(write_config(tmp_path / "run.yaml", config(two, micro_batch_size=2)))
    assert code == 0, out
    a, b = records(one)[-1], records(two)[-1]
    for key in ("loss", "policy_loss", "grad_norm", "env/turns", "reward_mean", "kl"):
        if key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), key
    wa, wb = final_weights(one), final_weights(two)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-9
