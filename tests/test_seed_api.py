"""The API the NeMo RL-style documents assume, one test (or a few) per item of issue #17."""

from __future__ import annotations

import json
import math
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.algorithms.grpo import GRPOTrainer
from rlfoundry.algorithms.grpo_grouping import call_grouping_hook
from rlfoundry.algorithms.lazy_outputs import LazyOutputs
from rlfoundry.algorithms.loss_functions import DPOLossFn, GRPOLossFn, LossFunctionRegistry
from rlfoundry.errors import ConfigError, LossError
from rlfoundry.loss_check import check_loss, loss_factory

LOGGING = {"tensorboard": False, "progress_bar": False}


def dpo_cfg(out, steps=1, **training):
    return {"model": {"name_or_path": "builtin:tiny"}, "logging": LOGGING,
            "data": {"train": "builtin:sort_preferences", "train_size": 8, "eval_size": 4},
            "training": {"output_dir": str(out), "batch_size": 4, "max_steps": steps,
                         "learning_rate": 1e-3, **training}}


def grpo_cfg(out, steps=1, **training):
    return {"algorithm": {"name": "grpo", "group_size": 4, "sampling": {"max_new_tokens": 3}},
            "model": {"name_or_path": "builtin:tiny"}, "logging": LOGGING,
            "data": {"train": "builtin:addition", "train_size": 8},
            "training": {"output_dir": str(out), "batch_size": 2, "max_steps": steps,
                         "learning_rate": 1e-3, "lr_scheduler": "constant", **training}}


# ---- 1. trainer helpers ---------------------------------------------------------------------
@pytest.mark.slow
def test_dpo_helpers(tmp_path, capsys):
    t = DPOTrainer(config=dpo_cfg(tmp_path))
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-1.0, -3.0], [-2.0, -1.0], [-1.5, -2.0], [-1.5, -2.0]))
    assert torch.isclose(t.standard_dpo_loss(pc, pr, rc, rr),
                         -F.logsigmoid(0.1 * ((pc - rc) - (pr - rr))).mean())
    assert torch.isclose(t.compute_fluency_loss(pc, torch.tensor([2.0, 3.0])), torch.tensor(0.75))
    t.beta = 0.3  # the live beta: the loss uses it and it is logged
    assert t.loss_fn.reference_policy_kl_penalty == 0.3 and t.beta == 0.3
    metrics = t.train()
    assert metrics["beta"] == 0.3
    assert t.chosen_rewards.shape == t.rejected_rewards.shape == (4,)
    assert metrics["reward_gap"] == pytest.approx(float((t.chosen_rewards - t.rejected_rewards).mean()), abs=1e-5)
    assert "Reward gap" in t.debug_algorithm() and "Chosen rewards range" in capsys.readouterr().out
    assert float(t.compute_coherence_loss(torch.tensor([1.0, 0.5]))) == pytest.approx(0.25)


@pytest.mark.slow
def test_logger_log_with_and_without_step(tmp_path):
    t = DPOTrainer(config=dpo_cfg(tmp_path))
    t.logger.log(1, {"x": 1.0})  # before train(): a no-op, not an AttributeError

    class Logs(DPOTrainer):
        def optimizer_step(self, indices):
            metrics = super().optimizer_step(indices)
            self.logger.log(7, {"mine": 1.5})
            self.logger.log({"other": torch.tensor(2.0), "algorithm": "dpo"})
            return metrics

    Logs(config=dpo_cfg(tmp_path / "b")).train()
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 7, "mine": 1.5} in rows and {"step": 0, "other": 2.0} in rows


@pytest.mark.slow
def test_grpo_helpers(tmp_path):
    t = GRPOTrainer(config={**grpo_cfg(tmp_path), "algorithm": {
        "name": "grpo", "group_size": 4, "clip_ratio": 0.25, "sampling": {"max_new_tokens": 3}}})
    assert t.clip_ratio == 0.25
    t.clip_ratio = 0.1
    assert t.loss_fn.clip_ratio_low == t.loss_fn.clip_ratio_high == 0.1
    assert sorted(torch.cat(t.random_grouping(8)).tolist()) == list(range(8))
    rewards = torch.tensor([0.1, 0.9, 0.5, 0.8, 0.2, 0.7, 0.3, 0.6])
    assert [g.tolist() for g in t.performance_grouping(rewards)] == [[1, 3, 5, 7], [2, 6, 4, 0]]
    emb = torch.tensor([[1.0, 0], [0, 1], [1, 0.1], [0.1, 1], [1, 0], [0, 1], [1, 0], [0, 1]])
    assert [sorted(g.tolist()) for g in t.semantic_grouping(emb)] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    sim = -torch.cdist(rewards[:, None], rewards[:, None])
    assert [sorted(g.tolist()) for g in t.form_groups_from_similarity(sim, 2)][:1] == [[0, 4]]
    logps = torch.tensor([1.0, 3.0, 5.0, 5.0])
    assert float(t.compute_group_loss(torch.tensor([0, 0, 1, 1]), logps)) == pytest.approx(1.0)
    t.train()
    assert t.debug_algorithm().startswith("Number of groups: 2")
    assert t.group_performances.shape == (2,) and 0 < float(t.monitor_group_quality()) <= 1
    contexts = t.extract_contexts(["a", "b"], prompts=["hi", [{"role": "user", "content": "x"}]])
    assert contexts[0] == "hi"


# ---- 2. form_groups overrides with the documents' signatures ----------------------------------
def test_grouping_hooks_called_by_keyword():
    context = {"rewards": torch.arange(8.0), "embeddings": torch.randn(8, 3), "step": 1,
               "total_steps": 4, "responses": ["a b", "a a"] * 4, "prompts": ["p"] * 8}
    seen = {}

    def semantic(embeddings, batch_size, group_size=4):
        seen["semantic"] = (embeddings.shape, batch_size, group_size)
        return [torch.arange(4), torch.arange(4, 8)]

    def performance(rewards, batch_size, group_size=4):
        seen["performance"] = (rewards.shape, batch_size)
        return [torch.arange(8)]

    def adaptive(step, total_steps, embeddings, rewards):
        seen["adaptive"] = (step, total_steps)
        return [torch.arange(8)]

    def multi(embeddings, rewards, diversity_scores):
        seen["multi"] = diversity_scores.tolist()
        return [torch.arange(8)]

    def positional(n, k):  # neither name is context: called as (n, group_size)
        seen["positional"] = (n, k)
        return [torch.arange(8)]

    def documents_form_groups(batch_size, group_size=4):
        seen["random"] = (batch_size, group_size)
        return [torch.arange(8)]

    for fn in (semantic, performance, adaptive, multi, positional, documents_form_groups):
        assert call_grouping_hook(fn, 8, 4, context)
    assert seen == {"semantic": ((8, 3), 8, 4), "performance": ((8,), 8), "adaptive": (1, 4),
                    "multi": [1.0, 0.5] * 4, "positional": (8, 4), "random": (8, 4)}


# ---- 3. lazy model_outputs ---------------------------------------------------------------------
def test_lazy_outputs_compute_once_and_only_when_read():
    calls = []
    out = LazyOutputs({"logprobs": 1}, {"logits": lambda: calls.append(1) or "L"})
    assert "logits" in out and sorted(out) == ["logits", "logprobs"] and not calls
    assert out["logits"] == "L" and out["logits"] == "L" and calls == [1]
    with pytest.raises(KeyError, match="available: logits, logprobs"):
        out["nope"]


@pytest.mark.slow
def test_lazy_outputs_in_training(tmp_path):
    seen = {}

    class ReadsEverything(DPOLossFn):
        def __call__(self, batch, model_outputs):
            seen["before"] = model_outputs.computed()
            logits = model_outputs["logits"]
            seen["shapes"] = (tuple(logits.shape), tuple(batch["input_ids"].shape),
                              tuple(model_outputs["responses"].shape), len(model_outputs["parameters"]))
            loss, metrics = super().__call__(batch, model_outputs)
            return loss + 0 * logits.float().mean(), metrics

    class Watches(DPOLossFn):
        def __call__(self, batch, model_outputs):
            result = super().__call__(batch, model_outputs)
            seen["fast"] = model_outputs.computed()
            return result

    DPOTrainer(config=dpo_cfg(tmp_path / "a"), loss_fn=ReadsEverything({})).train()
    rows, t, v = seen["shapes"][0]
    assert (rows, t) == seen["shapes"][1] and v > 100  # logits of the batch's own rows
    assert seen["shapes"][2][0] == 8 and seen["shapes"][3] > 0  # one embedding per sequence
    assert "logits" not in seen["before"]
    DPOTrainer(config=dpo_cfg(tmp_path / "b"), loss_fn=Watches({})).train()
    assert not {"logits", "responses", "hidden", "entropy"} & set(seen["fast"])  # fast path


# ---- 4. training_step and per-call counters ------------------------------------------------
@pytest.mark.slow
def test_step_counters_advance_once_per_optimizer_step(tmp_path):
    class Counting(DPOLossFn):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.step = 0
            self.steps_seen = []

        def __call__(self, batch, model_outputs):
            self.steps_seen.append((self.step, getattr(self, "training_step", None)))
            self.step += 1
            return super().__call__(batch, model_outputs)

    loss = Counting({})
    DPOTrainer(config=dpo_cfg(tmp_path, steps=3, micro_batch_size=2, eval_every=1), loss_fn=loss).train()
    assert loss.step == 3 and loss.training_step == 3
    # 2 micro-batches per step + an evaluation before and after every step: the document's
    # per-call counter and training_step agree on every call
    assert loss.steps_seen[:2] == [(0, None), (0, None)]  # the evaluation before training
    assert all(a == b for a, b in loss.steps_seen[2:]), loss.steps_seen
    assert [a for a, _ in loss.steps_seen].count(1) == 4  # the 2 eval batches before step 1 + its 2 micro-batches


# ---- 5. the documents' YAML names; the trainer class implies its algorithm ------------------
@pytest.mark.slow
def test_custom_dpo_and_custom_grpo_are_registered(tmp_path):
    from rlfoundry.config import load_config

    cfg = load_config({"algorithm": {"name": "custom_dpo", "beta": 0.1, "loss": {
        "type": "custom_math_reasoning", "math_weight": 2.0, "syntax_weight": 1.5}}})
    assert cfg.algorithm.name == "custom_dpo"
    cfg = load_config({"algorithm": {"name": "custom_grpo", "group_size": 4, "group_strategy": "performance",
                                     "rewards": [{"name": "math_accuracy"}]}})
    assert cfg.algorithm.group_strategy == "performance"
    t = GRPOTrainer(config={k: v for k, v in grpo_cfg(tmp_path).items() if k != "algorithm"})
    assert t.config.algorithm.name == "grpo" and t.kind == "grpo"
    path = tmp_path / "run.yaml"
    path.write_text(f"model: {{name_or_path: 'builtin:tiny'}}\ndata: {{train: 'builtin:addition'}}\n"
                    f"training: {{output_dir: '{tmp_path / 'y'}'}}\n")
    assert GRPOTrainer(config=str(path)).config.algorithm.name == "grpo"


# ---- 6. training.lr_controller in GRPO --------------------------------------------------------
@pytest.mark.slow
def test_lr_controller_scales_grpo_lr_by_group_performance(tmp_path):
    cfg = grpo_cfg(tmp_path, steps=2, lr_controller={
        "type": "performance", "metric": "group_performance", "low": 2.0, "high": 3.0, "up": 2.0})
    cfg["algorithm"]["rewards"] = [{"name": "math_accuracy"}]
    GRPOTrainer(config=cfg).train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert lrs == pytest.approx([2e-3, 4e-3])  # performance < low: x2 after every step


# ---- 7. re-registering a name warns, naming both classes ---------------------------------------
@pytest.mark.parametrize("registry_path", [
    "rlfoundry.algorithms.loss_functions.registry:_REGISTRY",
    "rlfoundry.algorithms.trainer_registry:TRAINERS",
    "rlfoundry.algorithms.grouping:GROUPINGS",
    "rlfoundry.rewards.runner:REWARDS",
    "rlfoundry.training.schedules:SCHEDULES",
    "rlfoundry.algorithms.advantages:ADVANTAGE_ESTIMATORS",
])
def test_reregistering_warns_for_every_registry(registry_path):
    from rlfoundry.algorithms.trainer_registry import load_builtin_trainers
    from rlfoundry.registry import RegistryOverrideWarning, import_object

    load_builtin_trainers()
    registry = import_object(registry_path)
    name = registry.names()[0]
    saved = dict(registry._entries)
    try:
        class Mine:
            pass

        with pytest.warns(RegistryOverrideWarning) as caught:
            registry.register(name)(Mine)
        message = str(caught[0].message)
        old = saved[name]
        assert f"{old.__module__}.{old.__qualname__}" in message
        assert "test_seed_api" in message and "Mine" in message and "override=True" in message
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            registry.register(name, override=True)(saved[name])
            registry.register(name)(saved[name])  # the same object again: silent
    finally:
        registry._entries.clear()
        registry._entries.update(saved)


def test_loss_registry_override_flag():
    from rlfoundry.registry import RegistryOverrideWarning

    saved = LossFunctionRegistry.get("ipo")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            LossFunctionRegistry.register("ipo", override=True)(DPOLossFn)
        with pytest.warns(RegistryOverrideWarning, match="'ipo'"):
            LossFunctionRegistry.register("ipo")(saved)
    finally:
        LossFunctionRegistry.register("ipo", override=True)(saved)


# ---- 8. did-you-mean on a loss's own declared keys ----------------------------------------------
@pytest.mark.parametrize("base", [DPOLossFn, GRPOLossFn])
def test_typo_of_declared_extra_key_is_rejected(base):
    class Mine(base):
        extra_config_keys = ("length_alpha",)

    with pytest.raises(ConfigError, match=r"length_alhpa: unknown key \(did you mean 'length_alpha'\?\)"):
        Mine({"length_alhpa": 0.1})
    assert Mine({"length_alpha": 0.1}).cfg["length_alpha"] == 0.1


# ---- 9. check-loss catches sign errors and names real causes; training names the loss ---------
FLAWED = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from rlfoundry.algorithms.loss_functions import DPOLossFn, GRPOLossFn

    class RewardsRejected(DPOLossFn):  # chosen and rejected swapped
        def __call__(self, batch, out):
            out = {**out, "policy_chosen_logps": out["policy_rejected_logps"],
                   "policy_rejected_logps": out["policy_chosen_logps"]}
            batch = {**batch, "reference_chosen_logps": batch["reference_rejected_logps"],
                     "reference_rejected_logps": batch["reference_chosen_logps"]}
            return super().__call__(batch, out)

    class FlippedAdvantage(GRPOLossFn):
        def __call__(self, batch, out):
            return super().__call__({**batch, "advantages": -batch["advantages"]}, out)

    class PerPair:
        def __init__(self, cfg):
            pass
        def __call__(self, batch, out):
            return -F.logsigmoid(out["policy_chosen_logps"] - out["policy_rejected_logps"]), {}

    class ListMetrics(PerPair):
        def __call__(self, batch, out):
            return super().__call__(batch, out)[0].mean(), ["not", "a", "dict"]

    class OneArg:
        def __init__(self, cfg):
            pass
        def __call__(self, batch):
            return torch.tensor(0.0)
''')


@pytest.fixture(scope="module")
def flawed(tmp_path_factory):
    path = tmp_path_factory.mktemp("flawed") / "flawed_losses.py"
    path.write_text(FLAWED)
    return path


def results(report):
    return {r.name: (r.passed, r.detail) for r in report.results}


def test_check_loss_catches_sign_flipped_dpo_and_grpo(flawed):
    dpo = results(check_loss(loss_factory(f"{flawed}:RewardsRejected", {}), "preference"))
    passed, detail = dpo["raising chosen over rejected log-probs lowers the loss"]
    assert not passed and "sign flipped" in detail
    grpo = results(check_loss(loss_factory(f"{flawed}:FlippedAdvantage", {}), "policy"))
    passed, detail = grpo["the gradient raises the log-probs of positive-advantage samples"]
    assert not passed and "advantage sign is flipped" in detail
    for name, kind in (("dpo", "preference"), ("grpo", "policy")):
        assert check_loss(loss_factory(name, {}), kind).passed


def test_check_loss_reports_the_real_cause(flawed):
    report = check_loss(loss_factory(f"{flawed}:PerPair", {}))
    assert "a loss of shape (3,); it must be a scalar" in report.format()
    report = check_loss(loss_factory(f"{flawed}:ListMetrics", {}))
    assert "metrics of type list" in report.format()
    report = check_loss(loss_factory(f"{flawed}:OneArg", {}))
    assert "cannot be called as loss_fn(batch, model_outputs)" in report.format()
    assert "--kind" not in report.format()


@pytest.mark.slow
def test_training_names_the_loss_for_each_defect(tmp_path):
    class PerPair(DPOLossFn):
        def __call__(self, batch, model_outputs):
            loss, metrics = super().__call__(batch, model_outputs)
            return loss.expand(3), metrics

    class VectorMetric(DPOLossFn):
        def __call__(self, batch, model_outputs):
            loss, metrics = super().__call__(batch, model_outputs)
            return loss, {**metrics, "per_pair": model_outputs["policy_chosen_logps"].detach()}

    class ListMetrics(DPOLossFn):
        def __call__(self, batch, model_outputs):
            return super().__call__(batch, model_outputs)[0], ["accuracy", 0.5]

    for cls, message in ((PerPair, r"a loss of shape \(3,\)"),
                         (VectorMetric, r"metric 'per_pair' of shape \(\d+,\)"),
                         (ListMetrics, r"metrics of type list")):
        with pytest.raises(LossError, match=rf"the loss 'dpo' \(.*{cls.__name__}\).*{message}"):
            DPOTrainer(config=dpo_cfg(tmp_path / cls.__name__), loss_fn=cls({})).train()

    def one_arg(batch):
        return torch.tensor(0.0)

    with pytest.raises(ConfigError, match=r"one_arg.*cannot be called as loss_fn\(batch, model_outputs\)"):
        DPOTrainer(config=dpo_cfg(tmp_path / "c"), loss_fn=one_arg)
    assert math.isfinite(DPOTrainer(config=dpo_cfg(tmp_path / "d")).train()["loss"])
