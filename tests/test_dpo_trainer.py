import json
import math

import pytest
import torch

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.algorithms.loss_functions import DPOLossFn
from rlfoundry.errors import NonFiniteError
from rlfoundry.models import build_model, build_tokenizer
from tests.crashing import train_until_crash


def run_config(tmp_path, **training):
    return {
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"train": "builtin:sort_preferences", "train_size": 32, "eval_size": 16, "max_length": 48},
        "training": {"output_dir": str(tmp_path), "batch_size": 8, "max_steps": 2,
                     "learning_rate": 1e-3, "seed": 0, **training},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def float64_trainer(cfg, cls=DPOTrainer, **kw):
    tok = build_tokenizer()
    return cls(model=build_model("tiny", tok, seed=0).double(), tokenizer=tok, config=cfg, **kw)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def read_metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_gradient_accumulation_is_exact(tmp_path):
    full = float64_trainer(run_config(tmp_path / "a"))
    m_full = full.train()
    acc = float64_trainer(run_config(tmp_path / "b", micro_batch_size=2))
    m_acc = acc.train()
    # grad_norm is scale sensitive (Adam updates are not), so it proves the normalisation
    assert m_acc["grad_norm"] == pytest.approx(m_full["grad_norm"], rel=1e-9)
    assert m_acc["loss"] == pytest.approx(m_full["loss"], rel=1e-9)
    # Adam amplifies float64 rounding noise on near-zero gradients to ~1e-9
    assert torch.allclose(params(full.model), params(acc.model), rtol=0, atol=1e-8)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_pairs_give_the_log_probs_and_gradients_of_separate_rows(attention):
    from rlfoundry.algorithms.reference import pair_logps
    from rlfoundry.data import collate_preference, collate_preference_packed
    from rlfoundry.data.preference import TokenizedPair

    tok = build_tokenizer()
    model = build_model("tiny", tok, seed=1).double()
    model.config._attn_implementation = attention
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(10, 200, (n,), generator=g).tolist()

    shapes = [(5, 3, 7), (0, 4, 2), (9, 6, 6), (1, 1, 1)]  # incl. an empty prompt
    pairs = [TokenizedPair(ids(p), ids(c), ids(r), {}, "t", i) for i, (p, c, r) in enumerate(shapes)]
    results = []
    for collate in (collate_preference, collate_preference_packed):
        model.zero_grad()
        logps = pair_logps(model, collate(pairs, tok.pad_token_id))
        (logps * torch.arange(1.0, 9.0, dtype=torch.float64)).sum().backward()
        results.append((logps.detach(), params_grad(model)))
    (a, ga), (b, gb) = results
    # the model's RMSNorm computes in float32, so the layouts agree to float32 rounding
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)
    assert torch.allclose(ga, gb, rtol=1e-5, atol=1e-5 * float(ga.abs().max()))


def params_grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_share_prompt_trains_like_separate_rows(tmp_path):
    runs = []
    for share in (True, False):
        cfg = run_config(tmp_path / str(share), micro_batch_size=4)
        cfg["data"]["share_prompt"] = share
        trainer = float64_trainer(cfg)
        assert trainer.packed is share
        runs.append((trainer.train(), params(trainer.model)))
    (m_packed, p_packed), (m_rows, p_rows) = runs
    for key in ("loss", "grad_norm", "logps_chosen", "reward_gap"):
        assert m_packed[key] == pytest.approx(m_rows[key], rel=1e-5, abs=1e-7)
    # Adam turns float32-level rounding noise on near-zero gradients into lr-sized steps on a
    # few weights; all others agree
    assert float(((p_packed - p_rows).abs() > 1e-6).double().mean()) < 0.01


def test_steps_order_pairs_by_length_in_micro_batch_blocks(tmp_path):
    trainer = float64_trainer(run_config(tmp_path, micro_batch_size=3, batch_size=9))
    trainer.train()  # sets up data, sampler and optimizer
    from rlfoundry.training.sampler import EpochSampler

    trainer.sampler = EpochSampler(len(trainer.train_pairs), 9, seed=1)
    expected = EpochSampler(len(trainer.train_pairs), 9, seed=1).next_batch()
    indices = trainer.next_batch()
    assert sorted(indices) == sorted(expected)  # the same pairs, each once
    lengths = [trainer.train_pairs[i].packed_length for i in indices]
    blocks = [lengths[i:i + 3] for i in range(0, 9, 3)]
    assert all(b == sorted(b) for b in blocks)  # each micro-batch holds similar lengths
    assert blocks[1][0] >= blocks[2][-1]  # shortest block, longest block, then the middle one
    batches = trainer.micro_batches(indices)
    assert [[int(i) for i in b["index"]] for b in batches] == [
        [trainer.train_pairs[i].index for i in indices[k:k + 3]] for k in (0, 3, 6)]


def test_resume_after_crash_reproduces_weights_and_metrics(tmp_path):
    cfg = run_config(tmp_path / "straight", max_steps=6, save_every=3)
    straight = float64_trainer(cfg)
    straight.train()
    cfg = run_config(tmp_path / "crashed", max_steps=6, save_every=3)
    train_until_crash(float64_trainer(cfg), after_step=4)
    cfg["training"]["resume"] = "auto"
    resumed = float64_trainer(cfg)
    resumed.train()
    assert resumed.step == 6
    assert torch.equal(params(straight.model), params(resumed.model))
    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "crashed")
    drop = ("time",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
           [{k: v for k, v in r.items() if k not in drop} for r in b]


def test_precomputed_reference_matches_live_reference_and_is_cached(tmp_path):
    live = float64_trainer(run_config(tmp_path / "live"))
    live.train()
    cfg = run_config(tmp_path / "pre")
    cfg["reference"] = {"precompute": True, "cache_dir": str(tmp_path / "cache")}
    pre = float64_trainer(cfg)
    pre.train()
    assert pre.ref_model is None and pre.ref_tables["train"].path.is_file()
    assert torch.allclose(params(live.model), params(pre.model), rtol=0, atol=1e-8)
    again = float64_trainer(cfg)
    again.setup_data()
    assert again.ref_tables["train"].from_cache


def test_reference_free_loss_builds_no_reference(tmp_path):
    cfg = run_config(tmp_path)
    cfg["algorithm"] = {"loss": {"type": "simpo", "reference_policy_kl_penalty": 2.0}}
    t = float64_trainer(cfg)
    metrics = t.train()
    assert t.ref_model is None and not t.ref_tables
    assert math.isfinite(metrics["loss"])


class NaNLoss(DPOLossFn):
    def __call__(self, batch, model_outputs):
        loss, metrics = super().__call__(batch, model_outputs)
        metrics["my_penalty"] = torch.tensor(float("nan"))
        return loss + metrics["my_penalty"], metrics


def test_nonfinite_loss_raises_with_step_and_component(tmp_path):
    cfg = run_config(tmp_path, save_every=1)
    t = float64_trainer(cfg, loss_fn=NaNLoss({}))
    with pytest.raises(NonFiniteError, match=r"step 1: .*my_penalty=nan"):
        t.train()
    assert not (tmp_path / "checkpoints").exists()


def test_nonfinite_skip_batch_counts_and_keeps_weights(tmp_path):
    cfg = run_config(tmp_path, on_nonfinite="skip_batch")
    t = float64_trainer(cfg, loss_fn=NaNLoss({}))
    before = params(t.model).clone()
    metrics = t.train()
    assert metrics["skipped_steps"] == 2
    assert torch.equal(before, params(t.model))


def test_final_model_reloads_with_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = DPOTrainer(config=run_config(tmp_path, max_steps=1))
    t.train()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    tok = AutoTokenizer.from_pretrained(tmp_path / "final")
    ids = tok("sort: b a\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, t.model.eval()(ids).logits, atol=1e-5)


def test_seed_custom_trainers_work_by_subclassing(tmp_path):
    import torch.nn.functional as F

    class CustomDPOTrainer(DPOTrainer):  # the seed's example, import changed only
        def compute_loss(self, policy_chosen_logps, policy_rejected_logps,
                         reference_chosen_logps, reference_rejected_logps):
            chosen_rewards = policy_chosen_logps - reference_chosen_logps
            rejected_rewards = policy_rejected_logps - reference_rejected_logps
            losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
            return losses.mean()

    t = float64_trainer(run_config(tmp_path), cls=CustomDPOTrainer)
    metrics = t.train()
    assert math.isfinite(metrics["loss"]) and "reward_gap" in metrics


def test_seed_math_dpo_trainer_reads_extra_columns(tmp_path):
    import torch.nn.functional as F

    from rlfoundry.data import PreferenceDataset

    class MathDPOTrainer(DPOTrainer):  # the seed's example, import changed only
        def __init__(self, *args, math_weight=2.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.math_weight = math_weight

        def compute_loss(self, policy_chosen_logps, policy_rejected_logps,
                         reference_chosen_logps, reference_rejected_logps, math_correctness=None):
            chosen_rewards = policy_chosen_logps - reference_chosen_logps
            rejected_rewards = policy_rejected_logps - reference_rejected_logps
            if math_correctness is not None:
                chosen_rewards += self.math_weight * math_correctness
            losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
            return losses.mean()

        def train_step(self, batch):
            math_correctness = batch.get("math_correctness", None)
            return self.compute_loss(batch["policy_chosen_logps"], batch["policy_rejected_logps"],
                                     batch["reference_chosen_logps"], batch["reference_rejected_logps"],
                                     math_correctness)

    data = PreferenceDataset(prompts=["1+1=", "2+2="] * 4, chosen_data=["2", "4"] * 4,
                             rejected_data=["3", "5"] * 4, math_correctness=[1.0, 0.0] * 4)
    t = MathDPOTrainer(config=run_config(tmp_path, max_steps=1), math_weight=3.0)
    metrics = t.train(data)
    # at step 1 policy == reference: loss = mean(-logsigmoid(3 * math_correctness))
    expected = (-F.logsigmoid(torch.tensor(3.0)) - F.logsigmoid(torch.tensor(0.0))) / 2
    assert metrics["loss"] == pytest.approx(float(expected), rel=1e-5)
