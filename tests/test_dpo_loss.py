"""DPO-family losses against plain scalar reference formulas, plus config and input handling."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rlfoundry.algorithms.loss_functions import (
    DPO_LOSS_TYPES,
    DPOLossConfig,
    DPOLossFn,
    LossFunctionRegistry,
)
from rlfoundry.algorithms.loss_functions.dpo import validate_dpo_loss_config
from rlfoundry.errors import ConfigError, DataError
from rlfoundry.ops.logprobs import logprobs_from_logits

# ---------------------------------------------------------------- scalar references (math)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return math.exp(logsig(x))


def ref_pair_loss(t, pc, pr, rc, rr, nc, nr, *, beta, ls, gamma, tau, delta):
    """One pair's loss, written from the papers' formulas."""
    h = (pc - pr) - (rc - rr)
    cl, rl = pc - rc, pr - rr
    z = beta * h
    if t == "sigmoid":
        return -(1 - ls) * logsig(z) - ls * logsig(-z)
    if t == "robust":
        return (-(1 - ls) * logsig(z) + ls * logsig(-z)) / (1 - 2 * ls)
    if t == "hinge":
        return max(0.0, 1 - z)
    if t == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if t == "exo_pair":
        eps = ls
        return sig(z) * (logsig(z) - math.log(1 - eps)) + sig(-z) * (logsig(-z) - math.log(eps))
    if t == "nca_pair":
        return -logsig(beta * cl) - 0.5 * logsig(-beta * cl) - 0.5 * logsig(-beta * rl)
    if t == "bco_pair":
        return -logsig(beta * cl - delta) - logsig(-(beta * rl - delta))
    if t == "sppo_hard":
        return (cl - 1 / (2 * beta)) ** 2 + (rl + 1 / (2 * beta)) ** 2
    if t == "apo_zero":
        return (1 - sig(beta * cl)) + sig(beta * rl)
    if t == "apo_down":
        return sig(beta * cl) + (1 - sig(beta * (cl - rl)))
    if t == "discopop":
        m = sig(z / tau)
        return (1 - m) * -logsig(z) + m * math.exp(-z)
    if t == "sigmoid_norm":
        zn = beta * ((pc / nc - pr / nr) - (rc / nc - rr / nr))
        return -(1 - ls) * logsig(zn) - ls * logsig(-zn)
    if t == "simpo":
        zs = beta * (pc / nc - pr / nr) - gamma
        return -(1 - ls) * logsig(zs) - ls * logsig(-zs)
    if t == "orpo":
        ac, ar = pc / nc, pr / nr
        log_odds = (ac - ar) - (math.log(1 - math.exp(ac)) - math.log(1 - math.exp(ar)))
        return -ac - beta * logsig(log_odds)
    raise AssertionError(t)


SMOOTHED = {"sigmoid", "robust", "exo_pair", "sigmoid_norm", "simpo"}
REF_FREE = {"simpo", "orpo"}


def make_data(n: int, seed: int, scale: float = 1.0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        mag = [1.0, 10.0, 60.0, 300.0][i % 4] * scale
        nc, nr = rng.randint(1, 50), rng.randint(1, 50)
        pc, pr = -rng.uniform(0.05, 1) * mag, -rng.uniform(0.05, 1) * mag
        rc, rr = pc + rng.gauss(0, 0.3 * mag**0.5), pr + rng.gauss(0, 0.3 * mag**0.5)
        rows.append((pc, pr, rc, rr, float(nc), float(nr)))
    return rows


def to_inputs(rows, dtype=torch.float64, requires_grad=False):
    cols = list(zip(*rows))
    t = [torch.tensor(c, dtype=dtype) for c in cols]
    pc, pr = (x.clone().requires_grad_(requires_grad) for x in t[:2])
    batch = {
        "reference_chosen_logps": t[2],
        "reference_rejected_logps": t[3],
        "chosen_token_counts": t[4],
        "rejected_token_counts": t[5],
    }
    return batch, {"policy_chosen_logps": pc, "policy_rejected_logps": pr}


# exo_pair needs label_smoothing >= 1e-3 (it is its epsilon; tests/test_loss_defects.py)
CASES = [(t, 1e-3 if t == "exo_pair" else 0.0, 0.1, 0.0) for t in DPO_LOSS_TYPES]
CASES += [(t, 0.2, 0.5, 0.0) for t in sorted(SMOOTHED)]
CASES += [("sigmoid", 0.1, 0.3, 0.7), ("ipo", 0.0, 1.0, 0.4), ("orpo", 0.0, 0.25, 0.5)]


@pytest.mark.parametrize("loss_type,ls,beta,rpo_alpha", CASES)
def test_matches_scalar_reference(loss_type, ls, beta, rpo_alpha):
    rows = make_data(9, seed=DPO_LOSS_TYPES.index(loss_type) + int(100 * ls))
    cfg = {"loss_type": loss_type, "beta": beta, "label_smoothing": ls, "rpo_alpha": rpo_alpha}
    cfg |= {"simpo_gamma": 0.3, "discopop_tau": 0.07}
    fn = DPOLossFn(cfg)
    init_delta = 0.25
    fn.bco_running_mean = init_delta
    loss, metrics = fn(*to_inputs(rows))

    delta = 0.0
    if loss_type == "bco_pair":  # the running mean is updated with this batch, then used
        rewards = [beta * (r[0] - r[2]) for r in rows] + [beta * (r[1] - r[3]) for r in rows]
        delta = 0.99 * init_delta + 0.01 * sum(rewards) / len(rewards)
        assert fn.bco_running_mean == pytest.approx(delta, abs=1e-12)
        assert fn.state_dict() == {"bco_running_mean": fn.bco_running_mean}
    expected = 0.0
    for pc, pr, rc, rr, nc, nr in rows:
        if loss_type in REF_FREE:
            rc = rr = 0.0
        per = ref_pair_loss(
            loss_type, pc, pr, rc, rr, nc, nr, beta=beta, ls=ls, gamma=0.3, tau=0.07, delta=delta
        )
        expected += per + rpo_alpha * (-pc / nc)
    expected /= len(rows)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-10)
    assert metrics["loss"].item() == pytest.approx(expected, rel=1e-10, abs=1e-10)
    assert ("nll_loss" in metrics) == (rpo_alpha > 0 or loss_type == "orpo")
    if "nll_loss" in metrics:
        want = sum(-r[0] / r[4] for r in rows) / len(rows)
        assert metrics["nll_loss"].item() == pytest.approx(want, rel=1e-10)


def test_reward_metrics():
    rows = make_data(6, seed=3)
    batch, out = to_inputs(rows)
    _, m = DPOLossFn({"beta": 0.2})(batch, out)
    cr = [0.2 * (r[0] - r[2]) for r in rows]
    rr = [0.2 * (r[1] - r[3]) for r in rows]
    assert m["chosen_rewards_mean"].item() == pytest.approx(sum(cr) / 6, rel=1e-12)
    assert m["rejected_rewards_mean"].item() == pytest.approx(sum(rr) / 6, rel=1e-12)
    assert m["reward_gap"].item() == pytest.approx((sum(cr) - sum(rr)) / 6, rel=1e-12)
    assert m["accuracy"].item() == pytest.approx(sum(c > r for c, r in zip(cr, rr)) / 6)
    assert m["logps_chosen"].item() == pytest.approx(sum(r[0] for r in rows) / 6, rel=1e-12)
    assert m["logps_rejected"].item() == pytest.approx(sum(r[1] for r in rows) / 6, rel=1e-12)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in m.values())
    assert not any(v.requires_grad for v in m.values())
    _, m = DPOLossFn({"loss_type": "simpo", "beta": 2.0})(batch, out)
    want = sum(2.0 * r[0] / r[4] for r in rows) / 6
    assert m["chosen_rewards_mean"].item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "simpo", "orpo", "discopop", "robust"])
def test_gradcheck(loss_type):
    rows = make_data(4, seed=11)
    batch, _ = to_inputs(rows)
    cfg = {"loss_type": loss_type, "beta": 0.5, "rpo_alpha": 0.3}
    if loss_type in SMOOTHED:
        cfg["label_smoothing"] = 0.1
    fn = DPOLossFn(cfg)
    pc = torch.tensor([r[0] for r in rows], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([r[1] for r in rows], dtype=torch.float64, requires_grad=True)

    def f(a, b):
        return fn(batch, {"policy_chosen_logps": a, "policy_rejected_logps": b})[0]

    assert torch.autograd.gradcheck(f, (pc, pr))


def _by_hand(logits, ids, mask):
    lp = torch.log_softmax(logits.double(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    w = torch.ones_like(lp) if mask is None else mask[:, 1:].double()
    return (lp * w).sum(-1), w.sum(-1)


def test_logprobs_from_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64) * 4
    labels = torch.randint(0, 7, (2, 5), generator=g)
    want = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    torch.testing.assert_close(logprobs_from_logits(logits, labels), want, rtol=0, atol=1e-12)
    got32 = logprobs_from_logits(logits.float(), labels)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), want, rtol=0, atol=1e-5)
    assert logprobs_from_logits(logits.bfloat16(), labels).dtype == torch.float32


@pytest.mark.parametrize("loss_type", ["sigmoid", "sigmoid_norm", "simpo", "orpo", "bco_pair"])
def test_logits_mode_equals_sequence_mode(loss_type):
    g = torch.Generator().manual_seed(1)
    B, T, V = 3, 8, 13
    logits = {s: torch.randn(B, T, V, generator=g, dtype=torch.float64) for s in ("c", "r")}
    ids = {s: torch.randint(0, V, (B, T), generator=g) for s in ("c", "r")}
    masks = {s: (torch.arange(T) >= torch.tensor([[2], [3], [1]])).long() for s in ("c", "r")}
    masks["r"][0, -2:] = 0  # trailing padding
    ref = {"reference_chosen_logps": -torch.rand(B, dtype=torch.float64) * 20}
    ref["reference_rejected_logps"] = -torch.rand(B, dtype=torch.float64) * 20
    batch = dict(ref, chosen_input_ids=ids["c"], rejected_input_ids=ids["r"])
    batch |= {"chosen_loss_mask": masks["c"], "rejected_loss_mask": masks["r"]}
    cfg = {"loss_type": loss_type, "beta": 0.3, "rpo_alpha": 0.2}
    loss_l, m_l = DPOLossFn(cfg)(
        batch, {"chosen_logits": logits["c"], "rejected_logits": logits["r"]}
    )
    (pc, nc), (pr, nr) = (_by_hand(logits[s], ids[s], masks[s]) for s in ("c", "r"))
    seq = dict(ref, chosen_token_counts=nc, rejected_token_counts=nr)
    loss_s, m_s = DPOLossFn(cfg)(seq, {"policy_chosen_logps": pc, "policy_rejected_logps": pr})
    torch.testing.assert_close(loss_l, loss_s, rtol=1e-12, atol=1e-12)
    assert m_l.keys() == m_s.keys()
    for k in m_l:
        torch.testing.assert_close(m_l[k], m_s[k], rtol=1e-12, atol=1e-12)
    # Without masks every predicted token counts; per-sequence inputs win over logits.
    batch_nomask = dict(ref, chosen_input_ids=ids["c"], rejected_input_ids=ids["r"])
    loss_n, m_n = DPOLossFn({"loss_type": "sigmoid"})(
        batch_nomask, {"chosen_logits": logits["c"], "rejected_logits": logits["r"]}
    )
    pc_all = _by_hand(logits["c"], ids["c"], None)[0]
    assert m_n["logps_chosen"].item() == pytest.approx(pc_all.mean().item(), rel=1e-12)
    both = {"chosen_logits": logits["c"], "rejected_logits": logits["r"]}
    both |= {"policy_chosen_logps": pc * 0 - 1.0, "policy_rejected_logps": pr * 0 - 2.0}
    assert DPOLossFn({})(batch, both)[1]["logps_chosen"].item() == -1.0


def test_seed_example_logits_batch():
    g = torch.Generator().manual_seed(0)
    B, T, V = 4, 128, 1000
    batch = {
        "chosen_input_ids": torch.randint(0, V, (B, T), generator=g),
        "rejected_input_ids": torch.randint(0, V, (B, T), generator=g),
        "reference_chosen_logps": -torch.rand(B, generator=g) * 100 - 800,
        "reference_rejected_logps": -torch.rand(B, generator=g) * 100 - 800,
    }
    chosen_logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    outputs = {
        "chosen_logits": chosen_logits,
        "rejected_logits": torch.randn(B, T, V, generator=g),
    }
    loss, metrics = DPOLossFn({"reference_policy_kl_penalty": 0.1})(batch, outputs)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(chosen_logits.grad).all()
    for key in ("loss", "chosen_rewards_mean", "rejected_rewards_mean", "reward_gap", "accuracy"):
        assert torch.isfinite(metrics[key])
    assert metrics["logps_chosen"].item() < 0


# ---------------------------------------------------------------- config


def test_config_defaults_and_dict_configs():
    cfg = validate_dpo_loss_config({})
    assert cfg == {
        "reference_policy_kl_penalty": 0.1,
        "loss_type": "sigmoid",
        "label_smoothing": 0.0,
        "reference_free": False,
        "rpo_alpha": 0.0,
        "simpo_gamma": 0.5,
        "discopop_tau": 0.05,
        "bco_running_mean_decay": 0.99,
    }
    assert set(cfg) == set(DPOLossConfig.__annotations__)
    fn = DPOLossFn({"reference_policy_kl_penalty": 0.1, "loss_type": "ipo"})
    assert fn.loss_type == "ipo" and fn.reference_policy_kl_penalty == 0.1
    assert fn.requires_reference and fn.reduction == "sequence"
    assert DPOLossFn({"beta": 0.3}).reference_policy_kl_penalty == 0.3
    assert DPOLossFn({"beta": 0.3, "reference_policy_kl_penalty": 0.3}).beta == 0.3
    with pytest.raises(ConfigError, match=r"algorithm\.loss\.beta: .*conflicts"):
        DPOLossFn({"beta": 0.3, "reference_policy_kl_penalty": 0.2})
    built = LossFunctionRegistry.build({"type": "dpo", "loss_type": "hinge", "beta": 1.0})
    assert isinstance(built, DPOLossFn) and built.loss_type == "hinge"


@pytest.mark.parametrize(
    "cfg,message",
    [
        ({"refrence_policy_kl_penalty": 0.1}, "did you mean 'reference_policy_kl_penalty'"),
        (
            {"loss_type": "sigmod"},
            "algorithm.loss.loss_type: unknown loss type 'sigmod' (did you mean 'sigmoid'?)",
        ),
        ({"label_smoothing": 0.7}, "algorithm.loss.label_smoothing: must be in [0, 0.5), got 0.7"),
        ({"beta": 0}, "algorithm.loss.reference_policy_kl_penalty: must be > 0, got 0"),
        ({"beta": "0.1"}, "algorithm.loss.reference_policy_kl_penalty: must be a number"),
        ({"beta": float("nan")}, "must be > 0"),
        ({"rpo_alpha": -1}, "algorithm.loss.rpo_alpha: must be >= 0"),
        ({"discopop_tau": 0.0}, "algorithm.loss.discopop_tau: must be > 0"),
        ({"reference_free": "yes"}, "algorithm.loss.reference_free: must be true or false"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "does not use label smoothing"),
        ({"final_beta": 0.1}, "algorithm.loss.final_beta: unknown key"),
    ],
)
def test_config_errors(cfg, message):
    with pytest.raises(ConfigError) as info:
        DPOLossFn(cfg)
    assert message in str(info.value)


def test_validate_path_and_non_mapping():
    with pytest.raises(ConfigError, match=r"^trainer\.dpo\.label_smoothing"):
        validate_dpo_loss_config({"label_smoothing": 0.5}, "trainer.dpo")
    with pytest.raises(ConfigError, match="must be a mapping"):
        DPOLossFn([("beta", 0.1)])


def test_user_subclass_extra_keys():
    class Annealed(DPOLossFn):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.final_beta = self.cfg.get("final_beta", self.reference_policy_kl_penalty)

    fn = Annealed({"beta": 0.5, "final_beta": 0.1, "loss_type": "ipo"})
    assert fn.final_beta == 0.1 and fn.cfg["final_beta"] == 0.1
    with pytest.raises(ConfigError, match="did you mean 'reference_policy_kl_penalty'"):
        Annealed({"refrence_policy_kl_penalty": 0.1})

    class Declared(DPOLossFn):
        extra_config_keys = ("warmup",)

    assert Declared({"warmup": 3}).cfg["warmup"] == 3
    with pytest.raises(ConfigError, match="unknown key"):
        LossFunctionRegistry.get("ipo")({"warmup": 3})


def test_beta_read_at_call_time():
    batch, out = to_inputs(make_data(4, seed=5))
    fn = DPOLossFn({"beta": 0.1})
    first = fn(batch, out)[0]
    fn.reference_policy_kl_penalty = 0.5
    second = fn(batch, out)[0]
    assert second.item() == pytest.approx(DPOLossFn({"beta": 0.5})(batch, out)[0].item())
    assert first.item() != pytest.approx(second.item())


def test_per_type_registry_names():
    assert set(DPO_LOSS_TYPES) <= set(LossFunctionRegistry.names())
    describe = LossFunctionRegistry.describe()
    assert "Azar" in describe["ipo"] and "Meng" in describe["simpo"]
    ipo = LossFunctionRegistry.get("ipo")({})
    assert isinstance(ipo, DPOLossFn) and ipo.loss_type == "ipo"
    batch, out = to_inputs(make_data(5, seed=2))
    torch.testing.assert_close(ipo(batch, out)[0], DPOLossFn({"loss_type": "ipo"})(batch, out)[0])
    assert LossFunctionRegistry.build({"type": "orpo", "beta": 0.2}).loss_type == "orpo"
    assert LossFunctionRegistry.get("simpo")({"loss_type": "simpo"}).loss_type == "simpo"
    with pytest.raises(ConfigError, match="conflicts"):
        LossFunctionRegistry.get("ipo")({"loss_type": "sigmoid"})


# ---------------------------------------------------------------- inputs


def test_missing_reference_logps_error():
    batch, out = to_inputs(make_data(3, seed=0))
    del batch["reference_chosen_logps"]
    with pytest.raises(DataError) as info:
        DPOLossFn({})(batch, out)
    assert str(info.value) == (
        "batch['reference_chosen_logps'] is missing: loss_type 'sigmoid' compares the policy "
        "to a reference model; provide reference log-probs, or set reference_free: true, or "
        "use a reference-free loss (simpo, orpo)"
    )


def test_missing_token_counts_error():
    batch, out = to_inputs(make_data(3, seed=0))
    del batch["rejected_token_counts"]
    with pytest.raises(
        DataError, match=r"batch\['rejected_token_counts'\] is missing: loss_type 'simpo'"
    ):
        DPOLossFn({"loss_type": "simpo"})(batch, out)
    with pytest.raises(DataError, match="rpo_alpha > 0"):
        DPOLossFn({"rpo_alpha": 1.0})(batch, out)
    with pytest.raises(DataError, match="model_outputs needs"):
        DPOLossFn({})(batch, {})


def test_reference_free():
    batch, out = to_inputs(make_data(4, seed=9))
    counts = {k: batch[k] for k in ("chosen_token_counts", "rejected_token_counts")}
    for loss_type in ("simpo", "orpo"):
        fn = DPOLossFn({"loss_type": loss_type})
        assert not fn.requires_reference
        assert torch.isfinite(fn(counts, out)[0])
    fn = DPOLossFn({"reference_free": True})
    assert not fn.requires_reference
    zeros = {"reference_chosen_logps": torch.zeros(4, dtype=torch.float64)}
    zeros["reference_rejected_logps"] = torch.zeros(4, dtype=torch.float64)
    torch.testing.assert_close(fn({}, out)[0], DPOLossFn({})(zeros, out)[0])


@pytest.mark.parametrize("loss_type", [t for t in DPO_LOSS_TYPES if t != "bco_pair"])
def test_batch_size_invariance(loss_type):
    rows = make_data(8, seed=21)
    fn = DPOLossFn({"loss_type": loss_type, "rpo_alpha": 0.1})
    full = fn(*to_inputs(rows))[0]
    halves = (fn(*to_inputs(rows[:4]))[0] + fn(*to_inputs(rows[4:]))[0]) / 2
    torch.testing.assert_close(full, halves, rtol=1e-12, atol=1e-12)


def test_bco_running_mean_state():
    rows = make_data(6, seed=4)
    batch, out = to_inputs(rows)
    fn = DPOLossFn({"loss_type": "bco_pair", "beta": 0.5, "bco_running_mean_decay": 0.9})
    assert fn.state_dict() == {"bco_running_mean": None}
    fn(batch, out)  # the first call sets the mean to the batch's mean reward
    rewards = [0.5 * (r[0] - r[2]) for r in rows] + [0.5 * (r[1] - r[3]) for r in rows]
    first = sum(rewards) / len(rewards)
    assert fn.bco_running_mean == pytest.approx(first, rel=1e-12)
    with torch.no_grad():  # evaluation does not move the mean
        fn(batch, out)
    assert fn.bco_running_mean == pytest.approx(first, rel=1e-12)
    fn.load_state_dict({"bco_running_mean": 2.0})
    _, metrics = fn(batch, out)
    assert metrics["bco_running_mean"].item() == pytest.approx(0.9 * 2.0 + 0.1 * first)
    assert DPOLossFn({}).state_dict() == {}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_magnitudes_stay_finite(dtype):
    g = torch.Generator().manual_seed(7)
    B = 6
    pc = -1e4 + torch.randn(B, generator=g, dtype=torch.float64) * 500
    pr = -1e4 + torch.randn(B, generator=g, dtype=torch.float64) * 500
    batch = {
        "reference_chosen_logps": (pc + torch.randn(B, generator=g, dtype=torch.float64) * 3e3).to(
            dtype
        ),
        "reference_rejected_logps": (
            pr + torch.randn(B, generator=g, dtype=torch.float64) * 3e3
        ).to(dtype),
        "chosen_token_counts": torch.tensor([1, 1, 10, 100, 1000, 3]),
        "rejected_token_counts": torch.tensor([1, 1000, 1, 10, 100, 2]),
    }
    for loss_type in DPO_LOSS_TYPES:
        a = pc.to(dtype).requires_grad_(True)
        b = pr.to(dtype).requires_grad_(True)
        ls = 0.1 if loss_type in SMOOTHED else 0.0
        fn = DPOLossFn({"loss_type": loss_type, "label_smoothing": ls, "rpo_alpha": 0.1})
        loss, metrics = fn(batch, {"policy_chosen_logps": a, "policy_rejected_logps": b})
        loss.backward()
        assert torch.isfinite(loss), loss_type
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all(), loss_type
        assert all(torch.isfinite(v) for v in metrics.values()), loss_type
    # ORPO with an average log-prob of exactly 0 (probability 1) stays finite too.
    out = {"policy_chosen_logps": torch.zeros(2, dtype=dtype, requires_grad=True)}
    out["policy_rejected_logps"] = torch.full((2,), -3.0, dtype=dtype)
    counts = {"chosen_token_counts": torch.ones(2), "rejected_token_counts": torch.ones(2)}
    loss, _ = DPOLossFn({"loss_type": "orpo"})(counts, out)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(out["policy_chosen_logps"].grad).all()


def test_accuracy_counts_ties_as_half():
    # an untrained policy equals its reference: every implicit reward is 0, accuracy 0.5
    logps = torch.tensor([-3.0, -5.0, -2.0, -7.0], dtype=torch.float64)
    batch = {"reference_chosen_logps": logps.clone(), "reference_rejected_logps": logps.clone()}
    out = {"policy_chosen_logps": logps.clone(), "policy_rejected_logps": logps.clone()}
    _, m = DPOLossFn({})(batch, out)
    assert m["accuracy"].item() == 0.5
    out["policy_chosen_logps"] = logps + torch.tensor([1.0, 0.0, 0.0, -1.0], dtype=torch.float64)
    _, m = DPOLossFn({})(batch, out)
    assert m["accuracy"].item() == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
