"""Token log-probs of packed rows (several documents per row), in the padded layout.

A packed batch (:func:`rlfoundry.data.packing.pack_rows`, or the shared-prompt DPO rows of
:func:`rlfoundry.data.collate_preference_packed`) names its scored tokens by flat source
position and target id, and where each goes in the output (``logp_sequence`` row,
``logp_column``). One forward of the backbone under the packed attention rule
(:mod:`rlfoundry.ops.attention`: flex block mask, dense mask or flash varlen), then the
chunked lm-head at the scored positions only.
"""

from __future__ import annotations

from typing import Any

import torch

from rlfoundry.ops.attention import build_mask, log_plan, packed_attention, plan_attention
from rlfoundry.ops.lm_head import TokenLogprobs, _uses_plain_lm_head, logprobs_at


def inner_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_packing(model) -> bool:
    """Whether ``model`` can run packed rows: a plain lm-head (the head is applied at the
    scored positions only) and an attention that takes a custom mask or varlen positions.
    Models with sliding-window attention keep padded rows (a custom mask replaces the window)."""
    inner = inner_model(model)
    cfg = getattr(inner, "config", None)
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", None) is not False:
        return False
    return _uses_plain_lm_head(inner)


def with_packed_rows(batch: dict[str, Any], config, model, pad_id: int) -> dict[str, Any]:
    """``batch`` plus ``batch["packed"]`` (its right-padded ``input_ids`` / ``attention_mask``
    / ``loss_mask`` packed into rows of ``data.packing_length`` tokens) when ``data.packing``
    is on and ``model`` can run packed rows; ``batch`` unchanged otherwise."""
    data = config.data
    if data.packing and supports_packing(model):
        from rlfoundry.data.packing import pack_rows

        batch["packed"] = pack_rows(batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                                    pad_id, data.packing_length or data.max_length)
    return batch


def packed_token_logprobs(model, batch: dict[str, Any], attention: str = "auto", *,
                          with_entropy: bool = False, temperature: float = 1.0,
                          return_hidden: bool = False, compile: bool | None = None) -> TokenLogprobs:
    """``TokenLogprobs`` of a packed batch: ``[S, W]`` (``S = num_rows`` or ``2 *`` pairs,
    ``W = logp_width``), entry ``(logp_sequence, logp_column)`` of each scored token. With
    ``return_hidden`` and a ``unpack_index`` in the batch, ``hidden`` is laid out as the
    padded rows' (``[S, W + 1, H]``); else it is the packed rows' own."""
    inner = inner_model(model)
    param = next(inner.parameters())
    device = param.device
    doc_ids, seg = batch["doc_ids"].to(device), batch["segment_ids"].to(device)
    plan = plan_attention(inner, attention, device,
                          multi_completion=bool((seg > 1).any()), compile=compile)
    log_plan(plan)
    eager = getattr(inner.config, "_attn_implementation", None) == "eager"
    mask = build_mask(plan, doc_ids, seg, param.dtype, eager)
    with packed_attention(inner, plan):
        lp, ent, hidden = logprobs_at(model, batch["input_ids"].to(device), mask,
                                      batch["position_ids"].to(device),
                                      batch["logp_source"].to(device), batch["logp_target"].to(device),
                                      with_entropy=with_entropy, temperature=temperature)
    rows = batch.get("num_rows", 2 * batch["input_ids"].shape[0])
    shape = (rows, batch["logp_width"])
    where = (batch["logp_sequence"].to(device), batch["logp_column"].to(device))
    dense = lp.new_zeros(shape).index_put(where, lp)
    scored = torch.zeros(shape, dtype=torch.bool, device=device).index_put_(
        where, torch.ones_like(lp, dtype=torch.bool))
    dense_ent = ent.new_zeros(shape).index_put(where, ent) if ent is not None else None
    if return_hidden and "unpack_index" in batch:
        dest, src = batch["unpack_index"].to(device)
        flat = hidden.reshape(-1, hidden.shape[-1])
        out = flat.new_zeros(rows * (shape[1] + 1), flat.shape[-1]).index_copy(0, dest, flat[src])
        hidden = out.reshape(rows, shape[1] + 1, -1)
    return TokenLogprobs(dense, scored, dense_ent, hidden if return_hidden else None)
