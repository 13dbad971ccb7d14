"""Defects found by an outside parity check (issue 16, items 1-5): ORPO's log1mexp near 0,
the empty micro-batch, exo_pair's epsilon, the KL clamp's gradient, and policy/reference
log-probs that must be bit-identical for identical weights."""

import json
import math

import mpmath
import pytest
import torch

from rlfoundry.algorithms.loss_functions import DPOLossFn, GRPOLossFn, LossFunctionRegistry
from rlfoundry.algorithms.loss_functions.dpo import _log1mexp, validate_dpo_loss_config
from rlfoundry.algorithms.loss_functions.grpo import kl_estimate
from rlfoundry.errors import ConfigError

mpmath.mp.dps = 50

# ---------------------------------------------------------------- 1. log1mexp / ORPO

POINTS = [-1e-12, -1e-9, -1e-7, -1e-6, -1e-3, -0.5, -math.log(2), -0.7, -1.0, -5.0, -30.0,
          -700.0]


def mp_log1mexp(x):
    with mpmath.workdps(400):  # 1 - exp(-700) needs ~300 digits
        return +mpmath.log(1 - mpmath.exp(mpmath.mpf(x)))


def mp_log1mexp_grad(x):  # d/dx log(1 - e^x) = -e^x / (1 - e^x)
    e = mpmath.exp(mpmath.mpf(x))
    return -e / (1 - e)


@pytest.mark.parametrize("x", POINTS)
def test_log1mexp_value_and_gradient_match_mpmath(x):
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = _log1mexp(t)
    y.backward()
    assert float(y.detach()) == pytest.approx(float(mp_log1mexp(x)), rel=1e-14, abs=0)
    assert float(t.grad) == pytest.approx(float(mp_log1mexp_grad(x)), rel=1e-12, abs=0)


def test_log1mexp_at_zero_is_finite_without_gradient():
    t = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    y = _log1mexp(t)
    y.sum().backward()
    assert torch.isfinite(y).all() and (t.grad == 0).all()


def mp_orpo(a_c, a_r, beta):
    a_c, a_r = mpmath.mpf(a_c), mpmath.mpf(a_r)
    log_odds = (a_c - a_r) - (mp_log1mexp(a_c) - mp_log1mexp(a_r))
    return -a_c - beta * mpmath.log(1 / (1 + mpmath.exp(-log_odds)))


@pytest.mark.parametrize("a_c", [-1e-12, -1e-7, -1e-3, -2.0])
def test_orpo_loss_and_gradient_near_zero_log_prob(a_c):
    a_r, beta = -1.5, 0.1
    chosen = torch.tensor([a_c], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([a_r], dtype=torch.float64, requires_grad=True)
    counts = torch.ones(1, dtype=torch.float64)
    fn = DPOLossFn({"loss_type": "orpo", "beta": beta})
    loss, _ = fn({"chosen_token_counts": counts, "rejected_token_counts": counts},
                 {"policy_chosen_logps": chosen, "policy_rejected_logps": rejected})
    loss.backward()
    expected = mp_orpo(a_c, a_r, beta)
    grad = mpmath.diff(lambda v: mp_orpo(v, a_r, beta), mpmath.mpf(a_c))
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    assert float(chosen.grad) == pytest.approx(float(grad), rel=1e-9)
    # the old clamp at -1e-6 sent no odds-ratio gradient above it: exactly -1 (the NLL's)
    assert abs(float(chosen.grad) + 1.0) > 1e-3


# ---------------------------------------------------------------- 2. empty micro-batch


def _empty_inputs():
    """An empty micro-batch (no sequences) carrying every key some built-in loss reads."""
    logp = torch.zeros(0, 6, dtype=torch.float64, requires_grad=True)
    emb = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    chosen = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    rejected = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    z, e = torch.zeros(0, dtype=torch.float64), torch.zeros(0, 6, dtype=torch.float64)
    batch = {"response_mask": torch.zeros(0, 6, dtype=torch.bool), "advantages": z,
             "reference_logprobs": e, "old_logprobs": e,
             "input_ids": torch.zeros(0, 7, dtype=torch.long),
             "reference_chosen_logps": z, "reference_rejected_logps": z,
             "chosen_token_counts": z, "rejected_token_counts": z,
             "group_id": torch.zeros(0, dtype=torch.long), "is_chosen": z.bool(),
             "target_embeddings": torch.zeros(0, 4, dtype=torch.float64),
             "num_sequences": 0, "num_tokens": 0, "global_num_sequences": 4,
             "global_num_tokens": 10}
    unpaired = torch.zeros(0, dtype=torch.float64, requires_grad=True)  # kto
    batch.update(reference_logps=z, label=z.bool())
    outputs = {"logprobs": logp, "entropy": e, "policy_chosen_logps": chosen,
               "policy_rejected_logps": rejected, "response_embeddings": emb,
               "policy_logps": unpaired,
               "chosen_rewards": chosen, "rejected_rewards": rejected}  # reward model (bradley_terry)
    return batch, outputs, [logp, emb, chosen, rejected, unpaired]


BUILTIN = sorted(n for n in LossFunctionRegistry.names()
                 if LossFunctionRegistry.get(n).__module__.startswith("rlfoundry."))
OPTIONS = {
    "dr_grpo": {"max_completion_length": 6},
    "safety": {"banned_phrases": ["ab"]},
    "composite": {"components": [{"type": "sigmoid"}, {"type": "fluency", "weight": 0.5}]},
    "multi_objective_dpo": {"auxiliary_losses": ["perplexity"]},
    "multi_objective_grpo": {"auxiliary_losses": ["fluency"]},
    "dynamic_multi_objective": {"objectives": {"a": {"type": "grpo"},
                                               "b": {"type": "coherence"}}},
}


def _build(name, tokenizer=None):
    fn = LossFunctionRegistry.build({"type": name, **OPTIONS.get(name, {})})
    if hasattr(fn, "bind_tokenizer") and tokenizer is not None:
        fn.bind_tokenizer(tokenizer)
    return fn


def test_every_builtin_loss_is_covered():
    assert {"grpo", "dr_grpo", "gspo", "cispo", "sapo", "gspo_token", "sigmoid", "ipo", "orpo",
            "exo_pair", "dpo", "bnpo", "dapo", "dynamic_grpo", "nll", "composite",
            "consistency"} <= set(BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_empty_micro_batch_gives_zero_in_graph_and_a_counter(name, tokenizer):
    fn = _build(name, tokenizer)
    batch, outputs, leaves = _empty_inputs()
    loss, metrics = fn(batch, outputs)
    assert loss.item() == 0.0 and loss.requires_grad  # joins the graph: backward runs
    loss.backward()
    assert any(leaf.grad is not None for leaf in leaves)
    assert all(math.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["empty_batches"]) == 1.0 and fn.empty_batches == 1


# ---------------------------------------------------------------- 3. exo_pair epsilon


@pytest.mark.parametrize("ls", [0.0, 1e-4, 9.99e-4])
def test_exo_pair_rejects_a_label_smoothing_below_its_minimum(ls):
    with pytest.raises(ConfigError, match=r"algorithm\.loss\.label_smoothing: loss_type "
                                          r"'exo_pair'.*\[0\.001, 0\.5\)"):
        validate_dpo_loss_config({"loss_type": "exo_pair", "label_smoothing": ls})
    with pytest.raises(ConfigError, match="exo_pair"):
        LossFunctionRegistry.build({"type": "exo_pair", "label_smoothing": ls})


def test_exo_pair_uses_the_given_epsilon_and_defaults_to_the_minimum():
    assert validate_dpo_loss_config({"loss_type": "exo_pair"})["label_smoothing"] == 1e-3
    margin = torch.tensor([0.4], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    for eps in (1e-3, 0.05):
        fn = DPOLossFn({"loss_type": "exo_pair", "label_smoothing": eps, "beta": 1.0})
        loss, _ = fn({"reference_chosen_logps": zero, "reference_rejected_logps": zero},
                     {"policy_chosen_logps": margin, "policy_rejected_logps": zero})
        z = 0.4
        s = 1 / (1 + math.exp(-z))
        expected = s * (math.log(s) - math.log1p(-eps)) + (1 - s) * (math.log(1 - s)
                                                                       - math.log(eps))
        assert loss.item() == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- 4. KL clamp


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_clamp_gradient_at_and_beyond_the_bound(estimator):
    c = 2.0
    ref = torch.zeros(5, dtype=torch.float64)
    # r = ref - logp: at -c (policy above reference), inside, at +c, beyond on both sides
    logp = torch.tensor([c, 0.5, -c, 3.0, -3.0], dtype=torch.float64, requires_grad=True)
    kl_estimate(logp, ref, estimator, clamp=c).sum().backward()
    r = (ref - logp).detach()
    d = {"k1": -torch.ones_like(r), "k2": r, "k3": torch.expm1(r)}[estimator]  # dKL/dr
    expected = -d  # dr/dlogp = -1
    assert torch.equal(logp.grad[:3], expected[:3])  # at the bound: the gradient still flows
    assert (logp.grad[3:] == 0).all()  # beyond it: none, on either side
    logp.grad = None
    kl_estimate(logp, ref, estimator, clamp=None).sum().backward()
    assert torch.equal(logp.grad, expected)  # null: no clamp, every token's gradient


def test_kl_clamp_is_a_config_key_and_reaches_the_estimate():
    logp = torch.tensor([[-30.0, -1.0]], dtype=torch.float64, requires_grad=True)
    batch = {"response_mask": torch.ones(1, 2, dtype=torch.bool), "advantages": torch.zeros(1),
             "reference_logprobs": torch.tensor([[0.0, -1.0]], dtype=torch.float64)}
    for clamp, expect_grad in ((10.0, False), (None, True), (40.0, True)):
        logp.grad = None
        fn = LossFunctionRegistry.build({"type": "grpo", "beta": 0.1, "kl_estimator": "k1",
                                          "kl_clamp": clamp})
        fn(batch, {"logprobs": logp})[0].backward()
        assert (logp.grad[0, 0] != 0) == expect_grad
    with pytest.raises(ConfigError, match=r"algorithm\.loss\.kl_clamp: must be > 0"):
        GRPOLossFn({"kl_clamp": 0})


# ---------------------------------------------------------------- 5. policy == reference


def _hidden(n, h, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, h, generator=g)


@pytest.mark.parametrize("with_entropy", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_lm_head_grad_and_no_grad_paths_are_bit_identical(with_entropy, temperature):
    from rlfoundry.ops.lm_head import gather_logprobs

    hidden, weight = _hidden(37, 16), _hidden(50, 16, seed=1)
    targets = torch.randint(0, 50, (37,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = gather_logprobs(hidden, weight, None, targets, chunk_size=8,
                              with_entropy=with_entropy, temperature=temperature)
    w = weight.clone().requires_grad_(True)
    pol = gather_logprobs(hidden, w, None, targets, chunk_size=8, with_entropy=with_entropy,
                          temperature=temperature)
    assert pol[0].requires_grad
    assert torch.equal(pol[0].detach(), ref[0])
    if with_entropy:
        assert torch.equal(pol[1].detach(), ref[1])


def constant_reward(prompts, completions, **columns):
    """Every completion gets 1: every group is constant, so every advantage is 0."""
    return [1.0] * len(completions)


def _records(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("micro_batch_size", [None, 2])
def test_grpo_with_kl_at_step_one_has_exactly_zero_gradient(tmp_path, micro_batch_size):
    """Policy == reference and every advantage 0: the true gradient is 0, and so must be
    the computed one (before the fix the two log-prob paths differed at 1e-7 and AdamW
    turned that noise into a full-size update)."""
    from rlfoundry.algorithms.grpo import GRPOTrainer
    from rlfoundry.ops import lm_head
    from tests.test_grpo_trainer import config

    cfg = config(tmp_path, {"loss": {"type": "grpo", "beta": 0.1},
                            "rewards": [{"name": "tests.test_loss_defects:constant_reward"}]},
                 max_steps=1, micro_batch_size=micro_batch_size)
    trainer = GRPOTrainer(config=cfg)  # float32, as a user runs it
    seen = {}
    real = lm_head.gather_logprobs

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.setdefault("grad" if torch.is_grad_enabled() else "nograd", []).append(out[0])
        return out

    lm_head.gather_logprobs = spy
    try:
        metrics = trainer.train()
    finally:
        lm_head.gather_logprobs = real
    assert metrics["grad_norm"] == 0.0
    assert metrics["kl"] == 0.0
    assert seen["grad"] and seen["nograd"]  # both paths ran (policy with grad, reference without)


@pytest.mark.parametrize("share_prompt", [False, True])
@pytest.mark.parametrize("precompute", [False, True])
def test_dpo_at_step_one_is_exactly_log2_with_zero_margins(tmp_path, share_prompt, precompute):
    from rlfoundry.algorithms.dpo import DPOTrainer
    from rlfoundry.algorithms.reference import pair_token_logprobs, reference_module
    from tests.test_dpo_trainer import run_config

    cfg = run_config(tmp_path, max_steps=1)
    cfg["data"]["share_prompt"] = share_prompt
    cfg["reference"] = {"precompute": precompute, "cache_dir": str(tmp_path / "cache")}
    trainer = DPOTrainer(config=cfg)  # float32
    if not precompute:  # the live reference: token by token equal to the policy
        trainer.setup_data()
        assert trainer.packed is share_prompt
        batch = trainer.collate(list(range(4)))
        with reference_module(trainer.ref_model) as ref, torch.no_grad():
            ref_lp = pair_token_logprobs(ref, batch).logprobs
        trainer.model.train()
        pol_lp = pair_token_logprobs(trainer.model, batch).logprobs
        assert pol_lp.requires_grad
        assert torch.equal(pol_lp.detach(), ref_lp)
    metrics = trainer.train()
    assert metrics["loss"] == float(torch.tensor(math.log(2.0)))
    assert metrics["chosen_rewards_mean"] == 0.0 and metrics["rejected_rewards_mean"] == 0.0
    assert metrics["reward_gap"] == 0.0


def _cut(d):
    return {k: v[:0] if isinstance(v, torch.Tensor) and v.dim() else v for k, v in d.items()}


class _EmptyView:
    """The trainer's loss, called on the rows [:0] of a real micro-batch: an empty
    micro-batch as the loss sees it (the model itself cannot run zero rows)."""

    def __init__(self, fn):
        self.fn = fn

    def __getattr__(self, key):
        return getattr(self.fn, key)

    def __call__(self, batch, outputs):
        return self.fn(_cut(batch), _cut(outputs))


def _add_empty_micro_batch(t):
    real_batches, real_step = t.micro_batches, t.micro_step

    def micro_batches(indices):
        probe = {**t.collate([0]), "num_sequences": 0, "num_tokens": 0, "empty_probe": True}
        return [*real_batches(indices), probe]

    def micro_step(batch):
        if not batch.pop("empty_probe", False):
            return real_step(batch)
        fn, t.loss_fn = t.loss_fn, _EmptyView(t.loss_fn)
        try:
            return real_step(batch)
        finally:
            t.loss_fn = fn

    t.micro_batches, t.micro_step = micro_batches, micro_step


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "gspo"])
def test_empty_micro_batch_inside_a_step_changes_nothing(tmp_path, loss_type):
    """A step whose micro-batches include an empty one trains exactly like the same step
    without it (weight 0, zero loss, zero gradient; before, its NaN loss poisoned the step)."""
    from tests.test_grpo_trainer import config, params, trainer64

    algo = {"loss": {"type": loss_type, "max_completion_length": 5}
            if loss_type == "dr_grpo" else {"type": loss_type}}
    runs = []
    for add_empty in (False, True):
        t = trainer64(config(tmp_path / str(add_empty), algo, max_steps=1))
        if add_empty:
            _add_empty_micro_batch(t)
        metrics = t.train()
        assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
        runs.append((metrics, params(t.model)))
    (m0, p0), (m1, p1) = runs
    assert m1["grad_norm"] == m0["grad_norm"] and m1["loss"] == m0["loss"]
    assert torch.equal(p0, p1)
