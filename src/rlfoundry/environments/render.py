"""Token ids of an episode's conversation, rendered with the tokenizer's chat template.

The model's turns are never re-tokenized: the episode keeps the ids the engine sampled. What
this module tokenizes is everything else: the first prompt (the ``reset`` messages plus the
assistant header) and, after each model turn, the environment's part: the end of the
assistant turn the model did not write itself (e.g. ``<|im_end|>`` when the turn stopped at a
stop string rather than at EOS), the observation messages, and the next assistant header.

That part is found by rendering the conversation twice with the chat template, without and
with the observation, and taking the difference; so any template that renders a
conversation as a growing prefix works (Qwen/Hermes, Llama 3, ChatML, ...). Message contents
are stood in by placeholders while rendering and tokenized on their own with special-token
text kept as plain text, so an observation holding ``<|im_end|>`` (a tool printing it) can
never become a control token.
"""

from __future__ import annotations

import re
from typing import Any

from rlfoundry.data.prompts import special_texts
from rlfoundry.errors import DataError

Message = dict[str, Any]
_MARK = "\ue000{}\ue001"  # private-use characters: no template writes them
_PLACEHOLDER = re.compile("\ue000([0-9]+)\ue001")


def _stand_ins(messages: list[Message], start: int = 0) -> tuple[list[Message], list[str]]:
    """``messages`` with each content replaced by a numbered placeholder, and the contents."""
    out, contents = [], []
    for k, m in enumerate(messages):
        out.append({**m, "content": _MARK.format(start + k)})
        contents.append(str(m.get("content", "")))
    return out, contents


def _render(tokenizer, messages: list[Message], generation: bool, where: str,
            tools: list[dict[str, Any]] | None = None) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(f"{where}: environments need a tokenizer with a chat template; this "
                        "tokenizer has none (set tokenizer.chat_template)")
    extra = {"tools": tools} if tools else {}  # the environment's tool list (tools environment)
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False,
                                             **extra)
    except Exception as e:  # jinja raises many types
        raise DataError(f"{where}: the chat template failed on the episode's messages: {e}") from e
    if not isinstance(text, str):
        raise DataError(f"{where}: the chat template returned {type(text).__name__}, not text")
    return text


def _encode(tokenizer, text: str, contents: dict[int, str]) -> list[int]:
    """Ids of ``text``: template text with special tokens recognised, placeholders replaced
    (in one pass) by their contents. When a content holds special-token text, each content
    is tokenized on its own as plain text; else the whole text is tokenized at once."""
    pieces = _PLACEHOLDER.split(text)  # [template, index, template, index, ..., template]
    for k in pieces[1::2]:
        if int(k) not in contents:
            raise DataError(f"internal: placeholder {k} has no content")
    markers = special_texts(tokenizer)
    if not any(marker in c for c in contents.values() for marker in markers):
        joined = "".join(p if j % 2 == 0 else contents[int(p)] for j, p in enumerate(pieces))
        return [int(i) for i in tokenizer(joined, add_special_tokens=False)["input_ids"]]
    ids: list[int] = []
    for j, piece in enumerate(pieces):
        if j % 2 == 0:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
        elif contents[int(piece)]:
            ids += tokenizer(contents[int(piece)], add_special_tokens=False,
                             split_special_tokens=True)["input_ids"]
    return [int(i) for i in ids]


def prompt_ids(tokenizer, messages: list[Message], where: str,
               tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Ids of the episode's first prompt: ``messages`` rendered with the assistant header
    (and ``tools``, the schemas the template lists, when given)."""
    shown, contents = _stand_ins(messages)
    return _encode(tokenizer, _render(tokenizer, shown, True, where, tools), dict(enumerate(contents)))


def observation_ids(tokenizer, history: list[Message], turn_end_text: str | None,
                    observation: list[Message], where: str,
                    tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Ids the environment adds after a model turn: the rest of the assistant turn's closing,
    the ``observation`` messages and the next assistant header.

    ``history`` is the conversation up to and including the model's turn (its last message);
    ``turn_end_text`` is the text of the token that ended the turn when it was an end token
    the model sampled (EOS), else None (stop string, length cap): then the closing the
    template writes after an assistant message is added here."""
    shown, contents = _stand_ins(history + observation)
    before, turn, obs = shown[:len(history) - 1], shown[len(history) - 1], shown[len(history):]
    opened = _render(tokenizer, before, True, where, tools)
    closed = _render(tokenizer, before + [turn], False, where, tools)
    full = _render(tokenizer, before + [turn] + obs, True, where, tools)
    mark = turn["content"]
    if not closed.startswith(opened) or not closed[len(opened):].startswith(mark) or not full.startswith(closed):
        raise DataError(
            f"{where}: the chat template does not render the conversation as a growing prefix "
            "(adding a message changes the text before it), so the environment's tokens cannot "
            "be appended to the sampled ones; use a template that renders each message in turn")
    closing = closed[len(opened) + len(mark):]
    if turn_end_text and closing.startswith(turn_end_text):
        closing = closing[len(turn_end_text):]  # the model sampled it
    first = len(history)
    return _encode(tokenizer, closing + full[len(closed):],
                   {first + k: contents[first + k] for k in range(len(observation))})
