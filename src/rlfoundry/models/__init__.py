"""Models and tokenizers: local Hugging Face directories or built-in tiny ones."""

from rlfoundry.models.loading import build_policy, load_model, load_tokenizer, prepare_policy
from rlfoundry.models.tiny import build_model, build_tokenizer

__all__ = ["build_model", "build_policy", "build_tokenizer", "load_model", "load_tokenizer",
           "prepare_policy"]
