"""Grouping strategies, the size/leftover policy and group quality metrics (pure functions)."""

from __future__ import annotations

import math

import pytest
import torch

from rlfoundry.algorithms.grouping import (
    GROUPINGS,
    GroupingContext,
    adaptive_strategy,
    apply_size_policy,
    check_stages,
    conversation_context,
    group_cohesion,
    group_quality_metrics,
    multi_criteria_affinity,
    needs_embeddings,
    zscore,
)
from rlfoundry.errors import ConfigError

NAN = float("nan")


def ctx(n=8, group_size=4, rewards=None, embeddings=None, seed=0, **kw) -> GroupingContext:
    return GroupingContext(
        num_samples=n, group_size=group_size,
        prompt_index=torch.arange(n) // group_size,
        rewards=torch.tensor(rewards if rewards is not None else [0.0] * n, dtype=torch.float64),
        embeddings=embeddings, generator=torch.Generator().manual_seed(seed), **kw)


def as_sets(groups) -> list[set[int]]:
    return [set(g.tolist()) for g in groups]


def clusters(sizes, dim=6, noise=0.05, seed=0) -> torch.Tensor:
    """Embeddings in len(sizes) well separated directions; rows of cluster k are consecutive."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.eye(dim)[k] * 5 + noise * torch.randn(s, dim, generator=g) for k, s in enumerate(sizes)]
    return torch.cat(rows)


def strategy(name):
    return GROUPINGS.get(name)


def test_by_prompt_groups_each_prompts_samples():
    c = ctx(6, 3)
    c.prompt_index = torch.tensor([1, 0, 1, 0, 1, 0])
    assert as_sets(strategy("by_prompt")(c)) == [{1, 3, 5}, {0, 2, 4}]


def test_random_groups_partition_with_leftover_policy():
    groups = strategy("random")(ctx(10, 4))  # 4 + 4 + 2: the 2 is >= min_group_size 2
    assert [len(g) for g in groups] == [4, 4, 2]
    assert sorted(torch.cat(groups).tolist()) == list(range(10))
    assert as_sets(strategy("random")(ctx(10, 4))) == as_sets(groups)  # same generator seed
    dropped = strategy("random")(ctx(9, 4))  # 4 + 4 + 1: the singleton is not trained
    assert [len(g) for g in dropped] == [4, 4]
    merged = strategy("random")(ctx(9, 4, options={"leftovers": "merge"}))
    assert sorted(len(g) for g in merged) == [4, 5]
    assert sorted(torch.cat(merged).tolist()) == list(range(9))
    capped = strategy("random")(ctx(8, 4, options={"max_group_size": 2}))
    assert [len(g) for g in capped] == [2, 2, 2, 2]


def test_performance_groups_sort_rewards_and_skip_nan():
    rewards = [0.1, 0.9, NAN, 0.5, 0.8, 0.2, 0.6, 0.4, 0.0]
    groups = strategy("performance")(ctx(9, 4, rewards))
    assert [g.tolist() for g in groups] == [[1, 4, 6, 3], [7, 5, 0, 8]]
    merged = strategy("performance")(ctx(9, 3, rewards, options={"leftovers": "merge",
                                                                  "min_group_size": 3}))
    # sorted: 1 4 6 | 3 7 5 | 0 8  -> the leftover pair joins the group nearest in reward
    assert as_sets(merged) == [{1, 4, 6}, {3, 7, 5, 0, 8}]


def test_semantic_groups_follow_embedding_clusters():
    emb = clusters([4, 4, 4])[torch.tensor([0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11])]
    groups = strategy("semantic")(ctx(12, 4, embeddings=emb))
    assert as_sets(groups) == [{0, 3, 6, 9}, {1, 4, 7, 10}, {2, 5, 8, 11}]
    assert needs_embeddings(strategy("semantic"), ctx())
    with pytest.raises(ValueError, match="needs ctx.embeddings"):
        strategy("semantic")(ctx(12, 4))


def test_semantic_threshold_makes_leftovers_of_outliers():
    emb = torch.cat([clusters([3]), torch.tensor([[0, 0, 0, 0, 0, 1.0]])])  # 3 alike + 1 outlier
    groups = strategy("semantic")(ctx(4, 4, embeddings=emb))
    assert as_sets(groups) == [{0, 1, 2}]
    merged = strategy("semantic")(ctx(4, 4, embeddings=emb, options={"leftovers": "merge"}))
    assert as_sets(merged) == [{0, 1, 2, 3}]


def test_dynamic_groups_vary_in_size_and_respect_the_cap():
    emb = clusters([5, 2, 1])
    groups = strategy("dynamic")(ctx(8, 4, embeddings=emb))
    assert as_sets(groups) == [{0, 1, 2, 3, 4}, {5, 6}]  # the singleton is a leftover
    capped = strategy("dynamic")(ctx(8, 4, embeddings=emb, options={"max_group_size": 3}))
    assert [len(g) for g in capped] == [3, 2, 2]
    loose = strategy("dynamic")(ctx(8, 4, embeddings=emb, options={"similarity_threshold": -1.0}))
    assert [len(g) for g in loose] == [8]


def test_dynamic_keeps_the_most_similar_when_capped():
    base = torch.tensor([1.0, 0, 0])
    emb = torch.stack([base, torch.tensor([1.0, 0.6, 0]), torch.tensor([1.0, 0.05, 0]),
                       torch.tensor([1.0, 0.1, 0])])
    groups = strategy("dynamic")(ctx(4, 2, embeddings=emb, options={"max_group_size": 3,
                                                                      "similarity_threshold": 0.5}))
    assert groups[0].tolist() == [0, 2, 3]  # not [0, 1, 2]: 1 is the least similar to 0


def test_zscore_guards_constant_and_nan_values():
    assert zscore(torch.tensor([2.0, 2.0, 2.0])).tolist() == [0.0, 0.0, 0.0]
    z = zscore(torch.tensor([1.0, NAN, 3.0]))
    assert z.tolist() == pytest.approx([-1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)])


def test_multi_criteria_affinity_formula():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    rewards, diversity = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([5.0, 5.0, 5.0])
    w = {"embedding": 0.4, "reward": 0.3, "diversity": 0.3}
    aff = multi_criteria_affinity(emb, rewards, diversity, w)
    cos01, cos02 = 0.0, 1 / math.sqrt(2)
    assert aff[0, 1] == pytest.approx(0.4 * cos01 + 0.3 * 1.0)  # z-scores -1, 0, 1; std 1
    assert aff[0, 2] == pytest.approx(0.4 * cos02 + 0.3 * 2.0)
    assert torch.isfinite(aff).all()  # constant diversity: no division by zero


def test_multi_criteria_reward_weight_sign_picks_contrast_or_alike():
    emb = torch.ones(8, 3)  # embeddings say nothing: rewards decide
    rewards = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    options = {"diversity_column": "div", "weights": {"embedding": 0.0, "reward": 1.0, "diversity": 0.0}}
    columns = {"div": [1.0] * 8}
    contrast = strategy("multi_criteria")(ctx(8, 4, rewards, emb, options=options, columns=columns))
    assert all(len({rewards[i] for i in g.tolist()}) == 2 for g in contrast)
    options["weights"] = {"embedding": 0.0, "reward": -1.0, "diversity": 0.0}
    alike = strategy("multi_criteria")(ctx(8, 4, rewards, emb, options=options, columns=columns))
    assert all(len({rewards[i] for i in g.tolist()}) == 1 for g in alike)
    with pytest.raises(ConfigError, match=r"diversity_column.*did you mean 'div'"):
        strategy("multi_criteria")(ctx(8, 4, rewards, emb, options={"diversity_column": "dvi"},
                                       columns=columns))


def test_adaptive_follows_progress_stages():
    stages = [{"until": 0.3, "strategy": "random"}, {"until": 0.7, "strategy": "performance"},
              {"until": 1.0, "strategy": "semantic"}]
    picks = [adaptive_strategy(stages, p) for p in (0.0, 0.29, 0.3, 0.69, 0.7, 1.0, 1.5)]
    assert picks == ["random", "random", "performance", "performance", "semantic", "semantic",
                     "semantic"]
    adaptive = strategy("adaptive")
    early, late = ctx(8, 4, step=0, total_steps=10), ctx(8, 4, step=8, total_steps=10)
    assert not needs_embeddings(adaptive, early) and needs_embeddings(adaptive, late)
    rewards = [0.1, 0.9, 0.5, 0.8, 0.2, 0.6, 0.4, 0.0]
    mid = ctx(8, 4, rewards, step=5, total_steps=10)
    assert [g.tolist() for g in adaptive(mid)] == [[1, 3, 5, 2], [6, 4, 0, 7]]  # performance


def test_adaptive_stage_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"stages\[1\]\.until.*greater"):
        check_stages([{"until": 0.5, "strategy": "random"}, {"until": 0.5, "strategy": "semantic"}])
    with pytest.raises(ConfigError, match=r"stages\[0\]\.strategy.*did you mean 'semantic'"):
        check_stages([{"until": 1.0, "strategy": "semantik"}])
    with pytest.raises(ConfigError, match="cannot be 'adaptive'"):
        check_stages([{"until": 1.0, "strategy": "adaptive"}])


def chat(context_user, context_reply, question):
    return [{"role": "user", "content": context_user}, {"role": "assistant", "content": context_reply},
            {"role": "user", "content": question}]


def test_conversation_context_drops_the_last_user_turn():
    assert conversation_context(chat("hi, I'm Ana", "hello Ana", "my name?")) == \
        "user: hi, I'm Ana\nassistant: hello Ana"
    assert conversation_context("plain prompt") == "plain prompt"


def test_context_groups_by_conversation_across_prompts():
    a1, a2 = chat("I'm Ana", "Hi Ana", "name?"), chat("I'm Ana", "Hi Ana", "weather?")
    b1 = chat("I'm Bo", "Hi Bo", "name?")
    prompts = [a1, a1, b1, b1, a2, a2]  # 3 prompts x 2 samples, two share a context
    groups = strategy("context")(ctx(6, 2, prompts=prompts))
    assert as_sets(groups) == [{0, 1, 4, 5}, {2, 3}]
    assert strategy("dialogue") is not strategy("context")
    assert as_sets(strategy("dialogue")(ctx(6, 2, prompts=prompts))) == as_sets(groups)
    capped = strategy("context")(ctx(6, 2, prompts=prompts, options={"max_group_size": 3}))
    assert as_sets(capped) == [{0, 1, 4}, {2, 3}]  # the leftover {5} is dropped
    merged = strategy("context")(ctx(6, 2, prompts=prompts,
                                     options={"max_group_size": 3, "leftovers": "merge"}))
    assert as_sets(merged) == [{0, 1, 4, 5}, {2, 3}]  # merged into its own conversation only


def test_context_leftover_never_merges_into_another_conversation():
    prompts = [chat("a", "b", "c")] * 3 + [chat("x", "y", "z")]
    groups = strategy("context")(ctx(4, 2, prompts=prompts, options={"leftovers": "merge"}))
    assert as_sets(groups) == [{0, 1, 2}]


def test_context_column_and_its_errors():
    columns = {"conversation_id": [7, 7, 3, 3, 7, 7]}
    groups = strategy("context")(ctx(6, 2, prompts=["p"] * 6, columns=columns))
    assert as_sets(groups) == [{0, 1, 4, 5}, {2, 3}]
    with pytest.raises(ConfigError, match=r"context_column: the data has no column 'dialog'"):
        strategy("context")(ctx(6, 2, prompts=["p"] * 6, columns=columns,
                                options={"context_column": "dialog"}))


def test_context_embedding_match_groups_similar_contexts():
    prompts = [chat("order late", "sorry", "q1")] * 2 + [chat("order delayed", "sorry", "q2")] * 2 \
        + [chat("hello", "hi", "q3")] * 2
    seen = []

    def embed(texts):
        seen.append(texts)
        return torch.tensor([[1.0, 0.1] if "order" in t else [0.0, 1.0] for t in texts])

    options = {"context_match": "embedding", "similarity_threshold": 0.9}
    groups = strategy("context")(ctx(6, 2, prompts=prompts, embed=embed, options=options))
    assert as_sets(groups) == [{0, 1, 2, 3}, {4, 5}]
    assert len(seen) == 1 and len(seen[0]) == 3  # each distinct context embedded once


def test_size_policy():
    a, b, c = torch.tensor([0, 1, 2]), torch.tensor([3, 4]), torch.tensor([5])
    assert as_sets(apply_size_policy([a, b, c], 2)) == [{0, 1, 2}, {3, 4}]
    affinity = torch.zeros(6, 6)
    affinity[5, 3] = affinity[5, 4] = 1.0
    assert as_sets(apply_size_policy([a, b, c], 2, "merge", affinity)) == [{0, 1, 2}, {3, 4, 5}]
    assert as_sets(apply_size_policy([a, b, c], 2, "merge")) == [{0, 1, 2}, {3, 4, 5}]  # smallest
    lonely = [torch.tensor([0]), torch.tensor([1])]
    assert as_sets(apply_size_policy(lonely, 2, "merge")) == [{0, 1}]
    assert apply_size_policy(lonely, 2, "drop") == []
    with pytest.raises(ConfigError, match=r"leftovers: unknown value 'keep'"):
        apply_size_policy(lonely, 2, "keep")


def test_group_quality_metrics_by_hand():
    rewards = torch.tensor([1.0, 0.0, 2.0, 2.0, NAN, 5.0], dtype=torch.float64)
    groups = [torch.tensor([0, 1]), torch.tensor([2, 3, 4])]  # sample 5 is ungrouped
    m = group_quality_metrics(groups, 6, rewards)
    assert {k: float(v) for k, v in m.items()} == pytest.approx({
        "group/num_groups": 2, "group/mean_size": 2.5, "group/min_size": 2, "group/max_size": 3,
        "group/ungrouped_frac": 1 / 6, "group/reward_std_within": math.sqrt(0.5) / 2,
        "group/zero_variance_frac": 0.5})
    assert "group/cohesion" not in m
    empty = group_quality_metrics([], 4, rewards[:4])
    assert float(empty["group/ungrouped_frac"]) == 1.0 and float(empty["group/num_groups"]) == 0


def seed_monitor_group_quality(groups, embeddings):  # the seed's formula, verbatim
    group_qualities = []
    for group in groups:
        group_embeddings = embeddings[group]
        centroid = group_embeddings.mean(dim=0)
        distances = torch.norm(group_embeddings - centroid, dim=1)
        quality = 1.0 / (1.0 + distances.mean())
        group_qualities.append(quality)
    return torch.tensor(group_qualities).mean()


def test_cohesion_is_the_seed_formula_on_unit_embeddings():
    emb = torch.randn(9, 5, generator=torch.Generator().manual_seed(1)).double()
    groups = [torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7, 8])]
    raw = group_cohesion(groups, emb, normalize=False)
    assert float(raw) == pytest.approx(float(seed_monitor_group_quality(groups, emb)))
    unit = torch.nn.functional.normalize(emb, dim=-1)
    assert float(group_cohesion(groups, emb)) == pytest.approx(
        float(seed_monitor_group_quality(groups, unit)))
    tight = clusters([4, 4])
    good = group_cohesion([torch.arange(4), torch.arange(4, 8)], tight)
    mixed = group_cohesion([torch.tensor([0, 1, 4, 5]), torch.tensor([2, 3, 6, 7])], tight)
    assert float(good) > 0.95 > float(mixed)
    m = group_quality_metrics(groups, 9, torch.zeros(9), emb)
    assert float(m["group/cohesion"]) == pytest.approx(float(group_cohesion(groups, emb)))
