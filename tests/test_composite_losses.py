"""Composite, multi-objective and dynamic multi-objective losses, and auxiliary objectives.

Expected values come from plain float64 re-derivations of each formula here."""

import math

import pytest
import torch

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.algorithms.loss_functions import (
    ComposableLossFunction,
    DPOLossFn,
    DynamicMultiObjectiveLossFn,
    LossFunctionRegistry,
    NLLLossFn,
)
from rlfoundry.algorithms.loss_functions.objectives import phrase_positions
from rlfoundry.config import load_config
from rlfoundry.errors import ConfigError
from rlfoundry.training.checkpoint import read_state
from tests.test_dpo_trainer import float64_trainer, params, run_config


def pair_batch(b=3, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(2 * b, t, generator=g, dtype=torch.float64) * 3
    mask = torch.ones(2 * b, t, dtype=torch.bool)
    mask[:, 0] = False
    lp = lp.masked_fill(~mask, 0.0).requires_grad_()
    sums = lp.sum(-1)
    batch = {
        "reference_chosen_logps": sums[:b].detach() + 0.3,
        "reference_rejected_logps": sums[b:].detach() - 0.2,
        "response_mask": mask,
        "is_chosen": torch.arange(2 * b) < b,
        "chosen_token_counts": mask[:b].sum(-1).double(),
        "input_ids": torch.randint(0, 50, (2 * b, t + 1), generator=g),
    }
    outputs = {"policy_chosen_logps": sums[:b], "policy_rejected_logps": sums[b:], "logprobs": lp}
    return batch, outputs, lp


def test_composite_is_weighted_sum_with_prefixed_metrics():
    batch, outputs, lp = pair_batch()
    a, b = DPOLossFn({"beta": 0.1}), DPOLossFn({"beta": 0.5})
    comp = ComposableLossFunction([a, b], [0.7, 0.3])
    loss, metrics = comp(batch, outputs)
    la, ma = a(batch, outputs)
    lb, mb = b(batch, outputs)
    assert float(loss.detach()) == pytest.approx(0.7 * float(la.detach()) + 0.3 * float(lb.detach()), rel=1e-12)
    # metrics are kept apart, never added together
    assert comp.names == ["dpo", "dpo_2"]
    assert float(metrics["dpo/reward_gap"]) == pytest.approx(float(ma["reward_gap"]))
    assert float(metrics["dpo_2/reward_gap"]) == pytest.approx(float(mb["reward_gap"]))
    assert "reward_gap" not in metrics


def test_composite_with_mixed_reductions_scales_by_global_counts():
    batch, outputs, _ = pair_batch()
    comp = LossFunctionRegistry.build({"type": "composite", "components": [
        {"type": "dpo", "weight": 1.0}, {"type": "nll", "weight": 0.5}]})
    assert comp.reduction == "sum"
    chosen_tokens = int(batch["response_mask"][:3].sum())
    batch.update(num_sequences=3, num_tokens=chosen_tokens, global_num_sequences=12,
                 global_num_tokens=4 * chosen_tokens)
    loss, _ = comp(batch, outputs)
    dpo, _ = DPOLossFn({})(batch, outputs)
    nll = -outputs["logprobs"][:3][batch["response_mask"][:3]].sum() / chosen_tokens
    assert float(loss.detach()) == pytest.approx(float(dpo.detach()) * 3 / 12 + 0.5 * float(nll.detach()) / 4,
                                                 rel=1e-12)


def test_nll_in_preference_batch_uses_chosen_rows_only():
    batch, outputs, lp = pair_batch()
    loss, _ = NLLLossFn()(batch, outputs)
    m = batch["response_mask"][:3]
    assert float(loss) == pytest.approx(float(-lp[:3][m].sum() / m.sum()), rel=1e-12)


def test_composite_yaml_errors_name_the_component():
    with pytest.raises(ConfigError, match=r"components\[1\].*unknown loss function 'nlll'.*did you mean 'nll'"):
        LossFunctionRegistry.build({"type": "composite", "components": [{"type": "dpo"}, {"type": "nlll"}]})
    with pytest.raises(ConfigError, match="non-empty list"):
        LossFunctionRegistry.build({"type": "composite", "components": []})


def _dpo_cfg(tmp_path, loss, **training):
    cfg = run_config(tmp_path, **training)
    cfg["algorithm"] = {"name": "dpo", "loss": loss}
    return cfg


COMPOSED = {"type": "composite", "components": [
    {"type": "dpo", "weight": 0.7}, {"type": "grpo", "weight": 0.3}, {"type": "nll", "weight": 0.2}]}


def test_composite_accumulation_is_exact(tmp_path):
    full = float64_trainer(_dpo_cfg(tmp_path / "a", COMPOSED))
    m_full = full.train()
    acc = float64_trainer(_dpo_cfg(tmp_path / "b", COMPOSED, micro_batch_size=2))
    m_acc = acc.train()
    assert m_acc["grad_norm"] == pytest.approx(m_full["grad_norm"], rel=1e-9)
    assert m_acc["loss"] == pytest.approx(m_full["loss"], rel=1e-9)
    assert torch.allclose(params(full.model), params(acc.model), rtol=0, atol=1e-8)
    assert {"dpo/accuracy", "grpo/policy_loss", "nll/perplexity"} <= set(m_full)


def test_dpo_run_rejects_token_level_or_kl_grpo_component(tmp_path):
    for comp in ({"type": "dapo"}, {"type": "grpo", "beta": 0.1}):
        loss = {"type": "composite", "components": [{"type": "dpo"}, comp]}
        with pytest.raises(ConfigError, match="group of two"):
            load_config(_dpo_cfg(tmp_path, loss))


def test_grpo_run_rejects_dpo_component(tmp_path):
    cfg = {"algorithm": {"name": "grpo", "loss": {"type": "composite", "components": [
        {"type": "grpo"}, {"type": "dpo"}]}}, "data": {"train": "builtin:max"}}
    with pytest.raises(ConfigError, match="preference pairs"):
        load_config(cfg)


# ---- auxiliary objectives (plain float64 re-derivations) ------------------------------------

def test_fluency_coherence_consistency_match_plain_formulas():
    batch, outputs, lp = pair_batch()
    rows = [[float(v) for v, m in zip(lp[i], batch["response_mask"][i]) if m] for i in range(3)]
    fluency = sum(-sum(r) / len(r) for r in rows) / 3
    coh = 0.0
    for r in rows:
        mu = sum(r) / len(r)
        coh += math.sqrt(sum((x - mu) ** 2 for x in r) / len(r) + 1e-8)
    coh /= 3
    cons = 0.0
    for i in range(3):
        drift = (float(outputs["policy_chosen_logps"][i]) - float(batch["reference_chosen_logps"][i])) / 4
        cons += drift ** 2
    cons /= 3
    for name, want in (("fluency", fluency), ("coherence", coh), ("consistency", cons)):
        loss, _ = LossFunctionRegistry.build({"type": name})(batch, outputs)
        assert float(loss) == pytest.approx(want, rel=1e-10), name


def test_phrase_positions_and_safety_unlikelihood():
    labels = torch.tensor([[5, 1, 2, 3, 1, 2], [1, 2, 9, 9, 9, 9]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    hit = phrase_positions(labels, mask, [[1, 2]])
    # row 0: occurrences at 1-2 and 4-5; row 1: the occurrence at 0-1 overlaps the prompt
    assert hit.tolist() == [[False, True, True, False, True, True], [False] * 6]

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [int(c) for c in text]}

    safety = LossFunctionRegistry.build({"type": "safety", "banned_phrases": ["12"]})
    safety.bind_tokenizer(Tok())
    lp = torch.log(torch.full((2, 6), 0.25, dtype=torch.float64)).requires_grad_()
    batch = {"input_ids": torch.cat([torch.zeros(2, 1, dtype=torch.long), labels], 1), "response_mask": mask}
    loss, metrics = safety(batch, {"logprobs": lp})
    assert float(loss) == pytest.approx(4 * -math.log(0.75) / 2, rel=1e-12)
    loss.backward()
    assert (lp.grad[hit] > 0).all() and (lp.grad[~hit] == 0).all()  # lowers banned-token log-probs
    assert float(metrics["banned_token_frac"]) == pytest.approx(4 / 10)
    with pytest.raises(ConfigError, match="banned_phrases"):
        LossFunctionRegistry.build({"type": "safety"})


def test_diversity_and_quality_match_plain_formulas():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(4, 3, generator=g, dtype=torch.float64)
    groups = torch.tensor([0, 0, 1, 1])
    targets = torch.randn(4, 3, generator=g, dtype=torch.float64)

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    want_div = -((1 - cos(emb[0], emb[1])) + (1 - cos(emb[2], emb[3]))) / 2
    loss, _ = LossFunctionRegistry.build({"type": "diversity"})({"group_id": groups},
                                                                {"response_embeddings": emb})
    assert float(loss) == pytest.approx(want_div, rel=1e-6)
    want_q = sum(1 - cos(emb[i], targets[i]) for i in range(4)) / 4
    loss, _ = LossFunctionRegistry.build({"type": "quality"})({"target_embeddings": targets},
                                                              {"response_embeddings": emb})
    assert float(loss) == pytest.approx(want_q, rel=1e-6)


def test_objective_gradients_pass_gradcheck():
    batch, _, _ = pair_batch(b=2, t=4)
    for name in ("fluency", "coherence"):
        fn = LossFunctionRegistry.build({"type": name})
        lp = -torch.rand(4, 4, dtype=torch.float64) - 0.1
        lp.requires_grad_()
        assert torch.autograd.gradcheck(lambda x, fn=fn: fn(batch, {"logprobs": x})[0], (lp,))


def test_multi_objective_dpo_from_seed_keys(tmp_path):
    cfg = {"type": "multi_objective_dpo", "beta": 0.1, "auxiliary_losses": ["perplexity", "safety"],
           "auxiliary_weights": {"perplexity": 0.1, "safety": 0.5},
           "auxiliary_options": {"safety": {"banned_phrases": ["bad"]}}}
    loss = LossFunctionRegistry.build(cfg)
    assert loss.names == ["dpo", "perplexity", "safety"] and loss.weights == [1.0, 0.1, 0.5]
    with pytest.raises(ConfigError, match="auxiliary_weights.*not listed"):
        LossFunctionRegistry.build({"type": "multi_objective_dpo", "auxiliary_weights": {"x": 1}})
    t = float64_trainer(_dpo_cfg(tmp_path, cfg, max_steps=2))
    metrics = t.train()
    assert {"dpo/loss", "perplexity/loss", "safety/loss"} <= set(metrics)


# ---- dynamic weights -----------------------------------------------------------------------

def _const(v):
    return lambda batch, outputs: torch.tensor(v)


def test_dynamic_moving_average_rule_matches_seed():
    fn = DynamicMultiObjectiveLossFn({"objectives": {"a": _const(1.0), "b": _const(1.0)},
                                      "initial_weights": {"a": 1.0, "b": 2.0},
                                      "adaptation_rate": 0.1, "window": 2})
    history = {"a": [5, 4, 3, 2, 1], "b": [1, 2, 3, 4, 5]}
    wa, wb = 1.0, 2.0
    for t in range(5):
        fn.on_step_end({"a/loss": history["a"][t], "b/loss": history["b"][t]})
        if t + 1 > 2:  # the seed's rule once the history is longer than the window
            ha, hb = history["a"][: t + 1], history["b"][: t + 1]
            wa *= 1.1 if sum(ha[-2:]) / 2 < sum(ha[:-2]) / len(ha[:-2]) else 0.9
            wb *= 1.1 if sum(hb[-2:]) / 2 < sum(hb[:-2]) / len(hb[:-2]) else 0.9
        assert fn.current_weights == pytest.approx({"a": wa, "b": wb})
    _, metrics = fn({}, {})
    assert metrics["weight/a"] == pytest.approx(wa)


def test_dynamic_dwa_weights():
    fn = DynamicMultiObjectiveLossFn({"objectives": {"a": _const(1.0), "b": _const(1.0)},
                                      "scheme": "dwa", "temperature": 2.0})
    fn.on_step_end({"a/loss": 2.0, "b/loss": 2.0})
    fn.on_step_end({"a/loss": 1.0, "b/loss": 3.0})
    ea, eb = math.exp(0.5 / 2), math.exp(1.5 / 2)
    assert fn.weights == pytest.approx([2 * ea / (ea + eb), 2 * eb / (ea + eb)])


def test_dynamic_uncertainty_weights_are_trained_and_checkpointed(tmp_path):
    loss = {"type": "dynamic_multi_objective", "scheme": "uncertainty",
            "objectives": {"pref": {"type": "dpo"}, "sft": {"type": "nll"}}}
    t = float64_trainer(_dpo_cfg(tmp_path, loss, max_steps=3, save_every=1))
    metrics = t.train()
    s = t.loss_fn.log_vars.detach().clone()
    assert (s != 0).all()  # learned with the model
    assert metrics["weight/sft"] != 1.0  # logged: exp(-s) as used in the last step
    assert metrics["weight/sft"] == pytest.approx(math.exp(-float(s[1])), rel=1e-2)
    state = read_state(sorted((tmp_path / "checkpoints").glob("step_*"))[-1])
    assert torch.equal(state["loss_fn"]["state_dict"]["log_vars"], s)


def test_dynamic_rejects_bad_config():
    with pytest.raises(ConfigError, match="scheme"):
        DynamicMultiObjectiveLossFn({"objectives": {"a": {"type": "nll"}}, "scheme": "magic"})
    with pytest.raises(ConfigError, match="initial_weights"):
        DynamicMultiObjectiveLossFn({"objectives": {"a": {"type": "nll"}}, "initial_weights": {"b": 1}})


def test_trainer_subclass_composite_in_python(tmp_path):
    """ComposableLossFunction passed from Python (loss_fn=) trains like the YAML form."""
    comp = ComposableLossFunction([DPOLossFn({}), NLLLossFn()], [1.0, 0.1])
    t = float64_trainer(_dpo_cfg(tmp_path, {"type": "dpo"}), loss_fn=comp)
    before = params(t.model).clone()
    metrics = t.train()
    assert not torch.equal(before, params(t.model))
    assert "nll/loss" in metrics and isinstance(t, DPOTrainer)
