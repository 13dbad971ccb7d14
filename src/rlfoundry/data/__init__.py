"""Data: reading rows, preference pairs and prompts, tokenization, collation, toy data sets."""

from rlfoundry.data.io import Row, load_rows, read_rows
from rlfoundry.data.preference import (
    PreferenceDataset,
    PreferenceExample,
    TokenizedPair,
    collate_preference,
    collate_preference_packed,
    packed_attention_mask,
)
from rlfoundry.data.prompts import PromptDataset, PromptExample, render_prompt, tokenize_prompt
from rlfoundry.data.synthetic import (
    builtin_dataset,
    make_addition_prompts,
    make_addition_sft,
    make_sort_preferences,
)

__all__ = [
    "PreferenceDataset",
    "PreferenceExample",
    "PromptDataset",
    "PromptExample",
    "Row",
    "TokenizedPair",
    "builtin_dataset",
    "collate_preference",
    "collate_preference_packed",
    "load_rows",
    "make_addition_prompts",
    "make_addition_sft",
    "make_sort_preferences",
    "packed_attention_mask",
    "read_rows",
    "render_prompt",
    "tokenize_prompt",
]
