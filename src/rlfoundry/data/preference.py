"""Preference pairs (a prompt, a chosen and a rejected completion) for DPO-style training.

Row formats (one data set may mix standard and conversational rows, but not explicit and
implicit prompts):

* **standard**: ``prompt``, ``chosen`` and ``rejected`` are strings.
* **conversational**: ``prompt`` is a list of ``{"role", "content"}`` messages; ``chosen``
  and ``rejected`` are lists of (assistant) messages, or strings, which become one
  assistant message each.
* **implicit prompt**: no ``prompt`` column. For strings, the prompt is the longest common
  prefix of ``chosen`` and ``rejected``, cut back to just after its last whitespace
  character so that no word is split between prompt and completion (when the prefix holds
  no whitespace it is kept whole); it is also shortened so that both completions keep at
  least one character. For message lists, the prompt is the leading messages the two share
  (each side keeps at least one message).

Every other column is an *extra* (e.g. ``math_correctness``): it is kept per example and
delivered in collated batches (numbers and booleans as float tensors ``[B]``, anything else
as a Python list).

Token layouts and the log-prob convention: :func:`collate_preference` builds one batch of
``2B`` rows (``prompt+chosen`` for rows ``0..B-1`` then ``prompt+rejected``), right-padded,
with ``loss_mask`` 1 on completion tokens only. Logits at position ``t`` predict token
``t+1``, so callers use ``labels = input_ids[:, 1:]`` and ``mask = loss_mask[:, 1:]``.
:func:`collate_preference_packed` builds ``B`` rows instead, ``prompt+chosen+rejected``, so
the prompt is run through the model once per pair; an attention mask keeps the rejected
tokens from seeing the chosen ones, which gives exactly the log-probs of the ``2B``-row layout
(see :func:`packed_attention_mask`).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from rlfoundry.data.padding import pad_prompt_completions
from rlfoundry.data.prompts import (
    Content,
    Message,
    apply_template,
    check_content,
    encode,
    missing_key_error,
    split_columns,
)
from rlfoundry.data.row_dataset import RowDataset
from rlfoundry.data.row_policy import SHOWN, RowReport, logger, source_label
from rlfoundry.errors import ConfigError, DataError
from rlfoundry.registry import did_you_mean

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Truncation = Literal["truncate_prompt", "drop", "error"]
TRUNCATION_POLICIES: tuple[str, ...] = ("truncate_prompt", "drop", "error")

# Keys collate_preference writes itself; an extra column may not reuse them.
BATCH_KEYS = frozenset({
    "input_ids", "attention_mask", "loss_mask", "index",
    "prompt_token_counts", "chosen_token_counts", "rejected_token_counts",
    "position_ids", "segment_ids", "logp_source", "logp_target", "logp_sequence", "logp_column",
    "logp_width",
})


@dataclass(frozen=True)
class PreferenceExample:
    """One validated, normalized row. In a conversational example ``prompt``, ``chosen`` and
    ``rejected`` are all message lists; in a standard one they are all strings."""

    prompt: Content
    chosen: Content
    rejected: Content
    extras: dict[str, Any] = field(default_factory=dict)
    location: str = "<python>"
    index: int = 0

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


@dataclass
class TokenizedPair:
    """Token ids of one example: the prompt and the two completions (without the prompt)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    extras: dict[str, Any]
    location: str
    index: int
    truncated: bool = False

    @property
    def length(self) -> int:
        """Tokens of the longer of the two sequences (prompt + completion)."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))

    @property
    def packed_length(self) -> int:
        """Tokens of the pair's row in the packed layout (prompt + chosen + rejected)."""
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


class PreferenceDataset(RowDataset[PreferenceExample]):
    """Validated preference pairs.

    Build one from columns (the prompt is implicit when ``prompts`` is None)::

        PreferenceDataset(chosen_data=chosen, rejected_data=rejected)
        PreferenceDataset(chosen_data=c, rejected_data=r, prompts=p, math_correctness=scores)

    or from rows with :meth:`from_rows` (a path, a ``datasets.Dataset``, a DataFrame or a
    list of dicts) or :meth:`from_file`. Invalid rows raise :class:`DataError` naming the
    row's location. ``len()`` and indexing give :class:`PreferenceExample` objects;
    :meth:`tokenize` turns them into :class:`TokenizedPair` objects.
    """

    TEXT_COLUMNS = ("prompt", "chosen", "rejected")

    def __init__(
        self,
        chosen_data: Sequence[Content],
        rejected_data: Sequence[Content],
        prompts: Sequence[Content] | None = None,
        **extra_columns: Sequence[Any],
    ) -> None:
        for name, col in (("chosen_data", chosen_data), ("rejected_data", rejected_data),
                          ("prompts", prompts)):
            if isinstance(col, (str, bytes)):
                raise DataError(f"{name} must be a list (one item per example), not a string")
        rows = split_columns(
            {"prompt": prompts, "chosen": chosen_data, "rejected": rejected_data}, extra_columns
        )
        self._build(rows, [f"<python>[row {i}]" for i in range(len(rows))])

    # ------------------------------------------------------------------ building

    def _build(self, rows: list[dict[str, Any]], locations: list[str], on_bad_row: str = "error",
               duplicates: str = "keep", report: RowReport | None = None) -> None:
        # without any 'prompt' column, prompts are the shared start of chosen and rejected
        self.implicit_prompt = bool(rows) and not any("prompt" in row for row in rows)
        if self.implicit_prompt:
            hint = did_you_mean("prompt", [k for k in rows[0] if k not in ("chosen", "rejected")])
            if hint:
                warnings.warn(
                    f"{locations[0]}: no 'prompt' column, so prompts are taken from the shared "
                    f"start of chosen/rejected{hint}",
                    stacklevel=3,
                )
        super()._build(rows, locations, on_bad_row, duplicates, report)
        identical = [e.location for e in self.examples if e.chosen == e.rejected]
        self.num_identical = len(identical)
        _check_identical(identical, len(self.examples))
        self.num_dropped = 0
        self.dropped_locations: list[str] = []
        self.num_truncated = 0

    def _example(self, row: dict[str, Any], where: str, index: int) -> PreferenceExample:
        return _normalize(row, where, index, self.implicit_prompt)

    def __repr__(self) -> str:
        conv = sum(e.conversational for e in self.examples)
        extras = sorted({k for e in self.examples for k in e.extras})
        return (f"PreferenceDataset({len(self)} rows, {conv} conversational, "
                f"implicit_prompt={self.implicit_prompt}, extras={extras})")

    @property
    def extra_columns(self) -> list[str]:
        """Names of the extra columns, in first-seen order."""
        return list(dict.fromkeys(k for e in self.examples for k in e.extras))

    # ------------------------------------------------------------------ tokenizing

    def tokenize(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 512,
        max_prompt_length: int | None = None,
        truncation: Truncation = "truncate_prompt",
    ) -> list[TokenizedPair]:
        """Tokenize every example, applying a length policy.

        Rendering: a standard row's prompt is tokenized with the tokenizer's default special
        tokens (a BOS is added if the tokenizer adds one); each completion is tokenized
        without them and gets the EOS id appended unless it already ends with it. A
        conversational row's prompt is the chat template applied to the prompt messages
        with the generation prompt; the completion is the rest of the template applied to
        prompt + completion messages (it must start with the prompt text); both are
        tokenized without extra special tokens (the template ends the turn itself).

        A row is *too long* when its prompt has more than ``max_prompt_length`` tokens (if
        set) or prompt + longer completion has more than ``max_length``. ``truncation``:

        * ``"truncate_prompt"`` (default): first keep the last ``max_prompt_length`` prompt
          tokens (if set). If prompt + longer completion still exceeds ``max_length``, drop
          tokens from the *start* of the prompt (keeping the end, nearest the answer) as
          needed, but not below ``max_prompt_length`` tokens when that is set, nor below
          ``max_length // 2`` tokens when it is not. If it is still too long, cut both
          completions at the end to fit (the EOS is then lost). ``num_truncated`` counts
          the rows changed.
        * ``"drop"``: leave too-long rows out; ``num_dropped`` and ``dropped_locations``
          report them. A DataError is raised if every row is dropped.
        * ``"error"``: raise a DataError naming the first too-long row and its lengths.

        A row whose completion has no tokens is always an error.
        """
        if truncation not in TRUNCATION_POLICIES:
            raise ConfigError(
                f"unknown truncation '{truncation}'{did_you_mean(truncation, TRUNCATION_POLICIES)}; "
                f"choose from {', '.join(TRUNCATION_POLICIES)}"
            )
        if max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {max_length}")
        if max_prompt_length is not None and not 1 <= max_prompt_length < max_length:
            raise ConfigError(
                f"max_prompt_length must be between 1 and max_length - 1 ({max_length - 1}), "
                f"got {max_prompt_length}"
            )

        encoded = _encode_examples(tokenizer, self.examples)
        pairs: list[TokenizedPair] = []
        dropped: list[str] = []
        truncated = 0
        for ex, (p, c, r) in zip(self.examples, encoded):
            for name, ids in (("chosen", c), ("rejected", r)):
                if not ids:
                    raise DataError(f"{ex.location}: the {name} completion has no tokens")
            problem = _too_long(p, c, r, max_length, max_prompt_length)
            cut = False
            if problem is not None:
                if truncation == "error":
                    raise DataError(
                        f"{ex.location}: row too long: {problem}; raise the limit or use "
                        "truncation='truncate_prompt' or 'drop'"
                    )
                if truncation == "drop":
                    dropped.append(ex.location)
                    continue
                p, c, r = _truncate(p, c, r, max_length, max_prompt_length)
                cut = True
                truncated += 1
            pairs.append(TokenizedPair(p, c, r, dict(ex.extras), ex.location, ex.index, cut))

        self.num_dropped = len(dropped)
        self.dropped_locations = dropped
        self.num_truncated = truncated
        if not pairs:
            raise DataError(
                f"all {len(self)} rows are longer than max_length={max_length}"
                f"{'' if max_prompt_length is None else f' / max_prompt_length={max_prompt_length}'}"
                " and were dropped; raise the limits or use truncation='truncate_prompt'"
            )
        return pairs


# ---------------------------------------------------------------------- normalization


def _check_identical(locations: list[str], total: int) -> None:
    """A pair whose chosen and rejected are the same text teaches nothing (its DPO margin is 0
    whatever the model does). Every pair like that: a DataError; some: a warning with the
    count and the first locations."""
    if not locations:
        return
    first = ", ".join(locations[:SHOWN])
    if len(locations) == total:
        raise DataError(
            f"{source_label(locations)}: chosen == rejected in all {total} rows (first: {first}), "
            "so there is nothing to learn; check the column mapping of the data")
    logger.warning("%s: chosen == rejected in %d of %d rows (first: %s); they teach nothing",
                   source_label(locations), len(locations), total, first)



def _normalize(row: dict[str, Any], where: str, index: int, implicit: bool) -> PreferenceExample:
    for key in ("chosen", "rejected") if implicit else ("prompt", "chosen", "rejected"):
        if key not in row or row[key] is None:
            raise missing_key_error(where, key, row)
    chosen = check_content(row["chosen"], where, "chosen")
    rejected = check_content(row["rejected"], where, "rejected")
    extras = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")}
    clash = sorted(BATCH_KEYS.intersection(extras))
    if clash:
        raise DataError(
            f"{where}: column '{clash[0]}' has the name of a batch key; rename it "
            f"(reserved: {', '.join(sorted(BATCH_KEYS))})"
        )

    if implicit:
        if isinstance(chosen, str) != isinstance(rejected, str):
            raise DataError(
                f"{where}: 'chosen' and 'rejected' must both be strings or both message lists"
            )
        if isinstance(chosen, str) and isinstance(rejected, str):
            prompt: Content
            prompt, chosen, rejected = _split_text(chosen, rejected)
        else:
            assert isinstance(chosen, list) and isinstance(rejected, list)
            prompt, chosen, rejected = _split_messages(chosen, rejected)
        return PreferenceExample(prompt, chosen, rejected, extras, where, index)

    prompt = check_content(row["prompt"], where, "prompt", allow_empty=True)
    if isinstance(prompt, str):
        if not (isinstance(chosen, str) and isinstance(rejected, str)):
            raise DataError(
                f"{where}: message-list completions need a message-list prompt; "
                "the prompt here is a string"
            )
        return PreferenceExample(prompt, chosen, rejected, extras, where, index)
    return PreferenceExample(prompt, _as_messages(chosen), _as_messages(rejected), extras,
                             where, index)


def _as_messages(content: Content) -> list[Message]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    return content


def _split_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Longest common prefix as the prompt, cut back to just after whitespace."""
    limit = min(len(chosen), len(rejected)) - 1  # both completions keep >= 1 character
    n = 0
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    prefix = chosen[:n]
    last_space = max((i for i, ch in enumerate(prefix) if ch.isspace()), default=-1)
    if last_space >= 0:
        n = last_space + 1
    return chosen[:n], chosen[n:], rejected[n:]


def _split_messages(
    chosen: list[Message], rejected: list[Message]
) -> tuple[list[Message], list[Message], list[Message]]:
    """Shared leading messages as the prompt; each side keeps at least one message."""
    limit = min(len(chosen), len(rejected)) - 1
    n = 0
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


# ---------------------------------------------------------------------- tokenization


def _encode_examples(
    tokenizer: PreTrainedTokenizerBase, examples: list[PreferenceExample]
) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) ids per example, tokenizing in three batched calls.

    Text from a data row (a standard row's prompt and completions) is tokenized with
    special-token text kept as ordinary text, so ``<|eos|>`` written in data never becomes
    the real EOS; chat-template output is tokenized with special tokens recognised (the
    template writes them), and its message contents are checked for special-token text."""
    with_specials: list[str] = []  # standard prompts (data text)
    data_texts: list[str] = []  # standard completions (data text)
    templated: list[str] = []  # chat-template renderings
    slots: list[tuple[tuple[str, int], ...]] = []
    for ex in examples:
        if ex.conversational:
            assert isinstance(ex.prompt, list)
            prompt_text = apply_template(tokenizer, ex.prompt, add_generation_prompt=True,
                                         where=ex.location)
            completions = []
            for name, msgs in (("chosen", ex.chosen), ("rejected", ex.rejected)):
                assert isinstance(msgs, list)
                full = apply_template(tokenizer, ex.prompt + msgs, add_generation_prompt=False,
                                      where=ex.location)
                if not full.startswith(prompt_text):
                    raise DataError(
                        f"{ex.location}: the chat template does not render the prompt as a "
                        f"prefix of prompt + {name}, so the completion cannot be separated"
                    )
                completions.append(full[len(prompt_text):])
            start = len(templated)
            templated.extend([prompt_text, *completions])
            slots.append((("t", start), ("t", start + 1), ("t", start + 2)))
        else:
            assert isinstance(ex.prompt, str)
            slots.append((("s", len(with_specials)), ("d", len(data_texts)),
                          ("d", len(data_texts) + 1)))
            with_specials.append(ex.prompt)
            data_texts.extend([ex.chosen, ex.rejected])  # type: ignore[list-item]

    standard = [ex.location for ex in examples if not ex.conversational]
    ids = {
        "s": encode(tokenizer, with_specials, special=True, data_text=True, where=standard),
        "d": encode(tokenizer, data_texts, special=False, data_text=True,
                    where=[w for w in standard for _ in (0, 1)]),
        "t": encode(tokenizer, templated, special=False),
    }
    eos = tokenizer.eos_token_id
    out = []
    for ex, ((pb, pi), (cb, ci), (rb, ri)) in zip(examples, slots):
        p, c, r = ids[pb][pi], ids[cb][ci], ids[rb][ri]
        if not ex.conversational and eos is not None:
            c = c if c and c[-1] == eos else [*c, eos]
            r = r if r and r[-1] == eos else [*r, eos]
        out.append((p, c, r))
    return out


def _too_long(
    p: list[int], c: list[int], r: list[int], max_length: int, max_prompt_length: int | None
) -> str | None:
    longest = max(len(c), len(r))
    if max_prompt_length is not None and len(p) > max_prompt_length:
        return f"prompt has {len(p)} tokens, max_prompt_length is {max_prompt_length}"
    if len(p) + longest > max_length:
        return (f"prompt {len(p)} + longest completion {longest} = {len(p) + longest} tokens, "
                f"max_length is {max_length}")
    return None


def _truncate(
    p: list[int], c: list[int], r: list[int], max_length: int, max_prompt_length: int | None
) -> tuple[list[int], list[int], list[int]]:
    """The ``truncate_prompt`` policy (see :meth:`PreferenceDataset.tokenize`)."""
    if max_prompt_length is not None and len(p) > max_prompt_length:
        p = p[len(p) - max_prompt_length:]
    longest = max(len(c), len(r))
    if len(p) + longest > max_length:
        floor = len(p) if max_prompt_length is not None else min(len(p), max_length // 2)
        keep = max(max_length - longest, floor)
        if keep < len(p):
            p = p[len(p) - keep:]
        room = max_length - len(p)  # >= 1 because the prompt is kept below max_length
        c, r = c[:room], r[:room]
    return p, c, r


# ---------------------------------------------------------------------- collation


def collate_preference(
    pairs: Sequence[TokenizedPair], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """One right-padded batch of ``2B`` rows for a single forward pass.

    Rows ``0..B-1`` are prompt+chosen and rows ``B..2B-1`` prompt+rejected, in the order of
    ``pairs``. Returns ``input_ids`` (long ``[2B, T]``), ``attention_mask`` (long, 1 on real
    tokens), ``loss_mask`` (float, 1 on completion tokens only), ``prompt_token_counts``
    (long ``[B]``), ``chosen_token_counts`` / ``rejected_token_counts`` (float ``[B]``),
    ``index`` (long ``[B]``, data set indices) and one entry per extra column: a float
    tensor ``[B]`` when every value is a number or boolean, else a list. ``T`` is the
    longest row, rounded up to a multiple of ``pad_to_multiple_of`` if given. Logits at
    position ``t`` predict token ``t+1``: use ``input_ids[:, 1:]`` and ``loss_mask[:, 1:]``.
    """
    if not pairs:
        raise ValueError("collate_preference needs at least one pair")
    prompts = [p.prompt_ids for p in pairs] * 2  # chosen rows first, then rejected rows
    completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    t = max(len(p) + len(c) for p, c in zip(prompts, completions))
    if pad_to_multiple_of:
        t = -(-t // pad_to_multiple_of) * pad_to_multiple_of
    input_ids, attention_mask, loss_mask = pad_prompt_completions(prompts, completions, pad_id, t)
    loss_mask = loss_mask.float()

    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask,
            **_pair_fields(pairs)}


PROMPT, CHOSEN, REJECTED, PADDING = 0, 1, 2, -1  # segment ids of the packed layout


def collate_preference_packed(
    pairs: Sequence[TokenizedPair], pad_id: int, pad_to_multiple_of: int | None = None,
    capacity: int | None = None,
) -> dict[str, Any]:
    """Right-padded rows of ``prompt + chosen + rejected``: the prompt is computed once instead
    of twice, and chosen/rejected are not padded to each other's length. One pair per row, or
    with ``capacity`` (padding-free packing, ``data.packing``) as many pairs as fit in
    ``capacity`` tokens (first fit; a longer pair gets a row of its own).

    Besides the keys of :func:`collate_preference` (``loss_mask`` is ``[R, T]`` here, 1 on
    chosen and rejected tokens), the batch has ``position_ids`` (each pair's start at 0, the
    rejected tokens restarting right after the prompt, as in their own row), ``doc_ids``
    (which pair of the row, ``-1`` padding), ``segment_ids`` (``0`` prompt, ``1`` chosen, ``2``
    rejected, ``-1`` padding; :func:`rlfoundry.ops.attention.dense_mask` turns both into the
    mask under which each completion sees its prompt and itself only), ``token_sequence``
    (each completion token's output sequence, ``-1`` elsewhere) and four ``[N]`` tensors
    naming the scored tokens: ``logp_source`` (flat index into ``[R * T]`` of the position
    whose output predicts the token: the previous token of the same sequence, so the last
    prompt token for both first completion tokens), ``logp_target`` (the token id),
    ``logp_sequence`` (``i`` for pair ``i``'s chosen tokens, ``B + i`` for its rejected ones,
    the row order of :func:`collate_preference`) and ``logp_column`` (the token's place among
    its sequence's scored tokens; ``logp_width`` is one more than the largest). As in the
    ``2B``-row layout, the first token of a row is not scored, so with an empty prompt neither
    completion's first token is.
    """
    if not pairs:
        raise ValueError("collate_preference_packed needs at least one pair")
    from rlfoundry.data.packing import first_fit, row_width

    b = len(pairs)
    lengths = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    rows = first_fit(lengths, capacity) if capacity else [[i] for i in range(b)]
    t = row_width(lengths, rows)
    if pad_to_multiple_of:
        t = -(-t // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), t), dtype=torch.long)
    segment_ids = torch.full((len(rows), t), PADDING, dtype=torch.long)
    doc_ids = torch.full((len(rows), t), PADDING, dtype=torch.long)
    token_sequence = torch.full((len(rows), t), -1, dtype=torch.long)
    source: list[int] = []
    target: list[int] = []
    sequence: list[int] = []
    column: list[int] = []
    for row, members in enumerate(rows):
        at, last = 0, 0
        for d, i in enumerate(members):
            pair = pairs[i]
            p, c, r = pair.prompt_ids, pair.chosen_ids, pair.rejected_ids
            n = lengths[i]
            input_ids[row, at:at + n] = torch.tensor([*p, *c, *r], dtype=torch.long)
            position_ids[row, at:at + n] = torch.cat([torch.arange(len(p) + len(c)),
                                                      torch.arange(len(p), len(p) + len(r))])
            doc_ids[row, at:at + n] = d
            segment_ids[row, at:at + len(p)] = PROMPT
            segment_ids[row, at + len(p):at + len(p) + len(c)] = CHOSEN
            segment_ids[row, at + len(p) + len(c):at + n] = REJECTED
            token_sequence[row, at + len(p):at + len(p) + len(c)] = i
            token_sequence[row, at + len(p) + len(c):at + n] = b + i
            base = row * t + at
            for seq, ids, start in ((i, c, len(p)), (b + i, r, len(p) + len(c))):
                first = 0 if p else 1  # empty prompt: nothing predicts the first token
                for j in range(first, len(ids)):
                    source.append(base + (start + j - 1 if j else len(p) - 1))  # j = 0: last prompt token
                    target.append(ids[j])
                    sequence.append(seq)
                    column.append(j - first)
            at, last = at + n, len(p) + len(r)
        position_ids[row, at:] = torch.arange(last, last + t - at)
    loss_mask = ((segment_ids == CHOSEN) | (segment_ids == REJECTED)).float()
    return {
        "input_ids": input_ids,
        "attention_mask": (segment_ids != PADDING).long(),
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "doc_ids": doc_ids,
        "token_sequence": token_sequence,
        "num_rows": 2 * b,
        "loss_mask": loss_mask,
        "logp_source": torch.tensor(source, dtype=torch.long),
        "logp_target": torch.tensor(target, dtype=torch.long),
        "logp_sequence": torch.tensor(sequence, dtype=torch.long),
        "logp_column": torch.tensor(column, dtype=torch.long),
        "logp_width": max(column, default=-1) + 1,
        **_pair_fields(pairs),
    }


def packed_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[B, 1, T, T]`` mask of the packed layout: causal, except that rejected tokens do not
    see chosen tokens (so each completion sees exactly its prompt and itself). Padding rows
    attend causally, which keeps them finite; nothing reads them. Boolean (True = attend) by
    default; with a floating ``dtype``, additive (0 or the dtype's minimum), for eager attention."""
    t = segment_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()
    q, k = segment_ids[:, :, None], segment_ids[:, None, :]
    allowed = (causal & ~((q == REJECTED) & (k == CHOSEN))).unsqueeze(1)
    if dtype is None or dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)


def _pair_fields(pairs: Sequence[TokenizedPair]) -> dict[str, Any]:
    """Per-pair entries of a collated batch in either layout: token counts, indices, extras."""
    fields: dict[str, Any] = {
        "prompt_token_counts": torch.tensor([len(p.prompt_ids) for p in pairs], dtype=torch.long),
        "chosen_token_counts": torch.tensor([len(p.chosen_ids) for p in pairs], dtype=torch.float),
        "rejected_token_counts": torch.tensor([len(p.rejected_ids) for p in pairs],
                                              dtype=torch.float),
        "index": torch.tensor([p.index for p in pairs], dtype=torch.long),
    }
    for key in dict.fromkeys(k for p in pairs for k in p.extras):
        fields[key] = collate_extra([p.extras.get(key) for p in pairs])
    return fields


def collate_extra(values: list[Any]) -> torch.Tensor | list[Any]:
    """A float tensor when every value is a real number or a bool, else the list itself."""
    if values and all(isinstance(v, numbers.Real) for v in values):
        return torch.tensor([float(v) for v in values], dtype=torch.float)
    return list(values)
