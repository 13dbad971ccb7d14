"""Reward models (issue 18 item 9): the Bradley-Terry loss against a plain float64 formula and
gradcheck, the reward_model trainer (held-out pair accuracy, final/ loadable by transformers,
resume), the reward_model reward (batched = one by one, clear errors), and the RM -> GRPO demo."""

import math

import pytest
import torch

from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
from rlfoundry.algorithms.loss_functions.bradley_terry import (
    BradleyTerryLossFn,
    bradley_terry_losses,
    pair_accuracy,
)
from rlfoundry.algorithms.reward_model import RewardModelTrainer
from rlfoundry.config import load_config
from rlfoundry.errors import ConfigError, DataError
from rlfoundry.rewards import resolve_reward, reward_model
from tests.crashing import train_until_crash

# ---------------------------------------------------------------- the loss


def plain_bt(chosen, rejected, margin, coef):
    """The loss written out with Python floats (float64)."""
    total = 0.0
    for c, r, m in zip(chosen, rejected, margin):
        total += math.log1p(math.exp(-(c - r - m))) + coef * (c + r) ** 2
    return total / len(chosen)


@pytest.mark.parametrize("coef,with_margin", [(0.0, False), (0.0, True), (0.05, False), (0.3, True)])
def test_loss_matches_a_plain_float64_formula(coef, with_margin):
    g = torch.Generator().manual_seed(7)
    chosen, rejected = torch.randn(11, generator=g) * 3, torch.randn(11, generator=g) * 3
    margin = torch.rand(11, generator=g) if with_margin else torch.zeros(11)
    loss_fn = BradleyTerryLossFn({"center_rewards_coefficient": coef,
                                  "margin_column": "margin" if with_margin else None})
    loss, metrics = loss_fn({"margin": margin}, {"chosen_rewards": chosen, "rejected_rewards": rejected})
    expected = plain_bt(chosen.tolist(), rejected.tolist(), margin.tolist(), coef)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    wins = sum(c > r for c, r in zip(chosen.tolist(), rejected.tolist())) / 11
    assert float(metrics["accuracy"]) == pytest.approx(wins)
    assert float(metrics["reward_margin"]) == pytest.approx(float((chosen - rejected).mean()), rel=1e-6)


def test_loss_gradcheck():
    g = torch.Generator().manual_seed(1)
    chosen = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    rejected = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    margin = torch.rand(6, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(
        lambda c, r: bradley_terry_losses(c, r, margin, 0.2).mean(), (chosen, rejected))


def test_pair_accuracy_counts_ties_within_the_tolerance_as_half():
    chosen = torch.tensor([1.0, 0.0, 2.0, 5.0])
    rejected = torch.tensor([0.0, 1.0, 2.0 - 1e-4, 5.0 + 1e-4])
    assert float(pair_accuracy(chosen, rejected, 0.0)) == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert float(pair_accuracy(chosen, rejected, 1e-3)) == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)


def test_loss_options_are_checked():
    assert isinstance(LossFunctionRegistry.build({"type": "bradley_terry"}), BradleyTerryLossFn)
    with pytest.raises(ConfigError, match="center_rewards_coeficient.*did you mean"):
        BradleyTerryLossFn({"center_rewards_coeficient": 0.1})
    with pytest.raises(ConfigError, match="no beta"):
        BradleyTerryLossFn({"beta": 0.1})
    with pytest.raises(ConfigError, match="must be >= 0"):
        BradleyTerryLossFn({"center_rewards_coefficient": -1})
    with pytest.raises(DataError, match="no column 'margin'"):
        BradleyTerryLossFn({"margin_column": "margin"})(
            {}, {"chosen_rewards": torch.zeros(2), "rejected_rewards": torch.zeros(2)})


def test_config_rejects_what_a_reward_model_cannot_use():
    base = {"algorithm": {"name": "reward_model"}}
    cfg = load_config(base)
    assert cfg.algorithm.loss["type"] == "bradley_terry"
    with pytest.raises(ConfigError, match="group_size"):
        load_config({"algorithm": {"name": "reward_model", "group_size": 4}})
    with pytest.raises(ConfigError, match="algorithm.loss.type.*not a reward-model loss"):
        load_config({"algorithm": {"name": "reward_model", "loss": {"type": "sigmoid"}}})
    with pytest.raises(ConfigError, match="model.lora"):
        load_config({**base, "model": {"lora": {"r": 4}}})
    with pytest.raises(ConfigError, match="tie_tolerence"):
        load_config({"algorithm": {"name": "reward_model", "loss": {"tie_tolerence": 0.1}}})


def test_list_shows_the_algorithm_the_loss_and_the_reward():
    from rlfoundry.cli import registries

    found = registries()
    assert "reward_model" in found["algorithms"]
    assert "bradley_terry" in found["losses"]
    assert "reward_model" in found["rewards"]


# ---------------------------------------------------------------- the trainer


def rm_config(out, **training):
    return {"algorithm": {"name": "reward_model", "loss": {"center_rewards_coefficient": 0.01}},
            "data": {"train": "builtin:sort_preferences", "train_size": 256, "eval_size": 64,
                     "max_length": 32},
            "training": {"output_dir": str(out), "batch_size": 16, "max_steps": 24,
                         "learning_rate": 1e-3, "device": "cpu", **training},
            "logging": {"progress_bar": False, "backends": ["jsonl"]}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short reward-model run (no eval_every: the trainer still evaluates at the end)."""
    out = tmp_path_factory.mktemp("rm")
    trainer = RewardModelTrainer(config=rm_config(out))
    trainer.train()
    return trainer, out / "final"


def test_trainer_learns_held_out_pair_accuracy(trained):
    trainer, final = trained
    assert trainer.last_eval["accuracy"] > 0.8, trainer.last_eval
    assert trainer.last_eval["reward_margin"] > 0
    lines = (final.parent / "metrics.jsonl").read_text().splitlines()
    assert any('"eval/accuracy"' in line for line in lines)


def test_final_dir_loads_as_a_sequence_classifier_with_the_trained_scores(trained):
    from transformers import AutoModelForSequenceClassification

    from rlfoundry.algorithms.reward_model import pair_scores

    trainer, final = trained
    loaded = AutoModelForSequenceClassification.from_pretrained(final).eval()
    assert loaded.config.num_labels == 1
    batch = trainer.collate([0, 1, 2], trainer.eval_pairs)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(pair_scores(loaded, batch), pair_scores(trainer.model, batch))


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    straight = RewardModelTrainer(config=rm_config(tmp_path / "a", max_steps=4, save_every=2))
    straight.train()
    train_until_crash(RewardModelTrainer(config=rm_config(tmp_path / "b", max_steps=4, save_every=2)),
                      after_step=3)
    resumed = RewardModelTrainer(config=rm_config(tmp_path / "b", max_steps=4, save_every=2,
                                                  resume="auto"))
    resumed.train()
    assert resumed.step == 4
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------- the reward


def test_reward_scores_batched_equal_one_by_one(trained):
    _, final = trained
    prompts = ["sort: d b a c\n"] * 3 + ["sort: q d m a\n"] * 4
    completions = ["a b c d", "d c b a", "b a c d", "a d m q", "q m d a", "a d q m", "a"]
    batched = reward_model(prompts, completions, path=str(final), batch_size=3)
    single = [reward_model([p], [c], path=str(final))[0] for p, c in zip(prompts, completions)]
    assert batched == pytest.approx(single, abs=1e-5)
    assert batched[0] > batched[1] and batched[3] > batched[4]  # sorted scores higher
    squashed = resolve_reward("reward_model", {"path": str(final), "normalize": "sigmoid"})(
        prompts, completions)
    assert squashed == pytest.approx([1 / (1 + math.exp(-s)) for s in batched], abs=1e-5)


def test_reward_errors_name_the_option(tmp_path, tokenizer):
    from rlfoundry.models import build_model

    with pytest.raises(ConfigError, match="args.path: .*nope.* is not a local directory"):
        resolve_reward("reward_model", {"path": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="args.path is required"):
        resolve_reward("reward_model", {})
    lm = tmp_path / "lm"
    build_model("tiny", tokenizer).save_pretrained(lm)
    with pytest.raises(ConfigError, match="not a reward model.*ForCausalLM"):
        resolve_reward("reward_model", {"path": str(lm)})
    with pytest.raises(ConfigError, match=r"algorithm.rewards\[0\]: .*is not a local directory"):
        load_config({"algorithm": {"name": "grpo", "rewards": [
            {"name": "reward_model", "args": {"path": str(tmp_path / "nope")}}]},
            "data": {"train": "builtin:sort"}})


# ---------------------------------------------------------------- hard negatives


def test_sort_preferences_hard_negatives_are_ascending_with_the_wrong_letters():
    from rlfoundry.data.synthetic import make_sort_preferences

    kinds = ["repeat", "drop", "foreign"]
    for kind in kinds:
        rows = make_sort_preferences(40, seed=1, num_letters=(3, 5), negatives=[kind])
        for r in rows:
            letters, chosen, got = r["prompt"].split()[1:], r["chosen"].split(), r["rejected"].split()
            assert chosen == sorted(letters) and got == sorted(got) and got != chosen, (kind, r)
            if kind == "drop":
                assert len(got) == len(letters) - 1 and set(got) < set(letters), r
            elif kind == "repeat":
                assert len(got) == len(letters) and len(set(got)) == len(letters) - 1, r
                assert set(got) < set(letters), r
            else:
                assert len(got) == len(letters) and len(set(got) - set(letters)) == 1, r
    mixed = make_sort_preferences(200, seed=2, num_letters=(3, 3), negatives=["order", *kinds])
    shapes = {("order" if sorted(r["rejected"].split()) == r["chosen"].split() else
               "drop" if len(r["rejected"].split()) == 2 else
               "repeat" if len(set(r["rejected"].split())) == 2 else "foreign") for r in mixed}
    assert shapes == {"order", *kinds}
    assert mixed == make_sort_preferences(200, seed=2, num_letters=(3, 3), negatives=["order", *kinds])


def test_sort_alphabet_limits_every_letter_including_foreign_ones():
    from rlfoundry.data.synthetic import make_sort_preferences, make_sort_prompts, make_sort_sft

    rows = make_sort_preferences(20, seed=0, num_letters=(3, 3), alphabet=6, negatives=["foreign"])
    assert {c for r in rows for c in (r["prompt"] + r["chosen"] + r["rejected"])[6:]
            if c.isalpha()} <= set("abcdef")
    assert all(set(r["completion"].replace(" ", "")) <= set("abcdef")
               for r in make_sort_sft(20, num_letters=(3, 3), alphabet=6, noise=0.5))
    with pytest.raises(ConfigError, match="cannot draw 30 distinct"):  # C(6, 3) = 20 sets
        make_sort_prompts(30, num_letters=(3, 3), alphabet=6)
    with pytest.raises(ConfigError, match="low <= high <= alphabet"):
        make_sort_preferences(4, num_letters=(3, 5), alphabet=4)
    with pytest.raises(ConfigError, match="'foreign' needs a letter outside"):
        make_sort_preferences(4, num_letters=(3, 4), alphabet=4, negatives=["foreign"])


def test_sort_preferences_negatives_are_checked():
    from rlfoundry.data.synthetic import make_sort_preferences

    with pytest.raises(ConfigError, match="unknown negative kind 'reapet'.*repeat"):
        make_sort_preferences(4, negatives=["order", "reapet"])
    with pytest.raises(ConfigError, match="non-empty list"):
        make_sort_preferences(4, negatives=[])
    with pytest.raises(ConfigError, match="non-empty list"):
        make_sort_preferences(4, negatives="order")


# ---------------------------------------------------------------- the demo


def test_sortedness_measures_the_answer_not_the_reward_model():
    from rlfoundry.reward_model_demo import sortedness

    assert sortedness("sort: d b a c\n", "a b c d") == {"ordered": 1.0, "exact": 1.0, "kept": 1.0}
    assert sortedness("sort: d b a c\n", "d c b a") == {"ordered": 0.0, "exact": 0.0, "kept": 1.0}
    assert sortedness("sort: d b a c\n", "a b d c") == {"ordered": 2 / 3, "exact": 0.0, "kept": 1.0}
    assert sortedness("sort: d b a c\n", "a b c") == {"ordered": 1.0, "exact": 0.0, "kept": 0.0}
    assert sortedness("sort: d b a c\n", "") == {"ordered": 0.0, "exact": 0.0, "kept": 0.0}


@pytest.mark.slow
def test_reward_model_demo_end_to_end(tmp_path):
    """The demo, shortened (SFT 120 steps instead of 800): the RM, trained with hard negatives,
    ranks held-out pairs; GRPO with the RM as its only reward raises the RM's score of held-out
    greedy answers; sortedness is measured on those answers independently of the RM. With this
    tiny policy and RM the measured sortedness does NOT reliably rise (the RM is still gamed,
    docs/reward_models.md), so no rise is asserted."""
    from rlfoundry.reward_model_demo import run_demo

    summary = run_demo(tmp_path / "demo", overrides=[
        "sft.training.max_steps=120", "sft.training.eval_every=120",
        "grpo.training.max_steps=15", "grpo.training.eval_every=15"],
        progress=False, log=lambda *_: None)
    assert summary["rm"]["accuracy"] > 0.75, summary["rm"]  # 0.83-0.90 measured, 3 seeds
    assert summary["rm_reward_mean"]["after"] > summary["rm_reward_mean"]["before"] + 0.3, summary
    for side in ("before", "after"):
        measured = summary["sortedness"][side]
        assert all(0.0 <= measured[k] <= 1.0 for k in ("ordered", "exact", "kept")), measured
