"""Train/inference mismatch correction (algorithms/mismatch.py, algorithm.rollout_correction):
formulas against a plain float64 reference, the detached-weight gradient, every GRPO-family
loss, config errors, and the trainer's metrics and zero gradients on masked tokens."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from rlfoundry.algorithms.grpo import GRPOTrainer
from rlfoundry.algorithms.loss_functions import GRPOLossFn, LossFunctionRegistry
from rlfoundry.algorithms.mismatch import (
    MismatchTally,
    RolloutCorrection,
    correction_weights,
    mismatch_sums,
)
from rlfoundry.config import load_config
from rlfoundry.errors import ConfigError
from rlfoundry.models import build_model, build_tokenizer
from rlfoundry.rollout import HFSampler
from rlfoundry.training.schedules import loss_components

# ------------------------------------------------------------------ plain float64 reference


def ref_weights(lt, le, mask, mode, level, c, low=None):
    """Weights and affected flags from loops over python floats."""
    low = 1.0 / c if low is None else low
    B, T = len(lt), len(lt[0])
    w = [[0.0] * T for _ in range(B)]
    hit = [[False] * T for _ in range(B)]
    for i in range(B):
        seq = sum(lt[i][t] - le[i][t] for t in range(T) if mask[i][t])
        for t in range(T):
            if not mask[i][t]:
                continue
            ratio = math.exp(seq if level == "sequence" else lt[i][t] - le[i][t])
            if mode == "tis":
                w[i][t], hit[i][t] = min(ratio, c), ratio > c
            else:
                out = ratio > c or ratio < low
                w[i][t], hit[i][t] = (0.0 if out else 1.0), out
    return w, hit


def random_case(seed, B=5, T=7, spread=1.0):
    rng = random.Random(seed)
    lt = [[rng.uniform(-3, 0) for _ in range(T)] for _ in range(B)]
    le = [[x + rng.gauss(0, spread) for x in row] for row in lt]
    mask = [[rng.random() < 0.8 for _ in range(T)] for _ in range(B)]
    mask[0] = [False] * T  # a sequence without response tokens
    le[1] = [x - 0.5 for x in lt[1]]  # the engine far less likely: ratio e^0.5 per token
    le[2] = [x + 0.5 for x in lt[2]]  # far more likely: e^-0.5
    le[3] = list(lt[3])  # in agreement
    return lt, le, mask


def tensors(lt, le, mask):
    lt_t = torch.tensor(lt, dtype=torch.float64)
    le_t = torch.tensor(le, dtype=torch.float64)
    m = torch.tensor(mask)
    le_t = le_t.masked_fill(~m, float("nan"))  # padding may hold anything
    return lt_t, le_t, m


@pytest.mark.parametrize("mode", ["tis", "mask"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weights_match_the_formula(mode, level, seed):
    lt, le, mask = random_case(seed, spread=0.2 if level == "sequence" else 1.0)
    corr = RolloutCorrection(mode, level, 1.5)
    w, hit = correction_weights(*tensors(lt, le, mask), corr)
    ref_w, ref_hit = ref_weights(lt, le, mask, mode, level, 1.5)
    assert torch.allclose(w, torch.tensor(ref_w, dtype=torch.float64), rtol=1e-12, atol=0)
    assert torch.equal(hit, torch.tensor(ref_hit))
    assert not w.requires_grad
    assert 0 < int(hit.sum()) < int(torch.tensor(mask).sum())  # the cases exercise both sides


def test_mask_low_threshold_and_default():
    lt, le, mask = random_case(3)
    for low in (None, 0.8, 0.0):
        w, _ = correction_weights(*tensors(lt, le, mask), RolloutCorrection("mask", "token", 3.0, low))
        ref_w, _ = ref_weights(lt, le, mask, "mask", "token", 3.0, low)
        assert torch.equal(w, torch.tensor(ref_w, dtype=torch.float64))


def test_sequence_level_is_the_product_of_token_ratios():
    lt = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    le = torch.tensor([[-1.2, -2.1, -0.9]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    w, _ = correction_weights(lt, le, mask, RolloutCorrection("tis", "sequence", 10.0))
    product = math.exp(0.2) * math.exp(0.1)  # the masked third token does not count
    assert w.tolist()[0] == pytest.approx([product, product, 0.0], rel=1e-12)
    tok, _ = correction_weights(lt, le, mask, RolloutCorrection("tis", "token", 10.0))
    assert tok.tolist()[0] == pytest.approx([math.exp(0.2), math.exp(0.1), 0.0], rel=1e-12)


def test_truncate_keeps_the_capped_ratio_where_mask_drops_the_token():
    lt = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)
    le = torch.tensor([[-0.1, -1.0, 1.0]], dtype=torch.float64)  # ratios e^.1, e^1, e^-1
    mask = torch.ones(1, 3, dtype=torch.bool)
    tis, tis_hit = correction_weights(lt, le, mask, RolloutCorrection("tis", "token", 2.0))
    msk, msk_hit = correction_weights(lt, le, mask, RolloutCorrection("mask", "token", 2.0))
    assert tis.tolist()[0] == pytest.approx([math.exp(0.1), 2.0, math.exp(-1.0)])
    assert tis_hit.tolist()[0] == [False, True, False]  # tis only caps from above
    assert msk.tolist()[0] == [1.0, 0.0, 0.0]  # e^-1 < 1/2 leaves the band too
    assert msk_hit.tolist()[0] == [False, True, True]


def test_mismatch_metrics_match_the_formula():
    lt, le, mask = random_case(4)
    corr = RolloutCorrection("mask", "token", 2.0)
    lt_t, le_t, m = tensors(lt, le, mask)
    w, hit = correction_weights(lt_t, le_t, m, corr)
    tally = MismatchTally()
    half = 2  # two micro-batches add up to the whole
    for sl in (slice(0, half), slice(half, None)):
        tally.add(mismatch_sums(lt_t[sl], le_t[sl], m[sl], w[sl], hit[sl]))
    got = tally.metrics("mask")
    diffs = [lt[i][t] - le[i][t] for i in range(len(lt)) for t in range(len(lt[0])) if mask[i][t]]
    n = len(diffs)
    assert got["mismatch/abs_logp_diff"] == pytest.approx(sum(abs(d) for d in diffs) / n, rel=1e-12)
    # k3 estimate of KL(engine || trainer) from the engine's samples: r = lt - le
    assert got["mismatch/kl"] == pytest.approx(sum(math.expm1(d) - d for d in diffs) / n, rel=1e-12)
    ref_w, ref_hit = ref_weights(lt, le, mask, "mask", "token", 2.0)
    flat = [(ref_w[i][t], ref_hit[i][t]) for i in range(len(lt)) for t in range(len(lt[0])) if mask[i][t]]
    assert got["mismatch/masked_frac"] == pytest.approx(sum(h for _, h in flat) / n)
    assert got["mismatch/weight_mean"] == pytest.approx(sum(x for x, _ in flat) / n)
    assert "mismatch/truncated_frac" not in got
    assert tally.metrics("none") == {}  # read once; nothing tallied since


# ------------------------------------------------------------------ the loss side


def loss_batch(seed, B=4, T=6, seq_adv=True):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    mask = torch.rand(B, T, generator=g) < 0.85
    mask[:, 0] = True
    batch = {"response_mask": mask,
             "advantages": torch.randn(B, generator=g, dtype=torch.float64) if seq_adv
             else torch.randn(B, T, generator=g, dtype=torch.float64),
             "old_logprobs": logp.detach() + 0.05 * torch.randn(B, T, generator=g, dtype=torch.float64)}
    weights = torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    weights[0, 1] = 0.0
    return logp, batch, weights


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_gradient_is_the_weight_times_the_base_gradient(loss_type):
    logp, batch, weights = loss_batch(0)
    fn = GRPOLossFn({"loss_type": loss_type, "max_completion_length": 6})
    base, _ = fn(batch, {"logprobs": logp})
    (g_base,) = torch.autograd.grad(base, logp)
    w = weights.clone().requires_grad_(True)  # the loss must not differentiate through it
    weighted, metrics = fn({**batch, "rollout_weights": w}, {"logprobs": logp})
    (g_w,) = torch.autograd.grad(weighted, logp)
    m = batch["response_mask"]
    assert torch.allclose(g_w[m], (weights * g_base)[m], rtol=1e-12, atol=1e-15)
    assert g_w[0, 1] == 0 and g_base[0, 1] != 0
    assert weighted.grad_fn is not None and w.grad is None
    ones, _ = fn({**batch, "rollout_weights": torch.ones_like(weights)}, {"logprobs": logp})
    assert ones.item() == pytest.approx(base.item(), rel=1e-15)


def test_zero_weights_leave_the_normaliser_alone():
    """A token with weight 0 still counts: loss = sum(w pg) / n with the same n."""
    logp, batch, _ = loss_batch(1)
    fn = GRPOLossFn({"loss_type": "dapo"})
    keep = torch.zeros_like(logp.detach())
    keep[1, 0] = 1.0  # only one token keeps its term
    _, m_full = fn(batch, {"logprobs": logp})
    loss, _ = fn({**batch, "rollout_weights": keep}, {"logprobs": logp})
    ratio = torch.exp(logp.detach()[1, 0] - batch["old_logprobs"][1, 0])
    a = batch["advantages"][1]
    pg = -torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a)
    assert loss.item() == pytest.approx((pg / batch["response_mask"].sum()).item(), rel=1e-12)


def test_gspo_takes_sequence_weights_and_the_token_mean():
    logp, batch, weights = loss_batch(2)
    fn = GRPOLossFn({"loss_type": "gspo"})
    base, _ = fn(batch, {"logprobs": logp})
    (g_base,) = torch.autograd.grad(base, logp)
    seq_w = torch.tensor([0.5, 0.0, 1.5, 1.0], dtype=torch.float64)
    weighted, _ = fn({**batch, "rollout_weights": seq_w}, {"logprobs": logp})
    (g_w,) = torch.autograd.grad(weighted, logp)
    assert torch.allclose(g_w, seq_w[:, None] * g_base, rtol=1e-12, atol=1e-15)
    m = batch["response_mask"].double()
    token_mean = (weights * m).sum(-1) / m.sum(-1)
    tok, _ = fn({**batch, "rollout_weights": weights}, {"logprobs": logp})
    as_seq, _ = fn({**batch, "rollout_weights": token_mean}, {"logprobs": logp})
    assert tok.item() == pytest.approx(as_seq.item(), rel=1e-12)


def grpo_family():
    """Every registered loss built on GRPOLossFn (directly or as a component)."""
    out = []
    for name in LossFunctionRegistry.names():
        try:
            fn = LossFunctionRegistry.build({"type": name, "max_completion_length": 6})
        except (ConfigError, TypeError):
            continue
        if any(isinstance(c, GRPOLossFn) for c in loss_components(fn)):
            out.append(name)
    return out


def test_every_grpo_family_loss_applies_the_weights():
    names = grpo_family()
    assert {"grpo", "dapo", "gspo", "dr_grpo", "dynamic_grpo", "multi_objective_grpo"} <= set(names)
    logp, batch, _ = loss_batch(3)
    for name in names:
        fn = LossFunctionRegistry.build({"type": name, "max_completion_length": 6})
        outputs = {"logprobs": logp, "response_embeddings": torch.randn(4, 3, dtype=torch.float64)}
        full = {**batch, "num_sequences": 4, "num_tokens": int(batch["response_mask"].sum()),
                "global_num_sequences": 4, "global_num_tokens": int(batch["response_mask"].sum()),
                "loss_mask": torch.nn.functional.pad(batch["response_mask"], (1, 0)),
                "input_ids": torch.zeros(4, 7, dtype=torch.long)}
        base, _ = fn(full, outputs)
        zero, _ = fn({**full, "rollout_weights": torch.zeros_like(logp.detach())}, outputs)
        (g,) = torch.autograd.grad(zero, logp, allow_unused=True)
        (g_base,) = torch.autograd.grad(base, logp, allow_unused=True)
        assert not torch.equal(zero.detach(), base.detach()), name
        assert g_base is not None and (g is None or not torch.allclose(g, g_base)), name


# ------------------------------------------------------------------ config


def test_config_section_and_errors(tmp_path):
    cfg = load_config(config(tmp_path, {"rollout_correction": {
        "mode": "mask", "level": "sequence", "threshold": 3.0, "low_threshold": 0.5}}))
    corr = RolloutCorrection.from_config(cfg.algorithm.rollout_correction)
    assert (corr.mode, corr.level, corr.threshold, corr.low) == ("mask", "sequence", 3.0, 0.5)
    with pytest.raises(ConfigError, match=r"algorithm\.rollout_correction\.low_threshold: only mode 'mask'"):
        GRPOTrainer.validate_config(load_config(config(tmp_path, {"rollout_correction": {
            "mode": "tis", "low_threshold": 0.5}})))
    with pytest.raises(ConfigError, match=r"rollout_correction\.threshold"):
        load_config(config(tmp_path, {"rollout_correction": {"mode": "tis", "threshold": 1.0}}))
    with pytest.raises(ConfigError, match=r"rollout_correction\.mode"):
        load_config(config(tmp_path, {"rollout_correction": {"mode": "truncate"}}))
    with pytest.raises(ConfigError, match="truncated_is_cap and algorithm.rollout_correction"):
        trainer64(config(tmp_path, {"rollout_correction": {"mode": "tis"},
                                    "loss": {"type": "grpo", "truncated_is_cap": 2.0}}))

    class OwnLoss:
        cfg: dict = {}

        def __call__(self, batch, outputs):
            return outputs["logprobs"].sum(), {}

    with pytest.raises(ConfigError, match="rollout_correction.mode: 'mask' weights the policy-gradient"):
        trainer64(config(tmp_path, {"rollout_correction": {"mode": "mask"}}), loss_fn=OwnLoss())


# ------------------------------------------------------------------ the trainer


def digit_fraction(prompts, completions, **columns):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def config(tmp_path, algorithm=None, **training):
    return {
        "algorithm": {"name": "grpo", "group_size": 4, "sampling": {"max_new_tokens": 5},
                      "rewards": [{"name": "tests.test_rollout_correction:digit_fraction"}],
                      **(algorithm or {})},
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"train": "builtin:addition", "train_size": 32, "eval_size": 4},
        "training": {"output_dir": str(tmp_path), "batch_size": 4, "max_steps": 1, "seed": 0,
                     "learning_rate": 1e-3, "lr_scheduler": "constant", **training},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def trainer64(cfg, cls=GRPOTrainer, **kw):
    tok = build_tokenizer()
    return cls(model=build_model("tiny", tok, seed=0).double(), tokenizer=tok, config=cfg, **kw)


class Perturbed(HFSampler):
    """HFSampler whose reported log-probs are off: ``shift`` on every token, plus ``first``
    on the first token of every other sample (an engine that disagrees with the trainer)."""

    shift, first = 0.0, 0.0

    def generate(self, prompts, num_samples, params, generator):
        ro = super().generate(prompts, num_samples, params, generator)
        for i, lps in enumerate(ro.sampling_logprobs):
            ro.sampling_logprobs[i] = [x - self.shift - (self.first if (t == 0 and i % 2 == 0) else 0.0)
                                       for t, x in enumerate(lps)]
        return ro


def records(path):
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "mismatch/kl" in r]


def perturbed_trainer(tmp_path, algorithm, shift=0.0, first=0.0, cls=GRPOTrainer, **training):
    tok = build_tokenizer()
    model = build_model("tiny", tok, seed=0).double()
    engine = Perturbed(model, tok)
    engine.shift, engine.first = shift, first
    return cls(model=model, tokenizer=tok, config=config(tmp_path, algorithm, **training),
               rollout_backend=engine)


def test_hf_backend_shows_only_float32_rounding(tmp_path):
    """The HF sampler softmaxes in float32: a float64 policy's log-probs differ by rounding."""
    t = trainer64(config(tmp_path))
    t.train()
    (rec,) = records(tmp_path)
    assert 0 < rec["mismatch/abs_logp_diff"] < 1e-5 and abs(rec["mismatch/kl"]) < 1e-10
    assert "mismatch/truncated_frac" not in rec and "mismatch/masked_frac" not in rec


def test_perturbed_engine_logprobs_show_in_the_metrics(tmp_path):
    """The second update of a rollout (num_iterations 2) still compares against the
    rollout-time policy (old_logprobs), so both steps see exactly the injected offset."""
    t = perturbed_trainer(tmp_path, {"num_iterations": 2, "rollout_correction": {"mode": "tis"}},
                          shift=0.3, max_steps=2)
    t.train()
    recs = records(tmp_path)
    assert len(recs) == 2
    for rec in recs:  # the offset, plus the sampler's float32 rounding
        assert rec["mismatch/abs_logp_diff"] == pytest.approx(0.3, abs=1e-5)
        assert rec["mismatch/kl"] == pytest.approx(math.expm1(0.3) - 0.3, abs=1e-5)
        assert rec["mismatch/truncated_frac"] == 0.0  # e^0.3 < 2
        assert rec["mismatch/weight_mean"] == pytest.approx(math.exp(0.3), abs=1e-5)
    keys = ("mismatch/abs_logp_diff", "mismatch/kl", "mismatch/weight_mean")
    assert [recs[0][k] for k in keys] == [recs[1][k] for k in keys]  # not the updated policy
    assert recs[0]["loss"] != recs[1]["loss"]  # which did change


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_masked_tokens_get_zero_gradient(tmp_path, level):
    seen = []

    class Spy(GRPOTrainer):
        def compute_loss(self, batch, model_outputs):
            loss, metrics = super().compute_loss(batch, model_outputs)
            (grad,) = torch.autograd.grad(loss, model_outputs["logprobs"], retain_graph=True)
            seen.append((grad.detach(), batch["rollout_weights"], batch["response_mask"], batch["advantages"]))
            return loss, metrics

    algo = {"rollout_correction": {"mode": "mask", "level": level, "threshold": 2.0}}
    t = perturbed_trainer(tmp_path, algo, first=1.0, cls=Spy)  # e^1 > 2 on those tokens
    t.train()
    (grad, weights, mask, adv) = seen[0]
    dropped = mask & (weights == 0)
    perturbed = len(mask) // 2  # every other sample (rows are reordered by length)
    assert int(dropped.any(-1).sum()) == perturbed
    if level == "token":  # one token of each of those samples
        assert int(dropped.sum()) == perturbed
    else:  # all tokens of each of those samples
        assert torch.equal(dropped.sum(-1)[dropped.any(-1)], mask.sum(-1)[dropped.any(-1)])
    assert torch.all(grad[dropped] == 0)
    live = mask & (weights == 1) & (adv[:, None] != 0)
    assert live.any() and (grad[live] != 0).all()
    (rec,) = records(tmp_path)
    assert rec["mismatch/masked_frac"] == pytest.approx(int(dropped.sum()) / int(mask.sum()))


def test_cli_override_turns_the_correction_on(tmp_path, monkeypatch):
    from pathlib import Path

    from rlfoundry.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(["train", "examples/configs/grpo_max.yaml", f"training.output_dir={tmp_path}",
                 "model.name_or_path=builtin:tiny", "training.max_steps=1", "training.batch_size=2",
                 "data.train_size=8", "data.eval_size=2", "logging.progress_bar=false",
                 "algorithm.rollout_correction.mode=tis",
                 "algorithm.rollout_correction.level=sequence"]) == 0
    (rec,) = records(tmp_path)
    assert rec["mismatch/truncated_frac"] == 0.0 and rec["mismatch/abs_logp_diff"] < 1e-5
    assert rec["mismatch/weight_mean"] == pytest.approx(1.0, abs=1e-4)
