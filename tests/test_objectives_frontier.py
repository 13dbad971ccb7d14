"""New objectives of issue 16 (items 7-11): CISPO, SAPO, GSPO-token, entropy-based token
selection, and the REINFORCE++ / leave-one-out-std / whitening advantage estimators. Each
against a plain float64 implementation written here (loops over tokens), plus gradcheck,
and an end-to-end run of each from YAML on the built-in max task."""

import json
import math

import pytest
import torch

from rlfoundry.algorithms.advantages import compute_advantages
from rlfoundry.algorithms.loss_functions import GRPOLossFn, LossFunctionRegistry
from rlfoundry.errors import ConfigError, DataError

B, T = 4, 6


def make_inputs(seed, token_adv=False):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) < 0.8
    mask[:, 0] = True
    mask[3] = False  # an empty response
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2 - 0.05
    old = logp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.4  # ratios far from 1
    adv = torch.randn(B, T, generator=g, dtype=torch.float64) if token_adv else \
        torch.randn(B, generator=g, dtype=torch.float64)
    entropy = torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    return mask, logp, old, adv, entropy


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def ref_policy_loss(kind, mask, logp, old, adv, opts, keep=None):
    """Loss (python float) and d loss / d logp (nested lists) by explicit loops."""
    lo = opts.get("clip_ratio_low", opts.get("clip_ratio", 0.2))
    hi = opts.get("clip_ratio_high", opts.get("clip_ratio", 0.2))
    tau_pos, tau_neg = opts.get("tau_pos", 1.0), opts.get("tau_neg", 1.05)
    rows = range(len(mask))
    valid = [[t for t in range(len(mask[i])) if mask[i][t]] for i in rows]
    n_tok = sum(len(v) for v in valid)
    seq_ratio = [math.exp(sum(logp[i][t] - old[i][t] for t in valid[i]) / max(len(valid[i]), 1))
                 for i in rows]
    terms = [[0.0] * len(mask[0]) for _ in rows]  # per-token loss
    grads = [[0.0] * len(mask[0]) for _ in rows]  # its derivative w.r.t. logp[i][t]
    for i in rows:
        for t in valid[i]:
            a = adv[i][t] if isinstance(adv[i], list) else adv[i]
            if keep is not None and not keep[i][t]:
                continue
            r = math.exp(logp[i][t] - old[i][t])
            if kind == "cispo":
                w = min(max(r, 1 - lo), 1 + hi)
                terms[i][t], grads[i][t] = -w * a * logp[i][t], -w * a
            elif kind == "sapo":
                tau = tau_pos if a > 0 else tau_neg
                s = sigmoid(tau * (r - 1))
                terms[i][t] = -s * 4 / tau * a
                grads[i][t] = -4 * s * (1 - s) * r * a  # d/dlogp of -(4/tau) s(tau(r-1)) a
            else:  # gspo_token and the plain clipped term (grpo)
                r_val = seq_ratio[i] if kind == "gspo_token" else r
                unclipped, clipped = r_val * a, min(max(r_val, 1 - lo), 1 + hi) * a
                terms[i][t] = -min(unclipped, clipped)
                active = unclipped <= clipped  # the unclipped branch is taken: gradient
                grads[i][t] = -r_val * a if active else 0.0
    if kind in ("cispo", "sapo"):  # token mean over the batch's valid tokens
        loss = sum(map(sum, terms)) / n_tok
        grads = [[x / n_tok for x in row] for row in grads]
    else:  # mean over sequences of per-sequence token means
        loss = sum(sum(terms[i]) / max(len(valid[i]), 1) for i in rows) / len(mask)
        grads = [[x / max(len(valid[i]), 1) / len(mask) for x in grads[i]] for i in rows]
    return loss, grads


CASES = [("cispo", {}, False), ("cispo", {"clip_ratio_low": 0.9, "clip_ratio_high": 0.1}, True),
         ("sapo", {}, False), ("sapo", {"tau_pos": 0.5, "tau_neg": 2.0}, True),
         ("gspo_token", {}, False), ("gspo_token", {"clip_ratio": 0.1}, True)]


@pytest.mark.parametrize("kind, opts, token_adv", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_new_policy_losses_match_a_float64_reference(kind, opts, token_adv, seed):
    mask, logp, old, adv, _ = make_inputs(seed, token_adv)
    x = logp.clone().requires_grad_(True)
    fn = LossFunctionRegistry.build({"type": kind, **opts})
    loss, metrics = fn({"response_mask": mask, "advantages": adv, "old_logprobs": old},
                       {"logprobs": x})
    loss.backward()
    expected, grads = ref_policy_loss(kind, mask.tolist(), logp.tolist(), old.tolist(),
                                      adv.tolist(), opts)
    assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-14)
    assert metrics["policy_loss"].item() == pytest.approx(expected, rel=1e-12, abs=1e-14)
    torch.testing.assert_close(x.grad, torch.tensor(grads, dtype=torch.float64),
                               rtol=1e-10, atol=1e-14)


def test_cispo_keeps_the_gradient_of_tokens_the_clip_drops():
    """Ratio 2 with A > 0 is outside PPO's band: grpo sends no gradient, CISPO sends
    -(1 + hi) A (the weight is clipped, not the update)."""
    mask = torch.ones(1, 1, dtype=torch.bool)
    old = torch.tensor([[-1.0 - math.log(2)]], dtype=torch.float64)
    batch = {"response_mask": mask, "advantages": torch.tensor([1.0], dtype=torch.float64),
             "old_logprobs": old}
    grads = {}
    for kind in ("grpo", "cispo"):
        x = torch.tensor([[-1.0]], dtype=torch.float64, requires_grad=True)
        LossFunctionRegistry.build({"type": kind})(batch, {"logprobs": x})[0].backward()
        grads[kind] = x.grad.item()
    assert grads["grpo"] == 0.0 and grads["cispo"] == pytest.approx(-1.2, rel=1e-12)


def test_sapo_gate_gives_the_plain_policy_gradient_on_policy():
    mask, logp, _, adv, _ = make_inputs(4)
    x = logp.clone().requires_grad_(True)
    y = logp.clone().requires_grad_(True)
    batch = {"response_mask": mask, "advantages": adv}  # no old_logprobs: ratio 1
    LossFunctionRegistry.build({"type": "sapo"})(batch, {"logprobs": x})[0].backward()
    LossFunctionRegistry.build({"type": "dapo"})(batch, {"logprobs": y})[0].backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-12, atol=1e-15)


def test_gspo_token_equals_gspo_for_sequence_advantages_inside_the_band():
    mask, logp, _, adv, _ = make_inputs(5)
    old = logp + 0.01  # ratios near 1: no clipping
    grads = []
    for kind in ("gspo", "gspo_token"):
        x = logp.clone().requires_grad_(True)
        loss, _ = LossFunctionRegistry.build({"type": kind})(
            {"response_mask": mask, "advantages": adv, "old_logprobs": old}, {"logprobs": x})
        loss.backward()
        grads.append((loss.item(), x.grad))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-12)
    # gradients differ by design (GSPO: s_i * mean_t grad log pi; GSPO-token: s_i grad log
    # pi_t / n_i), and here these coincide token by token
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind, opts", [("cispo", {}), ("sapo", {}), ("gspo_token", {}),
                                        ("grpo", {"top_entropy_quantile": 0.4})])
def test_gradcheck(kind, opts):
    """Finite differences against the backward pass, with the KL term on. The stop-gradients
    are by design not differentiable through, so the inputs are chosen where the true
    derivative equals the estimator's: CISPO with every ratio outside its band (the clipped
    weight is locally constant) and GSPO-token with per-sequence advantages (where its
    gradient is GSPO's, that of the sequence ratio)."""
    mask, logp, old, adv, entropy = make_inputs(6, token_adv=kind == "sapo")
    if kind == "cispo":
        sign = torch.where(torch.rand(B, T, generator=torch.Generator().manual_seed(1)) < 0.5,
                           1.0, -1.0).to(torch.float64)
        old = logp + sign  # ratios e^-1 and e^1, far outside [0.8, 1.2]
    fn = LossFunctionRegistry.build({"type": kind, "beta": 0.05, "kl_clamp": None, **opts})
    batch = {"response_mask": mask, "advantages": adv, "old_logprobs": old,
             "reference_logprobs": logp + 0.1}

    def f(x):
        return fn(batch, {"logprobs": x, "entropy": entropy})[0]

    assert torch.autograd.gradcheck(f, (logp.clone().requires_grad_(True),))


# ---------------------------------------------------------------- entropy token selection


def ref_quantile(values, q):  # linear interpolation, as numpy's default
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


@pytest.mark.parametrize("q", [0.2, 0.5, 1.0])
def test_top_entropy_quantile_trains_only_the_high_entropy_tokens(q):
    mask, logp, old, adv, entropy = make_inputs(7)
    m, e = mask.tolist(), entropy.tolist()
    valid = [e[i][t] for i in range(B) for t in range(T) if m[i][t]]
    threshold = ref_quantile(valid, 1 - q)
    keep = [[m[i][t] and e[i][t] >= threshold for t in range(T)] for i in range(B)]
    x = logp.clone().requires_grad_(True)
    fn = LossFunctionRegistry.build({"type": "grpo", "top_entropy_quantile": q})
    loss, metrics = fn({"response_mask": mask, "advantages": adv, "old_logprobs": old},
                       {"logprobs": x, "entropy": entropy})
    loss.backward()
    expected, grads = ref_policy_loss("grpo", m, logp.tolist(), old.tolist(), adv.tolist(), {},
                                      keep=keep)
    assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-14)
    torch.testing.assert_close(x.grad, torch.tensor(grads, dtype=torch.float64),
                               rtol=1e-10, atol=1e-14)
    kept = sum(map(sum, keep))
    assert kept == (len(valid) if q == 1.0 else pytest.approx(q * len(valid), abs=1.5))
    if q < 1:
        assert 0 < metrics["entropy_kept_frac"].item() < 1
        assert all(x.grad[i, t] == 0 for i in range(B) for t in range(T) if not keep[i][t])


def test_top_entropy_quantile_needs_the_entropy_and_a_valid_value():
    mask, logp, old, adv, _ = make_inputs(8)
    fn = GRPOLossFn({"top_entropy_quantile": 0.2})
    assert fn.needs_entropy and not GRPOLossFn({}).needs_entropy
    with pytest.raises(DataError, match=r"model_outputs\['entropy'\] is missing: "
                                        "top_entropy_quantile"):
        fn({"response_mask": mask, "advantages": adv}, {"logprobs": logp})
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"algorithm\.loss\.top_entropy_quantile: must be "
                                              r"in \(0, 1\]"):
            GRPOLossFn({"top_entropy_quantile": bad})


def test_new_types_validate_their_options():
    with pytest.raises(ConfigError, match=r"algorithm\.loss\.tau_neg: must be > 0"):
        LossFunctionRegistry.build({"type": "sapo", "tau_neg": 0})
    for kind in ("cispo", "sapo"):
        with pytest.raises(ConfigError, match=rf"dual_clip_c: loss_type '{kind}'"):
            LossFunctionRegistry.build({"type": kind, "dual_clip_c": 3.0})
    with pytest.raises(ConfigError, match="did you mean 'sapo'"):
        GRPOLossFn({"loss_type": "sapoo"})


# ---------------------------------------------------------------- advantage estimators


def ref_stats(v):
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return mean, std


REWARDS = [1.0, 0.0, 0.0, 1.0, 0.5, float("nan"), 2.0, 2.0, 2.0, 3.0, 0.0, 1.0, 0.0, 5.0]
GROUPS = [[0, 1, 2, 3], [4, 5, 6], [7, 8], [9], [10, 11, 12]]  # 13 is in no group


def groups():
    return [torch.tensor(g) for g in GROUPS]


def valid_of(g):
    return [i for i in g if not math.isnan(REWARDS[i])]


@pytest.mark.parametrize("baseline", ["group", "batch"])
def test_reinforce_pp_matches_a_plain_implementation(baseline):
    d = {}
    for g in GROUPS:
        idx = valid_of(g)
        mean = ref_stats([REWARDS[i] for i in idx])[0]
        for i in idx:
            d[i] = REWARDS[i] - mean if baseline == "group" else REWARDS[i]
    mean, std = ref_stats(list(d.values()))
    expected = [(d[i] - mean) / (std + 1e-8) if i in d else 0.0 for i in range(len(REWARDS))]
    adv, _ = compute_advantages("reinforce_pp", torch.tensor(REWARDS, dtype=torch.float64),
                                groups(), baseline=baseline)
    assert adv.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    with pytest.raises(ConfigError, match="algorithm.advantage.baseline"):
        compute_advantages("reinforce_pp", torch.tensor(REWARDS), groups(), baseline="grp")


def test_grpo_loo_std_matches_a_plain_implementation():
    expected = [0.0] * len(REWARDS)
    for g in GROUPS:
        idx = valid_of(g)
        vals = [REWARDS[i] for i in idx]
        if len(set(vals)) < 2:
            continue
        for j, i in enumerate(idx):
            others = vals[:j] + vals[j + 1:]
            mean, std = ref_stats(others)
            if std == 0:
                std = ref_stats(vals)[1]
            expected[i] = (vals[j] - mean) / (std + 1e-4)
    adv, _ = compute_advantages("grpo_loo_std", torch.tensor(REWARDS, dtype=torch.float64),
                                groups())
    assert adv.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # a lone success among failures: bounded (the group's std), not 1 / eps
    assert adv[4].item() == pytest.approx(expected[4]) and abs(adv).max() < 10


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_whitening_across_the_batch(estimator):
    rewards = torch.tensor(REWARDS, dtype=torch.float64)
    raw, _ = compute_advantages(estimator, rewards, groups())
    white, _ = compute_advantages(estimator, rewards, groups(), whiten=True)
    idx = [i for g in GROUPS for i in valid_of(g)]
    mean, std = ref_stats([raw[i].item() for i in idx])
    expected = raw.tolist()
    for i in idx:
        expected[i] = (raw[i].item() - mean) / (std + 1e-8)
    assert white.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert white[13].item() == 0.0 and white[5].item() == 0.0  # ungrouped, NaN reward
    clipped, _ = compute_advantages(estimator, rewards, groups(), whiten=True, clip=0.5)
    assert clipped.abs().max() <= 0.5  # clip comes after whitening


def test_advantage_config_keys_reach_the_estimator():
    from rlfoundry.algorithms.advantages import compute_configured_advantages
    from rlfoundry.config.schema import AdvantageConfig

    rewards = torch.tensor(REWARDS, dtype=torch.float64)
    cfg = AdvantageConfig(estimator="reinforce_pp", baseline="batch", whiten=True)
    got, _ = compute_configured_advantages(cfg, rewards, groups())
    want, _ = compute_advantages("reinforce_pp", rewards, groups(), baseline="batch",
                                 whiten=True)
    assert torch.equal(got, want)
    with pytest.raises(Exception, match="baseline"):
        AdvantageConfig(estimator="reinforce_pp", baseline="grp")


# ---------------------------------------------------------------- end to end, from YAML

RUNS = {
    "cispo": {"loss": {"type": "cispo", "clip_ratio_high": 4.0}},
    "sapo": {"loss": {"type": "sapo"}},
    "gspo_token": {"loss": {"type": "gspo_token", "beta": 0.04}},
    "top_entropy": {"loss": {"type": "dapo", "top_entropy_quantile": 0.2}},
    "reinforce_pp": {"advantage": {"estimator": "reinforce_pp"}},
    "grpo_loo_std_whiten": {"advantage": {"estimator": "grpo_loo_std", "whiten": True}},
}


@pytest.fixture(scope="module")
def max_task_yaml():
    """The shared base config: GRPO on the built-in max task with the tiny model."""
    return {
        "algorithm": {"name": "grpo", "group_size": 4, "rewards": [{"name": "math_accuracy"}],
                      "sampling": {"max_new_tokens": 3}},
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"train": "builtin:max", "train_size": 16, "eval_size": 4},
        "training": {"batch_size": 4, "max_steps": 2, "learning_rate": 1e-3, "seed": 0},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(RUNS))
def test_trains_the_max_task_from_yaml(run, max_task_yaml, tmp_path):
    import yaml

    from rlfoundry.cli import main

    cfg = json.loads(json.dumps(max_task_yaml))
    cfg["algorithm"].update(RUNS[run])
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), f"training.output_dir={tmp_path / 'out'}"]) == 0
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, lines) if "loss" in r]
    assert len(steps) == 2
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in steps)
    if run == "top_entropy":  # the trainer asked the lm-head pass for entropies
        assert all(0 < r["entropy_kept_frac"] < 1 for r in steps)


def test_new_names_are_listed():
    from rlfoundry.algorithms.advantages import ADVANTAGE_ESTIMATORS

    names = set(LossFunctionRegistry.names())
    assert {"cispo", "sapo", "gspo_token"} <= names
    assert {"reinforce_pp", "grpo_loo_std"} <= set(ADVANTAGE_ESTIMATORS.names())
    described = LossFunctionRegistry.describe()
    assert "MiniMax" in described["cispo"] and "Gao" in described["sapo"]
