"""The segment path of blocked attention (issue 20): causal sdpa calls per prompt/completion
segment give the dense mask's outputs and gradients (float64), on every layout the collators
build (several documents per row, several completions per prompt, empty prompts, padding),
and any other layout falls back to the block loop."""

import pytest
import torch

from rlfoundry.algorithms.reference import pair_logps
from rlfoundry.data import collate_preference, collate_preference_packed
from rlfoundry.data.packing import pack_rows
from rlfoundry.data.padding import pad_prompt_completions
from rlfoundry.data.preference import TokenizedPair
from rlfoundry.models import build_model, build_tokenizer
from rlfoundry.ops import attention
from rlfoundry.ops.lm_head import token_logprobs
from rlfoundry.ops.packed import packed_token_logprobs


def row(docs, width):
    """``(doc_ids, segment_ids)`` of one row: ``docs`` lists each document's segment lengths
    (first the prompt, segment 0, then completions 1, 2, ...); padding up to ``width``."""
    doc, seg = [], []
    for d, lengths in enumerate(docs):
        for s, n in enumerate(lengths):
            doc += [d] * n
            seg += [s] * n
    pad = width - len(doc)
    return doc + [-1] * pad, seg + [-1] * pad


def rows(*specs, width):
    built = [row(spec, width) for spec in specs]
    return torch.tensor([d for d, _ in built]), torch.tensor([s for _, s in built])


class Training:
    training = True


def run_both(doc, seg, heads=4, kv_heads=2, dim=8, seed=0):
    """Outputs and q/k/v gradients of the blocked forward (segments) and of dense-mask sdpa."""
    b, t = doc.shape
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(b, h, t, dim, generator=g, dtype=torch.float64)
            for h in (heads, kv_heads, kv_heads)]
    weight = torch.randn(b, t, heads, dim, generator=g, dtype=torch.float64)
    mask = attention.dense_mask(doc, seg)
    results = []
    for fn in ("blocked", "dense"):
        q, k, v = (x.clone().requires_grad_() for x in base)
        if fn == "blocked":
            mask._rlf_segments = attention.segment_calls(doc, seg)
            assert mask._rlf_segments is not None
            out = attention._blocked_forward(Training(), q, k, v, mask)[0]
        else:
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2)
        (out * weight).sum().backward()
        results.append((out.detach(), q.grad, k.grad, v.grad))
    return results


@pytest.mark.parametrize("specs", [
    [[[5, 7, 9]]],                                   # one DPO pair, no padding
    [[[5, 7, 9], [3, 2, 4]], [[0, 6, 3]]],           # two pairs in a row; empty prompt; padding
    [[[4, 3, 3, 3]], [[2, 5], [6], [1, 1]]],          # three completions; prompt-only documents
    [[[3, 4, 5]], [[3, 4, 5]], [[6, 2, 2]]],          # identical rows run as one batch
    [[[1]], [[9, 1, 1]]],                             # a row that is mostly padding
])
@pytest.mark.parametrize("causal_min,chunk", [(0, 128), (10**6, 4), (10**6, 128)])
def test_segments_equal_the_dense_mask(specs, causal_min, chunk, monkeypatch):
    """Every call by sdpa's is_causal, or by query blocks (several per call, or one)."""
    monkeypatch.setattr(attention, "CAUSAL_MIN", causal_min)
    monkeypatch.setattr(attention, "CHUNK", chunk)
    width = max(sum(sum(doc) for doc in spec) for spec in specs) + 3
    doc, seg = rows(*specs, width=width)
    (a, *ga), (b, *gb) = run_both(doc, seg)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)  # padding positions included
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-12)


def test_segment_calls_tile_the_row_and_skip_the_hidden_quadrant():
    doc, seg = rows([[4, 3, 5], [2, 6]], width=22)
    (calls,) = attention.segment_calls(doc, seg)
    # pair 0: prompt+chosen causal; rejected over [prompt, rejected]; pair 1; padding
    assert calls == ((0, 0, 0, 7), (0, 4, 7, 12), (12, 12, 12, 20), (20, 20, 20, 22))
    assert [s for _, _, s, _ in calls][1:] == [e for _, _, _, e in calls][:-1]


@pytest.mark.parametrize("docs,segs", [
    ([0, 0, -1, -1, 1, 1], [0, 1, -1, -1, 0, 1]),   # padding before a document
    ([0, 0, 1, 1, 0, 0], [0, 1, 0, 1, 0, 1]),        # a document in two places
    ([0, 0, 0, 0], [1, 1, 0, 0]),                    # prompt after its completion
    ([0, 0, 0, 0, 0], [0, 1, 2, 1, 1]),              # a completion in two places
    ([0, 0, 0, -1], [0, 1, 1, 2]),                   # padding with a segment
    ([0, 0, 0, 1], [0, 1, -1, 0]),                   # a document's run without a segment
])
def test_other_layouts_fall_back_to_the_block_loop(docs, segs):
    assert attention.segment_calls(torch.tensor([docs]), torch.tensor([segs])) is None


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture
def model(tok):
    return build_model("tiny", tok, seed=1).double()


def ids(g, n):
    return torch.randint(10, 200, (n,), generator=g).tolist()


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.fixture
def taken(monkeypatch):
    """Which way each blocked forward ran (``segments`` or ``blocks``)."""
    seen = []
    inner = attention._segments_forward

    def spy(*args, **kwargs):
        seen.append("segments")
        return inner(*args, **kwargs)

    structure = attention._structure

    def spy_blocks(*args, **kwargs):
        seen.append("blocks")
        return structure(*args, **kwargs)

    monkeypatch.setattr(attention, "_segments_forward", spy)
    monkeypatch.setattr(attention, "_structure", spy_blocks)
    return seen


@pytest.mark.parametrize("way", ["segments", "blocks"])
@pytest.mark.parametrize("capacity", [None, 40])
def test_dpo_pairs_by_segments_and_by_blocks_match_separate_rows(model, tok, taken, monkeypatch,
                                                                   way, capacity):
    """The DPO forward under ``auto`` on CPU: the padded 2B rows' log-probs and gradients,
    whether the rows run by segments (the collator's layout) or by the block loop."""
    if way == "blocks":
        monkeypatch.setattr(attention, "segment_calls", lambda doc, seg: None)
        monkeypatch.setattr(attention, "BLOCK", 8)
    g = torch.Generator().manual_seed(3)
    shapes = [(5, 3, 7), (0, 4, 2), (9, 6, 6), (1, 1, 1), (14, 10, 3), (6, 12, 9)]
    pairs = [TokenizedPair(ids(g, p), ids(g, c), ids(g, r), {}, "t", i)
             for i, (p, c, r) in enumerate(shapes)]
    weights = torch.arange(1.0, 2 * len(pairs) + 1, dtype=torch.float64)
    results = []
    for batch in (collate_preference(pairs, tok.pad_token_id),
                  {**collate_preference_packed(pairs, tok.pad_token_id, capacity=capacity,
                                               pad_to_multiple_of=8), "attention": "auto"}):
        model.zero_grad()
        logps = pair_logps(model, batch)
        (logps * weights).sum().backward()
        results.append((logps.detach(), grads(model)))
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)
    assert torch.allclose(ga, gb, rtol=1e-5, atol=1e-5 * float(ga.abs().max()))
    assert taken and set(taken) == {way}


def test_packed_sequences_by_segments_match_padded_rows(model, tok, taken):
    """SFT / GRPO layout (several prompt+completion documents per row, padding) by segments."""
    g = torch.Generator().manual_seed(5)
    prompts = [ids(g, n) for n in (5, 0, 9, 3, 12)]
    completions = [ids(g, n) for n in (7, 6, 2, 11, 9)]
    input_ids, attn, loss_mask = pad_prompt_completions(prompts, completions, tok.pad_token_id)
    w = torch.linspace(0.5, 1.5, input_ids.shape[1], dtype=torch.float64)
    model.zero_grad()
    ref = token_logprobs(model, input_ids, attn, loss_mask, with_entropy=True)
    ((ref.logprobs * w[: ref.logprobs.shape[1]]).sum() + ref.entropy.sum()).backward()
    g_ref = grads(model)
    packed = pack_rows(input_ids, attn, loss_mask, tok.pad_token_id, capacity=24)
    model.zero_grad()
    out = packed_token_logprobs(model, packed, "auto", with_entropy=True)
    ((out.logprobs * w[: out.logprobs.shape[1]]).sum() + out.entropy.sum()).backward()
    assert torch.allclose(out.logprobs, ref.logprobs, rtol=1e-6, atol=1e-6)
    assert torch.allclose(out.entropy, ref.entropy, rtol=1e-6, atol=1e-6)
    assert torch.allclose(grads(model), g_ref, rtol=1e-5, atol=1e-5 * float(g_ref.abs().max()))
    assert taken and set(taken) == {"segments"}
