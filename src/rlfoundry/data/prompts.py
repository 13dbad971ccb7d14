"""Prompt-only data (for GRPO and generation) and the prompt helpers shared with preferences.

A prompt is either a plain string or a conversation: a list of ``{"role", "content"}``
messages. A string is tokenized as is, with the tokenizer's default special tokens (so a BOS
is added if the tokenizer adds one). A conversation is rendered with the tokenizer's chat
template and the generation prompt (the assistant header) and then tokenized without extra
special tokens, since the template writes its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from rlfoundry.data.row_dataset import RowDataset
from rlfoundry.data.row_policy import SHOWN, logger
from rlfoundry.errors import ConfigError, DataError
from rlfoundry.registry import did_you_mean
from rlfoundry.safe_text import short_repr

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, Any]
Content = str | list[Message]
PROMPT_TRUNCATION: tuple[str, ...] = ("truncate_prompt", "drop", "error")  # data.truncation


# --------------------------------------------------------------------------- validation


def missing_key_error(where: str, key: str, row: Mapping[str, Any]) -> DataError:
    """A DataError for a row lacking ``key``, suggesting a close present key."""
    present = ", ".join(repr(k) for k in row) or "(none)"
    return DataError(f"{where}: missing key '{key}'{did_you_mean(key, row)}; the row has {present}")


ROLE = re.compile(r"[A-Za-z][\w-]{0,63}")


def check_messages(value: Any, where: str, name: str) -> list[Message]:
    """Validate a list of ``{"role": str, "content": str}`` messages (extra keys are kept)."""
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: '{name}' must be a list of messages, got {type(value).__name__}")
    messages: list[Message] = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping):
            raise DataError(
                f"{where}: {name}[{i}] must be a {{'role', 'content'}} object, got {type(m).__name__}"
            )
        for key in ("role", "content"):
            if key not in m:
                raise missing_key_error(f"{where}: {name}[{i}]", key, m)
            if not isinstance(m[key], str):
                raise DataError(
                    f"{where}: {name}[{i}]['{key}'] must be a string, got {type(m[key]).__name__}"
                )
        if not ROLE.fullmatch(m["role"]):  # the template writes it verbatim: no markup in it
            raise DataError(
                f"{where}: {name}[{i}]['role'] must be a plain name such as 'user' or "
                f"'assistant' (letters, digits, _ and -), got {short_repr(m['role'])}")
        messages.append(dict(m))
    return messages


def check_content(value: Any, where: str, name: str, *, allow_empty: bool = False) -> Content:
    """Validate a string or a message list (a single message dict becomes a one-item list)."""
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise DataError(f"{where}: '{name}' is empty")
        return value
    if isinstance(value, Mapping) and "role" in value:
        value = [value]
    if isinstance(value, (list, tuple)):
        messages = check_messages(value, where, name)
        if not messages and not allow_empty:
            raise DataError(f"{where}: '{name}' is an empty message list")
        return messages
    raise DataError(
        f"{where}: '{name}' must be a string or a list of {{'role', 'content'}} messages, "
        f"got {type(value).__name__}"
    )


def split_columns(
    columns: Mapping[str, Sequence[Any] | None], extra_columns: Mapping[str, Sequence[Any]]
) -> list[dict[str, Any]]:
    """Turn equally long columns into row dicts; ``None`` columns are left out."""
    given = {k: v for k, v in {**columns, **extra_columns}.items() if v is not None}
    lengths = {k: len(v) for k, v in given.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise DataError(f"columns must all have the same length; got {detail}")
    n = next(iter(lengths.values()), 0)
    return [{k: v[i] for k, v in given.items()} for i in range(n)]


# --------------------------------------------------------------------------- rendering


def apply_template(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    *,
    add_generation_prompt: bool,
    where: str,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """Render messages to text with the tokenizer's chat template (DataError on failure);
    ``tools``: tool schemas the template shows the model (``apply_chat_template(tools=...)``)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(
            f"{where}: conversational rows need a tokenizer with a chat template; "
            "this tokenizer has none (set tokenizer.chat_template or use string rows)"
        )
    check_no_special_text(tokenizer, messages, where)
    try:
        extra = {"tools": tools} if tools else {}
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False, **extra
        )
    except Exception as e:  # template errors come from jinja and are of many types
        raise DataError(f"{where}: the chat template failed on this row: {e}") from e
    if not isinstance(text, str):
        raise DataError(f"{where}: the chat template returned {type(text).__name__}, not text")
    return text


def special_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The text of every special token (``<|eos|>``, ``<|im_start|>``, ...)."""
    named = getattr(tokenizer, "all_special_tokens", None) or []
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    added = [str(tok) for tok in decoder.values() if getattr(tok, "special", False)]
    return sorted({str(t) for t in [*named, *added] if str(t)})


def check_no_special_text(tokenizer: PreTrainedTokenizerBase, messages: list[Message],
                          where: str) -> None:
    """Message contents go through the chat template, whose output is tokenized with special
    tokens recognised (the template writes its own); so a content holding the *text* of a
    special token (``<|eos|>``) would become that control token. Such rows are errors."""
    markers = special_texts(tokenizer)
    for i, m in enumerate(messages):
        content = m.get("content")
        if not isinstance(content, str):
            continue
        for marker in markers:
            if marker in content:
                raise DataError(
                    f"{where}: message {i} contains the special-token text {marker!r}, which the "
                    "chat template would turn into a control token; remove or rewrite it "
                    "(plain string rows are tokenized with such text kept as ordinary text)")


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], *, special: bool,
           data_text: bool = False, where: Sequence[str] | None = None) -> list[list[int]]:
    """Token ids of each text (batched); ``special`` adds the tokenizer's default specials.

    ``data_text``: the texts come from data rows, so special-token text in them (``<|eos|>``)
    is tokenized as ordinary text (``split_special_tokens``) and never becomes a control
    token; a tokenizer that cannot do that raises :class:`DataError` naming ``where[i]``."""
    if not texts:
        return []
    if not data_text:
        return [list(x) for x in tokenizer(texts, add_special_tokens=special)["input_ids"]]
    ids = [list(x) for x in tokenizer(texts, add_special_tokens=special,
                                      split_special_tokens=True)["input_ids"]]
    # unknown characters legitimately become the unk token; every other special must not appear
    specials = set(getattr(tokenizer, "all_special_ids", None) or []) - {getattr(tokenizer, "unk_token_id", None)}
    if specials:
        added = sum(i in specials for i in tokenizer([""], add_special_tokens=special)["input_ids"][0])
        for n, row in enumerate(ids):
            if sum(i in specials for i in row) > added:
                place = where[n] if where is not None else f"text {n}"
                raise DataError(f"{place}: the text holds special-token text that this tokenizer "
                                "turns into control tokens even with split_special_tokens; remove it")
    return ids


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Content, where: str = "prompt",
                  tools: list[dict[str, Any]] | None = None) -> str:
    """The text a model is given: a string as is, messages via the chat template with the
    generation prompt (and the ``tools`` list, for rows of tool-use episodes)."""
    if isinstance(prompt, str):
        return prompt
    return apply_template(tokenizer, prompt, add_generation_prompt=True, where=where, tools=tools)


def keep_end(ids: list[int], limit: int | None) -> list[int]:
    """The last ``limit`` ids (all of them when ``limit`` is None)."""
    if limit is None or len(ids) <= limit:
        return ids
    return ids[len(ids) - limit :]


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class PromptExample:
    """One validated prompt row: the prompt, the other columns, and where it came from."""

    prompt: Content
    extras: dict[str, Any] = field(default_factory=dict)
    location: str = "<python>"
    index: int = 0

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


def _prompt_example(row: dict[str, Any], where: str, index: int) -> PromptExample:
    if "prompt" not in row:
        raise missing_key_error(where, "prompt", row)
    prompt = check_content(row["prompt"], where, "prompt")
    extras = {k: v for k, v in row.items() if k != "prompt"}
    return PromptExample(prompt, extras, where, index)


def tokenize_prompt(
    tokenizer: PreTrainedTokenizerBase,
    example: PromptExample | Content,
    max_prompt_length: int | None = None,
) -> list[int]:
    """Prompt token ids, keeping the *end* (nearest the answer) when longer than
    ``max_prompt_length``. Strings get the tokenizer's default special tokens; messages are
    rendered with the chat template and generation prompt, then tokenized without specials.
    A row's ``tools`` column (a list of tool schemas) goes to the template with the messages."""
    if max_prompt_length is not None and max_prompt_length < 1:
        raise ConfigError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
    tools = None
    if isinstance(example, PromptExample):
        prompt, where = example.prompt, example.location
        tools = example.extras.get("tools")
        if tools is not None and not (isinstance(tools, list)
                                      and all(isinstance(t, Mapping) for t in tools)):
            raise DataError(f"{where}: 'tools' must be a list of tool schemas (objects), "
                            f"got {type(tools).__name__}")
    else:
        where = "prompt"
        prompt = check_content(example, where, "prompt", allow_empty=True)
    text = render_prompt(tokenizer, prompt, where, tools)
    plain = isinstance(prompt, str)
    ids = encode(tokenizer, [text], special=plain, data_text=plain, where=[where])[0]
    return keep_end(ids, max_prompt_length)


class PromptDataset(RowDataset[PromptExample]):
    """Prompts plus any other columns (e.g. ``answer``), kept per example for reward functions.

    ``PromptDataset(prompts=[...], answer=[...])`` builds one from columns;
    :meth:`from_rows` takes a file path, a ``datasets.Dataset`` or a list of row dicts with a
    ``prompt`` key; :meth:`from_file` reads a file. Indexing gives a :class:`PromptExample`.
    """

    TEXT_COLUMNS = ("prompt",)

    def __init__(self, prompts: Sequence[Content], **extra_columns: Sequence[Any]) -> None:
        if isinstance(prompts, (str, bytes)):
            raise DataError("prompts must be a list of prompts, not a single string")
        rows = split_columns({"prompt": prompts}, extra_columns)
        self._build(rows, [f"<python>[row {i}]" for i in range(len(rows))])

    def _example(self, row: dict[str, Any], where: str, index: int) -> PromptExample:
        return _prompt_example(row, where, index)

    def __repr__(self) -> str:
        extras = sorted({k for e in self.examples for k in e.extras})
        return f"PromptDataset({len(self)} rows, extras={extras})"

    def tokenize(
        self, tokenizer: PreTrainedTokenizerBase, max_prompt_length: int | None = None,
        truncation: str = "truncate_prompt", why: str = "",
    ) -> list[list[int]]:
        """Token ids of every prompt (see :func:`tokenize_prompt`).

        A prompt longer than ``max_prompt_length`` tokens follows ``truncation``:
        ``"truncate_prompt"`` keeps its end, ``"drop"`` removes the example from this data set
        (so ids and examples stay aligned; ``num_dropped`` and ``dropped_locations`` report
        it, and a warning names the first ones), ``"error"`` raises a :class:`DataError`
        naming the row. ``why`` says where the limit comes from, for the messages."""
        if truncation not in PROMPT_TRUNCATION:
            raise ConfigError(f"data.truncation: unknown value {truncation!r}"
                              f"{did_you_mean(truncation, PROMPT_TRUNCATION)}; choose one of: "
                              f"{', '.join(PROMPT_TRUNCATION)}")
        self.num_dropped, self.dropped_locations = 0, []
        if truncation == "truncate_prompt" or max_prompt_length is None:
            return [tokenize_prompt(tokenizer, e, max_prompt_length) for e in self.examples]
        kept: list[PromptExample] = []
        ids: list[list[int]] = []
        source = f" ({why})" if why else ""
        for example in self.examples:
            row = tokenize_prompt(tokenizer, example)
            if len(row) <= max_prompt_length:
                kept.append(replace(example, index=len(kept)))
                ids.append(row)
            elif truncation == "error":
                raise DataError(
                    f"{example.location}: the prompt has {len(row)} tokens, more than the limit of "
                    f"{max_prompt_length}{source}; shorten it, or set data.truncation to "
                    "'truncate_prompt' (keep its end) or 'drop'")
            else:
                self.dropped_locations.append(example.location)
        self.num_dropped = len(self.dropped_locations)
        if not kept:
            raise DataError(f"all {len(self.examples)} prompts are longer than {max_prompt_length} "
                            f"tokens{source} and were dropped (data.truncation=drop)")
        if self.num_dropped:
            logger.warning("dropped %d of %d prompts longer than %d tokens%s (data.truncation="
                           "drop); first: %s", self.num_dropped, len(self.examples),
                           max_prompt_length, source, ", ".join(self.dropped_locations[:SHOWN]))
        self.examples = kept
        return ids
