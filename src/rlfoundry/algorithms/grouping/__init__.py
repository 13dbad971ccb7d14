"""Group formation for GRPO: which samples share a baseline.

A grouping strategy is ``strategy(ctx: GroupingContext) -> list[LongTensor]``: disjoint
groups of sample indices. ``algorithm.group_strategy`` picks a registered one; options live
in ``algorithm.grouping``. Built in (``rlfoundry list`` prints them):

=================  ==================================================================
``by_prompt``      the G completions of each prompt (the GRPO default)
``random``         random groups of ``group_size`` across prompts
``performance``    groups of similar reward (sorted, then cut)
``semantic``       most similar embeddings, up to ``max_group_size`` (default group_size)
``dynamic``        all samples above ``similarity_threshold``, up to ``max_group_size``
``multi_criteria`` one affinity of embedding similarity, reward and diversity contrast
``adaptive``       switches strategy with training progress (``stages``)
``context``        same conversation context (alias ``dialogue``)
=================  ==================================================================

Sizes and leftovers: a group smaller than ``min_group_size`` (default 2) is a leftover.
``leftovers: drop`` (default) leaves its samples in no group: they get advantage 0 and are
not trained this step (the group-size metrics count them in ``group/ungrouped_frac``).
``leftovers: merge`` adds each leftover sample to the kept group most similar to it, which
may exceed ``max_group_size``. Details in :mod:`rlfoundry.algorithms.grouping.base`.

Embeddings (semantic, dynamic, multi_criteria, context with ``context_match: embedding``):
``embedding: policy`` mean-pools the policy's hidden states over the completion (or prompt
and completion, ``embedding_text``); a sentence encoder can be named instead
(:mod:`rlfoundry.algorithms.grouping.embeddings`).
"""

from rlfoundry.algorithms.grouping.base import (
    GROUPINGS,
    GroupingContext,
    GroupingStrategy,
    apply_size_policy,
    default_options,
    needs_embeddings,
)
from rlfoundry.algorithms.grouping.context import (
    context_groups,
    conversation_context,
    conversation_text,
)
from rlfoundry.algorithms.grouping.quality import group_cohesion, group_quality_metrics
from rlfoundry.algorithms.grouping.similarity import (
    cosine_similarity_matrix,
    embedding_novelty,
    greedy_similarity_groups,
    zscore,
)
from rlfoundry.algorithms.grouping.strategies import (
    adaptive_groups,
    adaptive_strategy,
    by_prompt,
    check_stages,
    dynamic_groups,
    multi_criteria_affinity,
    multi_criteria_groups,
    performance_groups,
    random_groups,
    semantic_groups,
)

__all__ = [
    "GROUPINGS",
    "GroupingContext",
    "GroupingStrategy",
    "adaptive_groups",
    "adaptive_strategy",
    "apply_size_policy",
    "by_prompt",
    "check_stages",
    "context_groups",
    "conversation_context",
    "conversation_text",
    "cosine_similarity_matrix",
    "default_options",
    "dynamic_groups",
    "embedding_novelty",
    "greedy_similarity_groups",
    "group_cohesion",
    "group_quality_metrics",
    "multi_criteria_affinity",
    "multi_criteria_groups",
    "needs_embeddings",
    "performance_groups",
    "random_groups",
    "semantic_groups",
    "zscore",
]
