"""Built-in tiny models and a tokenizer built locally, so everything runs with no hub access.

The tokenizer is byte-level with no merges: every UTF-8 byte is one token, plus a few
special tokens and a small chat template. Digits and letters are single tokens, which
suits the toy tasks (sorting, addition) the tests and the demo use.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]

# With ``tools`` (``apply_chat_template(tools=...)``) a system turn lists the tool names first;
# a tool result is a ``tool`` turn. Without tools the text is unchanged (tests pin it).
CHAT_TEMPLATE = (
    "{% if tools %}<|system|>tools:{% for t in tools %} "
    "{{ (t['function'] if 'function' in t else t)['name'] }}{% endfor %}<|eos|>{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eos|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# name -> Qwen2 architecture sizes. "tiny" is the default for tests and the demo.
SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                 num_attention_heads=6, num_key_value_heads=2),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                  num_attention_heads=8, num_key_value_heads=4),
}
BUILTIN_PREFIX = "builtin:"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (256 byte tokens + special tokens) with a chat template."""
    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(byte_vocab):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def build_model(size: str = "tiny", tokenizer: PreTrainedTokenizerFast | None = None,
                seed: int = 0) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2-style causal LM (``tiny`` is about 1.6M parameters)."""
    if size not in SIZES:
        raise ValueError(f"unknown built-in model size '{size}'; choose from {sorted(SIZES)}")
    tokenizer = tokenizer or build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **SIZES[size],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
