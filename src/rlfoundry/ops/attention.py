"""Attention for packed rows: a block-sparse flex-attention path and the dense-mask fallback.

A packed row holds one or more *documents* (``doc_ids``: ``0, 1, ...``; ``-1`` padding). A
document is a prompt (segment ``0``) followed by one or more completions (segments ``1, 2,
...``): a DPO pair is a prompt with its chosen (``1``) and rejected (``2``) completions; an
SFT row or a GRPO sample is a prompt with one completion. Query ``q`` may attend to key ``k``
when

    k <= q  and  doc[k] == doc[q]  and  (seg[k] == 0  or  seg[k] == seg[q])

so the prompt is causal, every completion sees its prompt and, causally, itself, and nothing
crosses documents. Padding (``doc = seg = -1``) attends causally to padding only (finite, and
nothing reads it).

Four ways to run it, chosen by ``model.attention`` (``auto`` | ``flex`` | ``sdpa``):

- ``flex`` (CUDA): :func:`torch.nn.attention.flex_attention` with a ``BlockMask`` built from
  the rule above, so blocks the mask hides (the upper triangle, the chosen/rejected quadrant,
  other documents) are never computed; compiled with ``torch.compile`` (triton). Eager flex
  materialises the scores, so ``auto`` takes flex only where it compiles.
- ``blocked`` (CPU, or CUDA without flex): torch's flex attention has no backward on CPU,
  so the masked-out area is skipped by :func:`_blocked_forward` instead, in one of two ways:

  - *segments* (the layouts rlfoundry's collators build: documents of a prompt and its
    completions, trailing padding; :func:`segment_calls`): one causal sdpa call
    (``is_causal=True``, torch's fused kernel, which skips the upper triangle) over the
    prompt and first completion, one more over ``[prompt, completion]`` (gathered) for each
    further completion, keeping only the completion's outputs, and one over the padding. The
    mask is never read; the only extra work is each further completion's pass over the
    prompt's own causal triangle. Rows with the same calls run as one batch.
  - *blocks* (any other mask): the rows are cut into query blocks of :data:`BLOCK` tokens,
    each block runs sdpa over the key blocks its mask touches only, with the dense mask
    restricted to them.

  Same maths as the dense mask, cost proportional to the mask area.
- ``sdpa`` / ``eager``: the same rule as a dense ``[B, 1, T, T]`` mask (every block computed).
- flash-attention models: documents with one completion each run mask-free, the boundaries
  read from ``position_ids`` (restarting at 0 per document: transformers' varlen path).

The flex path is used for the duration of one forward only (:func:`packed_attention`): the
model keeps its own implementation for generation, export and everything else. A compile
failure at the first call falls back to the dense mask (sdpa) for the rest of the process,
with a warning; the path taken is logged once per (reason, path).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

FLEX_NAME = "rlfoundry_flex"  # the transformers AttentionInterface key of the flex path
BLOCKED_NAME = "rlfoundry_blocked"  # ... and of the block-skipping sdpa path
BLOCK = 128  # tokens per query / key block
DENSE = ("sdpa", "eager")  # implementations that take a custom 4D mask
FLASH_PREFIX = "flash_attention"
_state = {"compile_failed": False, "registered": False}
_logged: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class AttentionPlan:
    """How a packed forward runs: ``path`` is ``flex`` | ``dense`` | ``varlen``; ``why`` says why."""

    path: str
    why: str
    compile: bool = False


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _compile_works(device: torch.device) -> bool:
    """Whether ``torch.compile`` can build flex kernels here: CUDA (triton) or a CPU with a
    C++ compiler; a failure at the first call still falls back (see module docstring)."""
    if _state["compile_failed"]:
        return False
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return device.type == "cpu" and any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def plan_attention(model, requested: str, device: torch.device, *, multi_completion: bool,
                   compile: bool | None = None) -> AttentionPlan:
    """The path (``flex`` | ``blocked`` | ``dense`` | ``varlen``) a packed forward of ``model``
    takes under ``model.attention = requested``.

    ``multi_completion``: some document has more than one completion (shared-prompt DPO);
    flash-attention varlen cannot express that (callers then lay out one completion per
    document). ``compile`` overrides the automatic choice (tests run eager flex in float64)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if impl.startswith(FLASH_PREFIX):
        if multi_completion:
            raise ValueError("flash-attention cannot run documents with several completions; "
                             "lay out one completion per document")
        return AttentionPlan("varlen", f"{impl}: documents split by position_ids")
    if impl not in DENSE + (FLEX_NAME, BLOCKED_NAME):
        return AttentionPlan("dense", f"attention '{impl}' is not one rlfoundry can swap")
    if requested == "sdpa":
        return AttentionPlan("dense", "model.attention = sdpa")
    if getattr(model, "is_gradient_checkpointing", False):  # the backward recomputes layers
        # after the packed forward has restored the model's own attention: both must match
        return AttentionPlan("dense", "gradient checkpointing recomputes outside the packed forward")
    if device.type == "cuda" and flex_available():
        can_compile = _compile_works(device) if compile is None else compile
        if can_compile or requested == "flex":
            return AttentionPlan("flex", f"model.attention = {requested}", compile=can_compile)
        return AttentionPlan("blocked", "torch.compile unavailable (eager flex is slower than sdpa)")
    if device.type == "cpu" and compile is False and requested == "flex" and flex_available():
        return AttentionPlan("flex", "eager flex (forward only on CPU; tests)")
    why = "flex attention has no CPU backward" if flex_available() else \
        f"torch {torch.__version__} has no flex_attention"
    return AttentionPlan("blocked", f"model.attention = {requested}; {why}")


def log_plan(plan: AttentionPlan) -> None:
    key = (plan.path, plan.why)
    if key not in _logged:
        _logged.add(key)
        logger.info("packed attention: %s%s (%s)", plan.path,
                    " compiled" if plan.compile else "", plan.why)


def _log_once(path: str, why: str) -> None:
    if ("blocked:" + path, why) not in _logged:
        _logged.add(("blocked:" + path, why))
        logger.info("blocked attention runs by %s (%s)", path, why)


def mask_rule(doc_q, seg_q, doc_k, seg_k, q, k):
    """The packed-row rule (module docstring) on broadcastable index tensors."""
    return (k <= q) & (doc_q == doc_k) & ((seg_k == 0) | (seg_k == seg_q))


def dense_mask(doc_ids: torch.Tensor, segment_ids: torch.Tensor,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[B, 1, T, T]`` mask of the rule: boolean (True = attend), or additive (0 / dtype min)
    for a floating ``dtype`` (eager attention)."""
    t = doc_ids.shape[1]
    idx = torch.arange(t, device=doc_ids.device)
    allowed = mask_rule(doc_ids[:, :, None], segment_ids[:, :, None], doc_ids[:, None, :],
                        segment_ids[:, None, :], idx[:, None], idx[None, :]).unsqueeze(1)
    if dtype is None or dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)


def block_mask(doc_ids: torch.Tensor, segment_ids: torch.Tensor, compile: bool = False):
    """A flex-attention ``BlockMask`` of the rule (blocks of 128 tokens; the row length is
    padded up to a block multiple inside flex)."""
    from torch.nn.attention.flex_attention import create_block_mask

    b, t = doc_ids.shape

    def mask_mod(bi, h, q, k):
        return mask_rule(doc_ids[bi, q], segment_ids[bi, q], doc_ids[bi, k], segment_ids[bi, k], q, k)

    return create_block_mask(mask_mod, b, None, t, t, device=doc_ids.device, _compile=compile)


def _dense_from(mask) -> torch.Tensor:
    """The boolean ``[B, 1, T, T]`` mask a ``BlockMask``'s ``mask_mod`` describes."""
    b, _, t, _ = mask.shape
    dev = mask.kv_num_blocks.device
    q, k = torch.arange(t, device=dev), torch.arange(t, device=dev)
    bi = torch.arange(b, device=dev)[:, None, None]
    return mask.mask_mod(bi, 0, q[None, :, None], k[None, None, :]).unsqueeze(1)


_compiled = {}


def _flex(compile: bool):
    from torch.nn.attention.flex_attention import flex_attention

    if not compile:
        return flex_attention
    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(flex_attention, dynamic=False)
    return _compiled["fn"]


def _flex_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface function: flex attention when handed our BlockMask, else sdpa."""
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not isinstance(attention_mask, BlockMask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if dropout and module.training:
        raise ValueError("flex attention path: attention dropout is not supported; set the "
                         "model's attention_dropout to 0 or model.attention: sdpa")
    compile = getattr(attention_mask, "_rlf_compile", False) and not _state["compile_failed"]
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads != kv_heads and heads & (heads - 1):  # flex's GQA wants power-of-two head counts
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    gqa = query.shape[1] != key.shape[1]
    try:
        out = _flex(compile)(query, key, value, block_mask=attention_mask, scale=scaling,
                             enable_gqa=gqa)
    except Exception as e:  # inductor/triton/C++ toolchain failures surface here, at first use
        if not compile:
            raise
        _state["compile_failed"] = True
        logger.warning("packed attention: compiled flex attention failed (%s: %s); the dense "
                       "sdpa mask is used from now on. Set model.attention: sdpa to skip flex.",
                       type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return sdpa_attention_forward(module, query, key, value, _dense_from(attention_mask),
                                      scaling=scaling, **kwargs)
    return out.transpose(1, 2).contiguous(), None


_structure_cache: dict[str, object] = {}


def _structure(mask: torch.Tensor, block: int) -> list[list[tuple[int, int, torch.Tensor | None]]]:
    """Per row, per query block ``(start, stop, keys)``: the key positions of the key blocks
    the mask touches (``None``: keys ``[0, stop)``, a causal prefix, sliced not gathered).
    Cached for the last mask seen (every layer of a forward gets the same tensor)."""
    if _structure_cache.get("mask") is mask:
        return _structure_cache["plan"]
    b, _, t, _ = mask.shape
    nb = -(-t // block)
    padded = torch.nn.functional.pad(mask[:, 0], (0, nb * block - t, 0, nb * block - t))
    touched = padded.reshape(b, nb, block, nb, block).any(4).any(2).cpu()  # [B, nb, nb]
    plan = []
    for row in touched:
        blocks = []
        for qi in range(nb):
            start, stop = qi * block, min((qi + 1) * block, t)
            kb = row[qi].nonzero().flatten()
            if torch.equal(kb, torch.arange(qi + 1)):
                blocks.append((start, stop, None))
            else:
                keys = (kb[:, None] * block + torch.arange(block)[None, :]).flatten()
                blocks.append((start, stop, keys[keys < t].to(mask.device)))
        plan.append(blocks)
    _structure_cache.update(mask=mask, plan=plan)
    return plan


Call = tuple[int, int, int, int]  # (prefix start, prefix stop, start, stop): see segment_calls


def _runs(values: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """``(doc, seg, start, stop)`` of each run of equal ``(doc, seg)`` in a row."""
    runs, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            runs.append((*values[start], start, i))
            start = i
    return runs


def segment_calls(doc_ids: torch.Tensor, segment_ids: torch.Tensor) -> list[tuple[Call, ...]] | None:
    """Per row, the causal sdpa calls that compute the packed-row rule exactly, or ``None``
    when some row is not laid out as documents (each a contiguous run: an optional prompt,
    segment ``0``, then completions with distinct segments ``> 0``) followed by padding only
    (``doc = seg = -1``).

    A call ``(a, b, s, e)`` runs causal attention over positions ``[a, b) + [s, e)`` and
    writes its last ``e - s`` outputs to ``[s, e)``: ``a == b`` (no prefix) for the prompt
    with the first completion, a document without completions and the padding; the prompt
    ``[a, b)`` as prefix for each further completion. The calls' ``[s, e)`` tile the row in
    order."""
    plans = []
    for docs, segs in zip(doc_ids.tolist(), segment_ids.tolist()):
        calls: list[Call] = []
        seen: set[int] = set()
        runs = _runs(list(zip(docs, segs)))
        i = 0
        while i < len(runs):
            doc, seg, start, stop = runs[i]
            if doc == -1:  # padding: only as the row's last run, attending to itself
                if seg != -1 or i != len(runs) - 1:
                    return None
                calls.append((start, start, start, stop))
                break
            if doc < 0 or doc in seen or seg < 0:
                return None
            seen.add(doc)
            j = i
            while j + 1 < len(runs) and runs[j + 1][0] == doc:
                j += 1
            own = runs[i:j + 1]
            segs_of = [r[1] for r in own]
            if min(segs_of) < 0 or 0 in segs_of[1:] or len(set(segs_of)) != len(segs_of):
                return None
            prompt = (start, stop) if seg == 0 else (start, start)
            first = 1 if seg == 0 else 0
            head_stop = own[first][3] if first < len(own) else stop
            calls.append((start, start, start, head_stop))  # prompt + first completion
            for _, _, s, e in own[first + 1:]:
                calls.append((*prompt, s, e))
            i = j + 1
        plans.append(tuple(calls))
    return plans


CAUSAL_MIN = 4096  # causal calls this long use sdpa's is_causal; shorter ones query blocks
CHUNK = 128  # query block of a shorter call (CHUNK_LONG from CHUNK_AT keys on)
CHUNK_LONG, CHUNK_AT = 256, 2048


def _causal(q, k, v, skip: int, scaling, p: float, gqa: bool) -> list[torch.Tensor]:
    """Causal attention over ``q, k, v`` (``[B, H, n, D]``), the outputs of queries
    ``skip...n`` (in pieces). torch's CPU flash kernel skips the upper triangle only in
    512-key steps (at ``n <= 512`` causal costs as much as unmasked), so calls shorter than
    :data:`CAUSAL_MIN` run as query blocks of :data:`CHUNK` over their causal key prefix with
    the (lower-right) triangle as an explicit mask, which also skips the queries before
    ``skip``. (Sizes measured on CPU, fp32, head size 64: ``benchmarks/README.md``.)"""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    n = q.shape[2]
    if n >= CAUSAL_MIN or q.is_cuda:  # CUDA's fused kernels skip the triangle per tile
        out = sdpa(q, k, v, dropout_p=p, is_causal=True, scale=scaling, enable_gqa=gqa)
        return [out[:, :, skip:] if skip else out]
    parts = []
    step = CHUNK_LONG if n >= CHUNK_AT else CHUNK
    for start in range(skip, n, step):
        stop = min(start + step, n)
        rows = torch.arange(start, stop, device=q.device)[:, None]
        mask = torch.arange(stop, device=q.device)[None, :] <= rows
        parts.append(sdpa(q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop], attn_mask=mask,
                          dropout_p=p, scale=scaling, enable_gqa=gqa))
    return parts


def _segments_forward(query, key, value, plans: list[tuple[Call, ...]], scaling, p: float,
                      gqa: bool) -> torch.Tensor:
    """``[B, H, T, D]`` attention output of :func:`segment_calls`' calls; rows with the same
    calls are one batch."""

    groups: dict[tuple[Call, ...], list[int]] = {}
    for row, calls in enumerate(plans):
        groups.setdefault(calls, []).append(row)
    outs, order = [], []
    for calls, rows in groups.items():
        if len(rows) == query.shape[0]:
            q_g, k_g, v_g = query, key, value
        else:
            idx = torch.tensor(rows, device=query.device)
            q_g, k_g, v_g = query.index_select(0, idx), key.index_select(0, idx), value.index_select(0, idx)
        parts = []
        for a, b, s, e in calls:
            if a == b:
                q, k, v = q_g[:, :, s:e], k_g[:, :, s:e], v_g[:, :, s:e]
            else:
                pos = torch.cat([torch.arange(a, b), torch.arange(s, e)]).to(query.device)
                q, k, v = q_g.index_select(2, pos), k_g.index_select(2, pos), v_g.index_select(2, pos)
            parts.extend(_causal(q, k, v, b - a, scaling, p, gqa))
        outs.append(torch.cat(parts, 2))
        order.extend(rows)
    if len(outs) == 1:
        return outs[0]
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(outs).index_select(0, inverse.to(query.device))


def _blocked_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     **kwargs):
    """AttentionInterface function (module docstring): causal sdpa per segment when the mask
    carries :func:`segment_calls`' plan, else sdpa over the touched key blocks of each query
    block for a boolean ``[B, 1, T, T]`` mask, else plain sdpa."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not (isinstance(attention_mask, torch.Tensor) and attention_mask.dtype == torch.bool
            and attention_mask.dim() == 4 and query.shape[2] == key.shape[2]):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    p = dropout if module.training else 0.0
    gqa = query.shape[1] != key.shape[1]
    plans = getattr(attention_mask, "_rlf_segments", None)
    if plans is not None and len(plans) == query.shape[0]:
        _log_once("segments", "causal sdpa per prompt/completion segment")
        out = _segments_forward(query, key, value, plans, scaling, p, gqa)
        return out.transpose(1, 2).contiguous(), None
    _log_once("blocks", f"query blocks of {BLOCK} tokens over the key blocks the mask touches")
    rows = []
    for b, blocks in enumerate(_structure(attention_mask, BLOCK)):
        q_b, k_b, v_b, m_b = query[b:b + 1], key[b:b + 1], value[b:b + 1], attention_mask[b:b + 1]
        outs = []
        for start, stop, keys in blocks:
            if keys is None:
                k, v, m = k_b[:, :, :stop], v_b[:, :, :stop], m_b[:, :, start:stop, :stop]
            else:
                k, v = k_b.index_select(2, keys), v_b.index_select(2, keys)
                m = m_b[:, :, start:stop].index_select(3, keys)
            outs.append(sdpa(q_b[:, :, start:stop], k, v, attn_mask=m, dropout_p=p,
                             scale=scaling, enable_gqa=gqa))
        rows.append(torch.cat(outs, 2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def register() -> None:
    """Register the flex path with transformers (attention and mask interfaces) once."""
    if _state["registered"]:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    for name, fn in ((FLEX_NAME, _flex_forward), (BLOCKED_NAME, _blocked_forward)):
        AttentionInterface.register(name, fn)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)
    _state["registered"] = True


@contextmanager
def packed_attention(model, plan: AttentionPlan) -> Iterator[None]:
    """Run ``model``'s forwards inside the block with the flex or blocked implementation (when
    the plan says so); the model's own implementation is restored afterwards."""
    if plan.path not in ("flex", "blocked"):
        yield
        return
    register()
    cfg = model.config
    before = cfg._attn_implementation
    cfg._attn_implementation = FLEX_NAME if plan.path == "flex" else BLOCKED_NAME
    try:
        yield
    finally:
        cfg._attn_implementation = before
        _structure_cache.clear()  # do not hold the last mask past the forward


def build_mask(plan: AttentionPlan, doc_ids: torch.Tensor, segment_ids: torch.Tensor,
               dtype: torch.dtype, eager: bool):
    """The ``attention_mask`` argument of a packed forward under ``plan``."""
    if plan.path == "varlen":
        return None
    if plan.path == "flex":
        mask = block_mask(doc_ids, segment_ids)
        mask._rlf_compile = plan.compile
        return mask
    mask = dense_mask(doc_ids, segment_ids, dtype if eager and plan.path == "dense" else None)
    if plan.path == "blocked":
        mask._rlf_segments = segment_calls(doc_ids, segment_ids)  # None: the block loop
    return mask
