"""KTO: the loss against a plain float64 implementation, gradcheck, the unpaired data format
(and pairs converted to it), and the trainer (exact accumulation, resume, learning)."""

import json
import math
from pathlib import Path

import pytest
import torch

from rlfoundry.algorithms.kto import KTOTrainer
from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
from rlfoundry.algorithms.loss_functions.kto import KTOLossFn, kl_estimate, kto_losses
from rlfoundry.data import PreferenceDataset
from rlfoundry.data.unpaired import UnpairedDataset, mismatched_partners, unpaired_from_pairs
from rlfoundry.errors import ConfigError, DataError
from rlfoundry.models import build_model, build_tokenizer
from tests.crashing import train_until_crash

# ---------------------------------------------------------------- the loss

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "configs"


def plain_kto(policy, ref, labels, policy_kl, ref_kl, beta, lam_d, lam_u):
    """The paper's loss written out with Python floats (float64)."""
    z0 = max(0.0, sum(p - r for p, r in zip(policy_kl, ref_kl)) / len(policy_kl))
    total = 0.0
    for p, r, good in zip(policy, ref, labels):
        reward = p - r
        if good:
            total += lam_d - lam_d / (1 + math.exp(-beta * (reward - z0)))
        else:
            total += lam_u - lam_u / (1 + math.exp(-beta * (z0 - reward)))
    return total / len(policy)


@pytest.mark.parametrize("beta,lam_d,lam_u", [(0.1, 1.0, 1.0), (0.5, 1.33, 1.0), (2.0, 1.0, 0.7)])
def test_loss_matches_a_plain_float64_implementation(beta, lam_d, lam_u):
    g = torch.Generator().manual_seed(3)
    b = 9
    policy, ref = torch.randn(b, generator=g, dtype=torch.float64) * 5 - 20, torch.randn(
        b, generator=g, dtype=torch.float64) * 5 - 20
    policy_kl = ref_kl_shift = torch.randn(b, generator=g, dtype=torch.float64) - 30
    ref_kl = ref_kl_shift - torch.rand(b, generator=g, dtype=torch.float64)  # KL > 0
    labels = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1], dtype=torch.float64)
    loss_fn = KTOLossFn({"beta": beta, "desirable_weight": lam_d, "undesirable_weight": lam_u})
    loss, metrics = loss_fn({"reference_logps": ref, "label": labels, "reference_kl_logps": ref_kl},
                            {"policy_logps": policy, "policy_kl_logps": policy_kl})
    expected = plain_kto(policy.tolist(), ref.tolist(), labels.tolist(), policy_kl.tolist(),
                         ref_kl.tolist(), beta, lam_d, lam_u)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    assert float(metrics["kl"]) == pytest.approx(float((policy_kl - ref_kl).mean()), rel=1e-12)


def test_kl_estimate_is_clamped_at_zero_and_detached():
    p = torch.tensor([-5.0, -6.0], dtype=torch.float64, requires_grad=True)
    z = kl_estimate(p, torch.tensor([-1.0, -1.0], dtype=torch.float64))
    assert float(z) == 0.0 and not z.requires_grad
    z = kl_estimate(p, torch.tensor([-9.0, -9.0], dtype=torch.float64))
    assert float(z) == pytest.approx(3.5) and not z.requires_grad


def test_gradcheck_and_no_gradient_through_the_reference_point():
    g = torch.Generator().manual_seed(0)
    policy = (torch.randn(6, generator=g, dtype=torch.float64) - 3).requires_grad_()
    ref = torch.randn(6, generator=g, dtype=torch.float64) - 3
    desirable = torch.tensor([True, False, True, False, False, True])

    z0 = float(kl_estimate(policy, ref - 0.5))
    assert z0 > 0
    assert torch.autograd.gradcheck(
        lambda p, r: kto_losses(p, r, desirable, z0, 0.7, 1.2, 0.8).mean(),
        (policy, ref.clone().requires_grad_()))

    def f(p):
        return kto_losses(p, ref, desirable, kl_estimate(p, ref - 0.5), 0.7, 1.2, 0.8).mean()

    # z0 is detached: the gradient equals the one with z0 given as a constant
    grad = torch.autograd.grad(f(policy), policy)[0]
    const = torch.autograd.grad(kto_losses(policy, ref, desirable, z0, 0.7, 1.2, 0.8).mean(), policy)[0]
    assert torch.equal(grad, const)


def test_empty_batch_gives_a_zero_loss_in_the_graph():
    p = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    loss, _ = KTOLossFn()({"reference_logps": torch.zeros(0), "label": torch.zeros(0),
                           "kl_estimate": torch.tensor(0.3)}, {"policy_logps": p})
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()


def test_loss_options_are_checked_and_registered():
    assert LossFunctionRegistry.get("kto") is KTOLossFn
    with pytest.raises(ConfigError, match="desirable_weight: must be > 0"):
        KTOLossFn({"desirable_weight": 0})
    with pytest.raises(ConfigError, match="undesireable_weight.*did you mean"):
        KTOLossFn({"undesireable_weight": 1.0})


# ---------------------------------------------------------------- the data format


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_unpaired_rows_read_with_trl_column_names(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [
        {"prompt": "a", "completion": "b", "label": True},
        {"prompt": "c", "completion": "d", "label": False, "score": 2},
        {"prompt": [{"role": "user", "content": "hi"}], "completion": "yo", "label": 1},
    ])
    ds = UnpairedDataset.from_file(path)
    assert [e.label for e in ds] == [True, False, True]
    assert ds[1].extras == {"score": 2}
    assert ds[2].completion == [{"role": "assistant", "content": "yo"}]
    assert not ds.converted_from_pairs


@pytest.mark.parametrize("row,message", [
    ({"prompt": "a", "completion": "b"}, "u.jsonl:2: missing key 'label'"),
    ({"prompt": "a", "completion": "b", "label": "maybe"}, "u.jsonl:2: 'label' must be true"),
    ({"prompt": "a", "completion": "b", "label": 2}, "u.jsonl:2: 'label' must be true"),
    ({"prompt": "a", "completon": "b", "label": True}, "u.jsonl:2: missing key 'completion'.*completon"),
    ({"prompt": "a", "completion": " ", "label": True}, "u.jsonl:2: 'completion' is empty"),
    ({"prompt": "a", "completion": [{"role": "assistant", "content": "x"}], "label": True},
     "u.jsonl:2: a message-list completion needs a message-list prompt"),
])
def test_malformed_rows_name_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "u.jsonl", [{"prompt": "p", "completion": "c", "label": True}, row])
    with pytest.raises(DataError, match=message):
        UnpairedDataset.from_file(path)
    skipped = UnpairedDataset.from_file(path, on_bad_row="skip")  # the row policy applies
    assert len(skipped) == 1 and "u.jsonl:2" in skipped.report.skipped[0]


def test_csv_labels_are_read_from_text(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("prompt,completion,label\nx,1,true\ny,0,False\n")
    ds = UnpairedDataset.from_file(path)
    assert [e.label for e in ds] == [True, False] and ds[0].completion == "1"


def test_paired_rows_become_one_desirable_and_one_undesirable_row(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "p1", "chosen": "good", "rejected": "bad", "w": 1},
        {"prompt": "p2", "chosen": "yes", "rejected": "no", "w": 2},
    ])
    ds = UnpairedDataset.from_file(path)
    assert ds.converted_from_pairs and len(ds) == 4
    assert [(e.prompt, e.completion, e.label) for e in ds] == [
        ("p1", "good", True), ("p1", "bad", False), ("p2", "yes", True), ("p2", "no", False)]
    assert [e.extras["source_pair"] for e in ds] == [0, 0, 1, 1] and ds[3].extras["w"] == 2
    assert ds[1].location.endswith("p.jsonl:1 (rejected)")
    same = unpaired_from_pairs(PreferenceDataset.from_file(path))
    assert [(e.completion, e.label) for e in same] == [(e.completion, e.label) for e in ds]
    # a malformed pair still names its line
    write_jsonl(path, [{"prompt": "p1", "chosen": "good"}])
    with pytest.raises(DataError, match="p.jsonl:1: missing key 'rejected'"):
        UnpairedDataset.from_file(path)


def test_mismatched_completions_come_from_other_prompts(tokenizer):
    ds = UnpairedDataset.from_rows([{"prompt": f"p{i // 2}", "completion": f"c{i}", "label": i % 2 == 0}
                                    for i in range(10)])
    partner = mismatched_partners(ds.examples, seed=0)
    assert all(ds[j].prompt != ds[i].prompt for i, j in enumerate(partner))
    assert partner == mismatched_partners(ds.examples, seed=0)  # seeded
    pairs = ds.tokenize(tokenizer, max_length=32)
    for i, p in enumerate(pairs):
        own = ds.tokenize(tokenizer, max_length=32)[partner[i]].chosen_ids
        assert p.rejected_ids == own and p.extras["label"] == float(ds[i].label)


# ---------------------------------------------------------------- the trainer


def run_config(path, **training):
    return {
        "algorithm": {"name": "kto", "loss": {"type": "kto", "beta": 0.5, "desirable_weight": 1.2}},
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"train": "builtin:sort_preferences", "train_size": 16, "eval_size": 8, "max_length": 48},
        "training": {"output_dir": str(path), "batch_size": 8, "max_steps": 2, "learning_rate": 1e-3,
                     "seed": 0, **training},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def float64_trainer(cfg):
    tok = build_tokenizer()
    return KTOTrainer(model=build_model("tiny", tok, seed=0).double(), tokenizer=tok, config=cfg)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_accumulation_is_exact_because_the_kl_spans_the_whole_step(tmp_path):
    full = float64_trainer(run_config(tmp_path / "a"))
    m_full = full.train()
    acc = float64_trainer(run_config(tmp_path / "b", micro_batch_size=2))
    m_acc = acc.train()
    assert m_acc["kl"] == m_full["kl"]  # z0 over the global batch, not per micro-batch
    assert m_acc["grad_norm"] == pytest.approx(m_full["grad_norm"], rel=1e-9)
    assert m_acc["loss"] == pytest.approx(m_full["loss"], rel=1e-9)
    assert torch.allclose(params(full.model), params(acc.model), rtol=0, atol=1e-8)


def test_step_loss_equals_the_plain_loss_on_the_step_rows(tmp_path):
    trainer = float64_trainer(run_config(tmp_path, max_steps=1))
    trainer.setup_data()
    rows = list(range(8))
    batch = trainer.to_device(trainer.collate(rows))
    with torch.no_grad():
        out = trainer.row_logps(batch, grad=False)
        loss, _ = trainer.micro_step(batch)  # without a step, z0 comes from this batch
    expected = plain_kto(out["policy_logps"].tolist(), out["reference_logps"].tolist(),
                         batch["label"].tolist(), out["policy_kl_logps"].tolist(),
                         out["reference_kl_logps"].tolist(), 0.5, 1.2, 1.0)
    assert float(loss) == pytest.approx(expected, rel=1e-10)


def test_precomputed_reference_trains_like_a_live_one(tmp_path):
    live = float64_trainer(run_config(tmp_path / "live"))
    m_live = live.train()
    cfg = run_config(tmp_path / "pre")
    cfg["reference"] = {"precompute": True}
    pre = float64_trainer(cfg)
    m_pre = pre.train()
    assert pre.ref_model is None and pre.ref_tables
    assert m_pre["loss"] == pytest.approx(m_live["loss"], rel=1e-9)
    assert torch.allclose(params(live.model), params(pre.model), rtol=0, atol=1e-8)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    straight = float64_trainer(run_config(tmp_path / "s", max_steps=4, save_every=2))
    straight.train()
    cfg = run_config(tmp_path / "c", max_steps=4, save_every=2)
    train_until_crash(float64_trainer(cfg), after_step=3)
    cfg["training"]["resume"] = "auto"
    resumed = float64_trainer(cfg)
    resumed.train()
    assert torch.equal(params(straight.model), params(resumed.model))


def test_config_errors():
    cfg = run_config("/tmp/unused")
    cfg["algorithm"]["loss"] = {"type": "sigmoid"}
    with pytest.raises(ConfigError, match="not a KTO loss"):
        KTOTrainer(config=cfg)
    cfg["algorithm"] = {"name": "kto", "group_size": 2}
    from rlfoundry.config import load_config
    with pytest.raises(ConfigError, match="algorithm.group_size is a GRPO option"):
        load_config(cfg)


@pytest.mark.slow
def test_kto_learns_the_preference_on_paired_data(tmp_path):
    cfg = run_config(tmp_path, max_steps=30, eval_every=30)
    cfg["algorithm"]["loss"] = {"type": "kto", "beta": 0.1}
    cfg["data"].update(train_size=256, eval_size=32)
    cfg["training"].update(batch_size=16, learning_rate=1e-3)
    tok = build_tokenizer()
    trainer = KTOTrainer(model=build_model("tiny", tok, seed=0), tokenizer=tok, config=cfg)
    trainer.train()
    assert trainer.initial_eval["pair_accuracy"] == 0.5  # policy == reference: all ties
    assert trainer.last_eval["pair_accuracy"] > 0.65
    assert trainer.last_eval["reward_margin"] > 0


def test_example_config_trains_from_the_cli(tmp_path):
    from rlfoundry.cli import main

    code = main(["train", str(EXAMPLES / "kto.yaml"), f"training.output_dir={tmp_path}",
                 "training.max_steps=2", "training.eval_every=2", "data.train_size=16",
                 "data.eval_size=8", "logging.progress_bar=false", "logging.tensorboard=false"])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/pair_accuracy" in r for r in rows) and (tmp_path / "final").is_dir()
