"""Padding-free packing: several sequences per row, positions restarting per sequence.

:func:`pack_rows` turns a right-padded batch (``input_ids``, ``attention_mask``,
``loss_mask``, ``[S, T]``; the layout of SFT, GRPO and two-row DPO) into a few rows of at most
``capacity`` tokens each. Every sequence becomes one *document* of the packed row
(``doc_ids``; ``-1`` padding), ``position_ids`` restart at 0 per document, and the attention
rule of :mod:`rlfoundry.ops.attention` (causal within a document, nothing across) makes each
document's outputs those of its own padded row. The scored tokens are named by flat indices
(``logp_source`` into ``[R * C]``, ``logp_target``) and by where they go in the padded layout
(``logp_sequence``, ``logp_column``, ``logp_width = T - 1``), so a forward of the packed rows
returns log-probs laid out exactly like the padded path's: losses, masks and every other batch
column are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``capacity`` tokens (first fit, in
    the given order; a length over ``capacity`` gets a row of its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    return rows


def row_width(lengths: Sequence[int], rows: list[list[int]]) -> int:
    return max((sum(lengths[i] for i in row) for row in rows), default=1) or 1


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
              pad_id: int, capacity: int | None = None) -> dict[str, torch.Tensor | int]:
    """The packed form of a right-padded batch (module docstring). ``capacity`` defaults to
    the padded width ``T``; a sequence longer than ``capacity`` gets a row of its own."""
    s, t = input_ids.shape
    lengths = attention_mask.long().sum(-1).tolist()
    expected = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    if not torch.equal(attention_mask.bool().cpu(), expected):
        raise ValueError("pack_rows needs right-padded rows (attention_mask 1...1 0...0)")
    rows = first_fit(lengths, capacity or t)
    width = row_width(lengths, rows)
    packed_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    doc_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    sources, targets, sequences, columns = [], [], [], []
    scored = loss_mask[:, 1:].bool() & attention_mask[:, 1:].bool()
    for r, members in enumerate(rows):
        start = 0
        for d, i in enumerate(members):
            n = lengths[i]
            packed_ids[r, start:start + n] = input_ids[i, :n]
            position_ids[r, start:start + n] = torch.arange(n)
            doc_ids[r, start:start + n] = d
            cols = scored[i].nonzero().flatten()  # column c: position c predicts token c + 1
            sources.append(r * width + start + cols)
            targets.append(input_ids[i, cols + 1])
            sequences.append(torch.full_like(cols, i))
            columns.append(cols)
            start += n
        position_ids[r, start:] = torch.arange(width - start)  # padding: its own run
    return {
        "input_ids": packed_ids, "position_ids": position_ids, "doc_ids": doc_ids,
        "segment_ids": torch.where(doc_ids >= 0, 0, -1),
        "logp_source": torch.cat(sources), "logp_target": torch.cat(targets),
        "logp_sequence": torch.cat(sequences), "logp_column": torch.cat(columns),
        "logp_width": t - 1, "num_rows": s,
        "unpack_index": _unpack_index(rows, lengths, width, t),
    }


def _unpack_index(rows: list[list[int]], lengths: Sequence[int], width: int, t: int) -> torch.Tensor:
    """``[2, N]``: flat padded positions (``[S * T]``) and their flat packed positions, for
    every real token (to lay the packed hidden states out as the padded ones)."""
    dest, src = [], []
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            n = lengths[i]
            dest.append(torch.arange(n) + i * t)
            src.append(torch.arange(n) + r * width + start)
            start += n
    return torch.stack([torch.cat(dest), torch.cat(src)])
