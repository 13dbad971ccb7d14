"""Models and tokenizers: local Hugging Face directories or built-in tiny ones."""

from rlfoundry.models.loading import load_model, load_tokenizer
from rlfoundry.models.tiny import build_model, build_tokenizer

__all__ = ["build_model", "build_tokenizer", "load_model", "load_tokenizer"]
