"""GRPO-family losses against a plain float64 reference written from the formulas."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rlfoundry.algorithms.loss_functions import (
    GRPO_LOSS_TYPES,
    GRPOLossFn,
    LossFunctionRegistry,
)
from rlfoundry.algorithms.loss_functions.grpo import validate_grpo_loss_config
from rlfoundry.errors import ConfigError, DataError

L_MAX = 8  # max_completion_length for dr_grpo
TOKEN_TYPES = {"bnpo", "dapo", "cispo", "sapo"}
# the types whose policy term is the clipped surrogate ref_loss implements; gspo_token, cispo
# and sapo have their own float64 references in tests/test_objectives_frontier.py
CLIPPED_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo", "gspo")

# ---------------------------------------------------------------- scalar reference (math)


def ref_loss(loss_type: str, d: dict, o: dict) -> dict[str, float]:
    """Loss and metrics from explicit loops over sequences and tokens (python floats)."""
    lo = o.get("clip_ratio_low", o.get("clip_ratio", 0.2))
    hi = o.get("clip_ratio_high", o.get("clip_ratio", 0.2))
    beta = o.get("beta", 0.0)
    est, clamp = o.get("kl_estimator", "k3"), o.get("kl_clamp", 10.0)
    c, cap = o.get("dual_clip_c"), o.get("truncated_is_cap")
    ent_coef, v_coef = o.get("entropy_coef", 0.0), o.get("value_loss_coef", 0.0)
    B, T = len(d["logp"]), len(d["logp"][0])
    old = d.get("old") or d["logp"]

    def policy_term(ratio: float, a: float, log_w: float) -> tuple[float, dict[str, float]]:
        clipped = min(max(ratio, 1 - lo), 1 + hi)
        pg = -min(ratio * a, clipped * a)
        st = {
            "clip_frac_low": float(ratio < 1 - lo and a < 0),
            "clip_frac_high": float(ratio > 1 + hi and a > 0),
            "ratio_mean": ratio,
        }
        if c is not None:
            st["dual_clip_frac"] = float(a < 0 and pg > c * -a)
            if a < 0:
                pg = min(pg, c * -a)
        if cap is not None:
            w = min(math.exp(log_w), cap)
            pg *= w
            st["truncated_is_weight_mean"] = w
        return pg, st

    # per-sequence sums of each term, and counts
    names = ["policy_loss", "kl", "entropy", "value_loss"]
    frac_names = ["clip_frac_low", "clip_frac_high", "ratio_mean", "dual_clip_frac"]
    frac_names.append("truncated_is_weight_mean")
    seq_sums, seq_fracs, counts = [], [], []
    for i in range(B):
        valid = [t for t in range(T) if d["mask"][i][t]]
        if o.get("mask_truncated_completions") and d["truncated"][i]:
            valid = []
        n = len(valid)
        s = dict.fromkeys(names, 0.0)
        f = dict.fromkeys(frac_names, 0.0)
        if loss_type == "gspo" and n:
            lr = sum(d["logp"][i][t] - old[i][t] for t in valid) / n
            lw = sum(old[i][t] - d["samp"][i][t] for t in valid) / n if cap else 0.0
            pg, st = policy_term(math.exp(lr), d["adv"][i], lw)
            s["policy_loss"] = pg * n  # so that the token mean gives pg
            for k, v in st.items():
                f[k] = v * n
        for t in valid:
            if loss_type != "gspo":
                a = d["adv"][i][t] if isinstance(d["adv"][i], list) else d["adv"][i]
                lw = old[i][t] - d["samp"][i][t] if cap else 0.0
                pg, st = policy_term(math.exp(d["logp"][i][t] - old[i][t]), a, lw)
                s["policy_loss"] += pg
                for k, v in st.items():
                    f[k] += v
            if "ref" in d:
                r = d["ref"][i][t] - d["logp"][i][t]
                if clamp is not None:
                    r = min(max(r, -clamp), clamp)
                s["kl"] += {"k1": -r, "k2": r * r / 2, "k3": math.exp(r) - r - 1}[est]
            if "ent" in d:
                s["entropy"] += d["ent"][i][t]
            if v_coef:
                v = d["values"][i][t] if isinstance(d["values"][i], list) else d["values"][i]
                s["value_loss"] += 0.5 * (v - d["returns"][i]) ** 2
        seq_sums.append(s)
        seq_fracs.append(f)
        counts.append(n)

    def reduce(per_seq: list[float], how: str) -> float:
        if how == "token":
            return sum(per_seq) / max(sum(counts), 1)
        if how == "dr_grpo":
            return sum(per_seq) / (B * L_MAX)
        return sum(x / n if n else 0.0 for x, n in zip(per_seq, counts)) / B

    how = "token" if loss_type in TOKEN_TYPES else loss_type
    out = {k: reduce([s[k] for s in seq_sums], how) for k in names}
    frac_how = "token" if loss_type in TOKEN_TYPES else "sequence"
    out.update({k: reduce([f[k] for f in seq_fracs], frac_how) for k in frac_names})
    out["loss"] = (
        out["policy_loss"]
        + beta * out["kl"]
        - ent_coef * out["entropy"]
        + v_coef * out["value_loss"]
    )
    if "ref" not in d:
        del out["kl"]
    if "ent" not in d:
        del out["entropy"]
    if not v_coef:
        del out["value_loss"]
    if c is None:
        del out["dual_clip_frac"]
    if cap is None:
        del out["truncated_is_weight_mean"]
    return out


# ---------------------------------------------------------------- data


def make_data(seed: int, *, B: int = 6, T: int = 7, token_adv: bool = False, values: str = ""):
    """Random float64 inputs as python lists; sequence 1 has no response token."""
    rng = random.Random(seed)
    g = lambda s=1.0: rng.gauss(0.0, s)  # noqa: E731
    lengths = [rng.randint(1, T) for _ in range(B)]
    lengths[1] = 0
    mask = [[int(t < n) for t in range(T)] for n in lengths]
    logp = [[-abs(g()) - 0.05 for _ in range(T)] for _ in range(B)]
    offsets = [g(0.4) for _ in range(B)]  # sequence-level drift so gspo clips too
    old = [[logp[i][t] - offsets[i] + g(0.35) for t in range(T)] for i in range(B)]
    d = {
        "mask": mask,
        "logp": logp,
        "old": old,
        "ref": [[x + g(0.8) for x in row] for row in logp],
        "ent": [[abs(g()) for _ in range(T)] for _ in range(B)],
        "samp": [[x + g(0.5) for x in row] for row in old],
        "truncated": [i % 3 == 0 for i in range(B)],
        "adv": [[g() for _ in range(T)] for _ in range(B)]
        if token_adv
        else [g() for _ in range(B)],
        "returns": [g() for _ in range(B)],
    }
    if values == "seq":
        d["values"] = [g() for _ in range(B)]
    elif values == "token":
        d["values"] = [[g() for _ in range(T)] for _ in range(B)]
    return d


def to_inputs(d: dict, keys=("old", "ref", "ent", "samp", "values")):
    """(batch, model_outputs) with NaN at masked positions, which the loss must ignore."""
    mask = torch.tensor(d["mask"], dtype=torch.bool)

    def t(x, masked=True):
        x = torch.tensor(x, dtype=torch.float64)
        return torch.where(mask, x, float("nan")) if masked and x.dim() == 2 else x

    batch = {
        "response_mask": mask.long(),
        "advantages": t(d["adv"]),
        "truncated": torch.tensor(d["truncated"]),
        "returns": t(d["returns"]),
    }
    for key, name in (("old", "old_logprobs"), ("ref", "reference_logprobs")):
        if key in d and key in keys:
            batch[name] = t(d[key])
    if "samp" in keys:
        batch["sampling_logprobs"] = t(d["samp"])
    logp = t(d["logp"]).requires_grad_(True)
    outputs = {"logprobs": logp}
    if "ent" in keys:
        outputs["entropy"] = t(d["ent"])
    if "values" in d and "values" in keys:
        outputs["values"] = t(d["values"]).requires_grad_(True)
    return batch, outputs


def make_loss(loss_type: str, **opts) -> GRPOLossFn:
    cfg = {"loss_type": loss_type, **opts}
    if loss_type == "dr_grpo":
        cfg["max_completion_length"] = L_MAX
    return GRPOLossFn(cfg)


# ---------------------------------------------------------------- value tests

SCENARIOS: dict[str, dict] = {
    "plain": {},
    "clip_higher": {"clip_ratio_low": 0.1, "clip_ratio_high": 0.35},
    "dual_clip": {"dual_clip_c": 1.3},
    "kl_k1": {"beta": 0.1, "kl_estimator": "k1", "kl_clamp": None},
    "kl_k2": {"beta": 0.1, "kl_estimator": "k2", "kl_clamp": None},
    "kl_k3": {"beta": 0.1, "kl_estimator": "k3", "kl_clamp": None},
    "kl_k1_clamped": {"beta": 0.2, "kl_estimator": "k1", "kl_clamp": 0.5},
    "kl_k2_clamped": {"beta": 0.2, "kl_estimator": "k2", "kl_clamp": 0.5},
    "kl_k3_clamped": {"beta": 0.2, "kl_estimator": "k3", "kl_clamp": 0.5},
    "entropy": {"entropy_coef": 0.01},
    "truncated_is": {"truncated_is_cap": 1.4},
    "mask_truncated": {"mask_truncated_completions": True},
    "value_seq": {"value_loss_coef": 0.5},
    "value_token": {"value_loss_coef": 0.5},
    "everything": {
        "beta": 0.05,
        "clip_ratio_low": 0.15,
        "clip_ratio_high": 0.28,
        "dual_clip_c": 2.0,
        "entropy_coef": 0.02,
        "truncated_is_cap": 2.0,
        "mask_truncated_completions": True,
        "value_loss_coef": 0.25,
    },
}


SEED = 12  # data on which every branch is active (see test_scenarios_exercise_their_branches)
CASES = [
    (loss_type, scenario, token_adv)
    for loss_type in CLIPPED_TYPES
    for scenario in SCENARIOS
    for token_adv in ([False] if loss_type == "gspo" else [False, True])  # gspo: per sequence
]


@pytest.mark.parametrize("loss_type, scenario, token_adv", CASES)
def test_matches_reference(loss_type, scenario, token_adv):
    opts = SCENARIOS[scenario]
    values = {"value_seq": "seq", "value_token": "token"}.get(scenario, "seq")
    d = make_data(SEED, token_adv=token_adv, values=values)
    keys = ["old", "samp", "values"]
    if "beta" in opts:
        keys.append("ref")
    if "entropy_coef" in opts:
        keys.append("ent")
    batch, outputs = to_inputs(d, keys)
    sub = {k: d[k] for k in d if k not in {"old", "ref", "ent", "samp", "values"} or k in keys}
    expected = ref_loss(loss_type, sub, opts)
    loss, metrics = make_loss(loss_type, **opts)(batch, outputs)
    assert set(metrics) == set(expected)
    assert loss.item() == pytest.approx(expected["loss"], abs=1e-10, rel=1e-10)
    for key, value in expected.items():
        assert metrics[key].dim() == 0 and not metrics[key].requires_grad
        assert metrics[key].item() == pytest.approx(value, abs=1e-10, rel=1e-10), key
    loss.backward()
    assert torch.isfinite(outputs["logprobs"].grad).all()


def test_scenarios_exercise_their_branches():
    """The random data really clips on both sides, hits the dual clip, the KL clamp and the IS cap."""
    d = make_data(SEED)
    batch, outputs = to_inputs(d)
    for loss_type in ("grpo", "gspo"):
        _, m = make_loss(loss_type, dual_clip_c=1.3)(batch, outputs)
        assert m["clip_frac_low"] > 0 and m["clip_frac_high"] > 0, loss_type
        assert m["dual_clip_frac"] > 0, loss_type
    samp_w = [math.exp(o - s) for ro, rs in zip(d["old"], d["samp"]) for o, s in zip(ro, rs)]
    assert max(samp_w) > 1.4
    r = [abs(a - b) for ra, rb in zip(d["ref"], d["logp"]) for a, b in zip(ra, rb)]
    assert max(r) > 0.5 > min(r)


def test_kl_metric_without_penalty_and_reference_requirement():
    d = make_data(3)
    batch, outputs = to_inputs(d)
    fn = make_loss("grpo")
    assert fn.requires_reference is False
    loss, m = fn(batch, outputs)
    assert "kl" in m  # reported, not added
    assert loss.item() == pytest.approx(m["policy_loss"].item(), abs=1e-12)
    fn = GRPOLossFn({"beta": 0.1})
    assert fn.requires_reference is True and fn.reference_policy_kl_penalty == 0.1
    del batch["reference_logprobs"]
    with pytest.raises(DataError, match=r"reference_logprobs.*missing"):
        fn(batch, outputs)


# ---------------------------------------------------------------- gradients


def _grad_inputs(seed: int, loss_type: str):
    """float64 inputs whose ratios (per token, or per sequence for gspo) sit clearly inside or
    outside [0.8, 1.2], never on a clip boundary."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    B, T = 4, 5
    mask = torch.tensor([[t < n for t in range(T)] for n in (5, 3, 4, 2)])
    logp = torch.tensor([[-0.3 - rng.random() for _ in range(T)] for _ in range(B)], dtype=f64)
    if loss_type == "gspo":
        # per-sequence log-ratio = offset exactly (the noise has zero mean over valid tokens)
        noise = torch.where(mask, torch.randn(B, T, generator=gen, dtype=f64) * 0.2, 0.0)
        noise = (noise - noise.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)) * mask
        old = logp - torch.tensor([0.5, -0.5, 0.08, 0.6], dtype=f64)[:, None] - noise
        adv = torch.tensor([1.0, -0.7, 0.4, -1.2], dtype=f64)
    else:
        choices = [-0.6, -0.4, -0.1, 0.05, 0.1, 0.3, 0.5]
        log_ratio = [[rng.choice(choices) for _ in range(T)] for _ in range(B)]
        old = logp - torch.tensor(log_ratio, dtype=f64)
        adv = torch.tensor([0.9, -1.1, 0.5, -0.3], dtype=f64)
    batch = {
        "response_mask": mask,
        "advantages": adv,
        "old_logprobs": old,
        "reference_logprobs": logp + torch.randn(B, T, generator=gen, dtype=f64),
    }
    return batch, logp


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "gspo"])
def test_gradcheck(loss_type):
    batch, logp = _grad_inputs(5, loss_type)
    fn = GRPOLossFn({"loss_type": loss_type, "beta": 0.05, "kl_clamp": None})
    _, m = fn(batch, {"logprobs": logp})
    assert m["clip_frac_low"] > 0 and m["clip_frac_high"] > 0  # clipping is active
    x = logp.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda lp: fn(batch, {"logprobs": lp})[0], (x,))
    # clipped tokens/sequences get no policy gradient
    plain = GRPOLossFn({"loss_type": loss_type})
    plain(batch, {"logprobs": x})[0].backward()
    g = x.grad[batch["response_mask"]]
    assert (g == 0).any() and (g != 0).any()


def test_missing_old_logprobs_is_ratio_one():
    d = make_data(8)
    for loss_type in GRPO_LOSS_TYPES:
        fn = make_loss(loss_type, beta=0.1)
        b1, o1 = to_inputs(d, keys=("ref",))
        b2, o2 = to_inputs(d, keys=("ref",))
        b2["old_logprobs"] = o2["logprobs"].detach().clone()
        l1, m1 = fn(b1, o1)
        l2, m2 = fn(b2, o2)
        l1.backward()
        l2.backward()
        assert l1.item() == pytest.approx(l2.item(), abs=1e-12)
        assert m1["ratio_mean"].item() == pytest.approx(m2["ratio_mean"].item(), abs=1e-12)
        torch.testing.assert_close(o1["logprobs"].grad, o2["logprobs"].grad, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- splitting


def _take(x, idx):
    return x[idx] if isinstance(x, torch.Tensor) else x


@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
def test_split_exactness(loss_type):
    d = make_data(21, B=7, values="token")
    batch, outputs = to_inputs(d)
    outputs = {k: v.detach() for k, v in outputs.items()}
    fn = make_loss(
        loss_type,
        beta=0.1,
        entropy_coef=0.01,
        dual_clip_c=None if loss_type in ("cispo", "sapo") else 1.5,
        truncated_is_cap=1.5,
        mask_truncated_completions=True,
        value_loss_coef=0.3,
    )
    full, full_m = fn(batch, outputs)
    token = fn.reduction == "token"
    assert token == (loss_type in TOKEN_TYPES)
    total = fn.valid_mask(batch).sum() if token else 7
    combined, combined_m = 0.0, dict.fromkeys(full_m, 0.0)
    for part in ([0, 1], [2, 3, 4, 5], [6]):
        idx = torch.tensor(part)
        pb = {k: _take(v, idx) for k, v in batch.items()}
        po = {k: _take(v, idx) for k, v in outputs.items()}
        loss, m = fn(pb, po)
        weight = (fn.valid_mask(pb).sum() if token else len(part)) / total
        combined = combined + weight * loss
        for k in combined_m:
            combined_m[k] = combined_m[k] + weight * m[k]
    assert float(combined) == pytest.approx(full.item(), abs=1e-12)
    for k, v in full_m.items():
        assert float(combined_m[k]) == pytest.approx(v.item(), abs=1e-12), k


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
def test_zero_length_response_no_nan(loss_type):
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    logp = torch.tensor([[-0.5, -1.0, float("-inf")], [float("nan")] * 3], dtype=torch.float64)
    logp.requires_grad_(True)
    batch = {
        "response_mask": mask,
        "advantages": torch.tensor([1.0, -1.0], dtype=torch.float64),
        "old_logprobs": torch.tensor([[-0.6, -0.9, 0.0], [float("nan")] * 3], dtype=torch.float64),
        "reference_logprobs": torch.full((2, 3), float("nan"), dtype=torch.float64),
    }
    batch["reference_logprobs"][0, :2] = torch.tensor([-0.4, -1.2])
    loss, metrics = make_loss(loss_type, beta=0.1)(batch, {"logprobs": logp})
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert all(torch.isfinite(v) for v in metrics.values())
    assert (logp.grad[1] == 0).all()
    # only the empty sequence: loss 0 (it still counts as a sequence for grpo)
    alone, _ = make_loss(loss_type, beta=0.1)(
        {k: v[1:] for k, v in batch.items()}, {"logprobs": logp.detach()[1:]}
    )
    assert alone.item() == 0.0
    if loss_type == "grpo":
        first, _ = make_loss(loss_type, beta=0.1)(
            {k: v[:1] for k, v in batch.items()}, {"logprobs": logp.detach()[:1]}
        )
        assert loss.item() == pytest.approx(first.item() / 2, abs=1e-12)


def test_missing_inputs_name_the_key():
    d = make_data(4, token_adv=True)
    batch, outputs = to_inputs(d)
    with pytest.raises(DataError, match=r"model_outputs\['entropy'\]"):
        GRPOLossFn({"entropy_coef": 0.1})(batch, {"logprobs": outputs["logprobs"]})
    with pytest.raises(DataError, match=r"model_outputs\['values'\]"):
        GRPOLossFn({"value_loss_coef": 0.1})(batch, {"logprobs": outputs["logprobs"]})
    with pytest.raises(DataError, match=r"batch\['returns'\]"):
        b = {k: v for k, v in batch.items() if k != "returns"}
        GRPOLossFn({"value_loss_coef": 0.1})(b, outputs)
    with pytest.raises(DataError, match=r"sampling_logprobs"):
        b = {k: v for k, v in batch.items() if k != "sampling_logprobs"}
        GRPOLossFn({"truncated_is_cap": 2.0})(b, outputs)
    with pytest.raises(DataError, match=r"truncated"):
        b = {k: v for k, v in batch.items() if k != "truncated"}
        GRPOLossFn({"mask_truncated_completions": True})(b, outputs)
    with pytest.raises(DataError, match=r"per-sequence advantages"):
        GRPOLossFn({"loss_type": "gspo"})(batch, outputs)


# ---------------------------------------------------------------- config and registry


@pytest.mark.parametrize(
    "cfg, pattern",
    [
        (
            {"clip_ratio_hihg": 0.3},
            r"algorithm\.loss\.clip_ratio_hihg: unknown key \(did you mean 'clip_ratio_high'\?\)",
        ),
        ({"loss_type": "dapoo"}, r"algorithm\.loss\.loss_type: .*did you mean 'dapo'"),
        ({"kl_estimator": "k5"}, r"algorithm\.loss\.kl_estimator: .*choose one of: k1, k2, k3"),
        ({"loss_type": "dr_grpo"}, r"algorithm\.loss\.max_completion_length: required"),
        ({"max_completion_length": 0}, r"max_completion_length: must be a positive integer"),
        ({"beta": -0.1}, r"algorithm\.loss\.reference_policy_kl_penalty: must be >= 0"),
        ({"beta": 0.1, "reference_policy_kl_penalty": 0.2}, r"algorithm\.loss\.beta: .*conflicts"),
        ({"dual_clip_c": 1.0}, r"dual_clip_c: must be > 1"),
        ({"truncated_is_cap": 0.5}, r"truncated_is_cap: must be > 1"),
        ({"clip_ratio_low": 1.0}, r"clip_ratio_low: must be in \[0, 1\)"),
        ({"value_loss_coef": "x"}, r"value_loss_coef: must be a number"),
        ({"mask_truncated_completions": 1}, r"mask_truncated_completions: must be true or false"),
        ({"kl_clamp": float("nan")}, r"kl_clamp: must be > 0"),
    ],
)
def test_config_errors(cfg, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_grpo_loss_config(cfg)
    with pytest.raises(ConfigError, match=pattern):
        GRPOLossFn(cfg)


def test_config_defaults_and_alias():
    cfg = validate_grpo_loss_config({"type": "grpo", "beta": 0.04, "clip_ratio": 0.3})
    assert cfg["reference_policy_kl_penalty"] == 0.04 and "beta" not in cfg and "type" not in cfg
    assert cfg["clip_ratio_low"] == cfg["clip_ratio_high"] == 0.3
    assert cfg["kl_estimator"] == "k3" and cfg["kl_clamp"] == 10.0 and cfg["loss_type"] == "grpo"
    assert validate_grpo_loss_config({"kl_clamp": None})["kl_clamp"] is None
    assert validate_grpo_loss_config(None, path="x")["value_loss_coef"] == 0.0


def test_registry_types_and_reduction():
    names = set(LossFunctionRegistry.names())
    assert set(GRPO_LOSS_TYPES) <= names
    assert LossFunctionRegistry.get("grpo") is GRPOLossFn
    for loss_type in GRPO_LOSS_TYPES:
        cfg = {"type": loss_type}
        if loss_type == "dr_grpo":
            cfg["max_completion_length"] = 16
        fn = LossFunctionRegistry.build(cfg)
        assert isinstance(fn, GRPOLossFn) and fn.loss_type == loss_type
        assert fn.reduction == ("token" if loss_type in TOKEN_TYPES else "sequence")
        assert LossFunctionRegistry.describe()[loss_type]
    with pytest.raises(ConfigError, match="conflicts with the loss registered as 'dapo'"):
        LossFunctionRegistry.build({"type": "dapo", "loss_type": "grpo"})
    with pytest.raises(ConfigError, match="unknown key"):
        LossFunctionRegistry.build({"type": "gspo", "similarity_threshold": 0.5})


def test_subclass_keys_and_call_time_attributes():
    class MyLoss(GRPOLossFn):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.threshold = self.cfg.get("similarity_threshold", 0.8)

    assert MyLoss({"similarity_threshold": 0.5}).threshold == 0.5
    with pytest.raises(ConfigError, match="did you mean 'entropy_coef'"):
        MyLoss({"entropy_coeff": 0.1})

    d = make_data(9)
    batch, outputs = to_inputs(d)
    fn = GRPOLossFn({})
    fn.clip_ratio_high = 0.5
    fn.beta = 0.2
    fn.entropy_coef = 0.03
    opts = {"clip_ratio_high": 0.5, "beta": 0.2, "entropy_coef": 0.03}
    expected = ref_loss("grpo", d, opts)
    assert fn(batch, outputs)[0].item() == pytest.approx(expected["loss"], abs=1e-10)
