"""Packed rows (issue 20): block-skipping attention and padding-free packing give the padded
path's log-probs and gradients (float64; the tiny model's RMSNorm computes in float32, so
layouts agree to float32 rounding)."""

import pytest
import torch

from rlfoundry.algorithms.reference import pair_logps, pair_token_logprobs
from rlfoundry.data import collate_preference, collate_preference_packed
from rlfoundry.data.packing import first_fit, pack_rows
from rlfoundry.data.padding import pad_prompt_completions
from rlfoundry.data.preference import TokenizedPair
from rlfoundry.models import build_model, build_tokenizer
from rlfoundry.ops import attention
from rlfoundry.ops.lm_head import token_logprobs
from rlfoundry.ops.packed import packed_token_logprobs


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture
def model(tok):
    return build_model("tiny", tok, seed=1).double()


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 8 tokens so the short test rows span many blocks (and some get skipped)."""
    monkeypatch.setattr(attention, "BLOCK", 8)


def ids(g, n):
    return torch.randint(10, 200, (n,), generator=g).tolist()


def grad_of(model, fn, weights):
    model.zero_grad()
    out = fn()
    (out.logprobs * weights[: out.logprobs.shape[1]]).sum().backward()
    return out, torch.cat([p.grad.flatten() for p in model.parameters()])


def close(a, b, ga, gb):
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)
    assert torch.allclose(ga, gb, rtol=1e-5, atol=1e-5 * float(ga.abs().max()))


def test_first_fit_keeps_every_sequence_once_and_gives_long_ones_their_own_row():
    rows = first_fit([5, 9, 3, 20, 2], capacity=10)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]
    assert [3] in rows
    assert all(sum([5, 9, 3, 20, 2][i] for i in r) <= 10 for r in rows if r != [3])


@pytest.mark.parametrize("path", ["sdpa", "auto"])
def test_packed_rows_equal_padded_rows(model, tok, small_blocks, path):
    """SFT / GRPO layout: several sequences per row, positions reset, block-diagonal mask;
    log-probs, entropies, hidden states and gradients as the padded batch's."""
    g = torch.Generator().manual_seed(0)
    prompts = [ids(g, n) for n in (5, 0, 9, 3, 12)]
    completions = [ids(g, n) for n in (7, 6, 2, 11, 9)]
    input_ids, attn, loss_mask = pad_prompt_completions(prompts, completions, tok.pad_token_id)
    w = torch.linspace(0.5, 1.5, input_ids.shape[1], dtype=torch.float64)
    ref, g_ref = grad_of(model, lambda: token_logprobs(model, input_ids, attn, loss_mask,
                                                       with_entropy=True, return_hidden=True), w)
    packed = pack_rows(input_ids, attn, loss_mask, tok.pad_token_id, capacity=24)
    assert packed["input_ids"].shape[0] < input_ids.shape[0]  # really packed
    assert int((packed["doc_ids"] >= 0).sum()) == int(attn.sum())  # and padding-free
    out, g_out = grad_of(model, lambda: packed_token_logprobs(
        model, packed, path, with_entropy=True, return_hidden=True), w)
    assert torch.equal(out.mask, ref.mask)
    close(out.logprobs, ref.logprobs, g_out, g_ref)
    assert torch.allclose(out.entropy, ref.entropy, rtol=1e-6, atol=1e-6)
    real = attn.bool()
    assert torch.allclose(out.hidden[real], ref.hidden[real], rtol=1e-5, atol=1e-5)


def pairs_of(g, shapes):
    return [TokenizedPair(ids(g, p), ids(g, c), ids(g, r), {}, "t", i)
            for i, (p, c, r) in enumerate(shapes)]


SHAPES = [(5, 3, 7), (0, 4, 2), (9, 6, 6), (1, 1, 1), (14, 10, 3), (6, 12, 9)]


@pytest.mark.parametrize("path,capacity", [("sdpa", None), ("auto", None), ("auto", 40),
                                           ("sdpa", 40)])
def test_packed_pairs_match_separate_rows(model, tok, small_blocks, path, capacity):
    """DPO: prompt once per pair, chosen hidden from rejected; one or several pairs per row;
    dense mask or block-skipping attention; the 2B-row log-probs and gradients."""
    pairs = pairs_of(torch.Generator().manual_seed(0), SHAPES)
    weights = torch.arange(1.0, 2 * len(pairs) + 1, dtype=torch.float64)
    results = []
    for batch in (collate_preference(pairs, tok.pad_token_id),
                  {**collate_preference_packed(pairs, tok.pad_token_id, capacity=capacity),
                   "attention": path}):
        model.zero_grad()
        logps = pair_logps(model, batch)
        (logps * weights).sum().backward()
        results.append((logps.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (a, ga), (b, gb) = results
    close(a, b, ga, gb)
    if capacity:
        assert batch["input_ids"].shape[0] < len(pairs)


def test_flex_attention_forward_matches_dense_mask(model, tok):
    """torch's flex_attention (eager here; CUDA compiles it) with the block mask gives the
    dense mask's log-probs. CPU flex has no backward, so gradients are checked on the
    blocked path above."""
    if not attention.flex_available():
        pytest.skip("this torch has no flex_attention")
    pairs = pairs_of(torch.Generator().manual_seed(2), SHAPES)
    batch = collate_preference_packed(pairs, tok.pad_token_id, capacity=40)
    with torch.no_grad():
        dense = packed_token_logprobs(model, batch, "sdpa")
        flex = packed_token_logprobs(model, batch, "flex", compile=False)
    assert torch.allclose(flex.logprobs, dense.logprobs, rtol=1e-6, atol=1e-6)


def test_blocked_attention_skips_hidden_blocks(small_blocks):
    """The block plan computes only key blocks the mask touches: the chosen/rejected
    quadrant and the upper triangle are left out."""
    seg = torch.tensor([[0] * 8 + [1] * 16 + [2] * 16])  # prompt 8, chosen 16, rejected 16
    mask = attention.dense_mask(torch.zeros_like(seg), seg)
    plan = attention._structure(mask, 8)[0]
    keys = [list(range(stop)) if k is None else k.tolist() for _, stop, k in plan]
    assert keys[3] == list(range(8)) + list(range(24, 32))  # first rejected block: prompt + itself
    assert sum(len(k) for k in keys) < sum(stop for _, stop, _ in plan)


def test_plan_falls_back_and_says_why(model):
    cpu = torch.device("cpu")
    assert attention.plan_attention(model, "sdpa", cpu, multi_completion=True).path == "dense"
    auto = attention.plan_attention(model, "auto", cpu, multi_completion=True)
    assert auto.path == "blocked" and ("CPU" in auto.why or "flex_attention" in auto.why)
    model.config._attn_implementation = "flash_attention_2"
    assert attention.plan_attention(model, "auto", cpu, multi_completion=False).path == "varlen"
    with pytest.raises(ValueError, match="one completion per document"):
        attention.plan_attention(model, "auto", cpu, multi_completion=True)
    model.config._attn_implementation = "sdpa"


def test_pack_rows_rejects_left_padding(tok):
    ids_ = torch.tensor([[0, 5, 6]])
    with pytest.raises(ValueError, match="right-padded"):
        pack_rows(ids_, torch.tensor([[0, 1, 1]]), torch.tensor([[0, 0, 1]]), 0)


def test_pair_token_logprobs_on_packed_separate_rows(model, tok, small_blocks):
    """Two-row DPO (token-level objectives, flash models) packed padding-free: the 2B-row
    token view is unchanged."""
    pairs = pairs_of(torch.Generator().manual_seed(3), SHAPES)
    rows = collate_preference(pairs, tok.pad_token_id)
    packed = {**rows, "packed": pack_rows(rows["input_ids"], rows["attention_mask"],
                                          rows["loss_mask"], tok.pad_token_id, 48)}
    with torch.no_grad():
        a, b = pair_token_logprobs(model, rows), pair_token_logprobs(model, packed)
    assert torch.equal(a.mask, b.mask)
    assert torch.allclose(a.logprobs, b.logprobs, rtol=1e-6, atol=1e-6)


# ---- trainers: data.packing on and off take the same step (float64) ----

def _run(cls, cfg, packing, monkeypatch):
    import rlfoundry.data.packing as packing_module

    calls = []
    fit = packing_module.first_fit
    monkeypatch.setattr(packing_module, "first_fit", lambda *a: calls.append(a) or fit(*a))
    tok = build_tokenizer()
    cfg["data"]["packing"] = packing
    trainer = cls(model=build_model("tiny", tok, seed=0).double(), tokenizer=tok, config=cfg)
    metrics = trainer.train()
    assert bool(calls) == packing  # rows were packed exactly when asked
    return metrics, torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def _same_step(cls, cfg_of, monkeypatch):
    (m_off, p_off), (m_on, p_on) = (_run(cls, cfg_of(p), p, monkeypatch) for p in (False, True))
    assert m_on["loss"] == pytest.approx(m_off["loss"], rel=1e-6, abs=1e-9)
    assert m_on["grad_norm"] == pytest.approx(m_off["grad_norm"], rel=1e-5)
    assert float(((p_on - p_off).abs() > 1e-6).double().mean()) < 0.01


def _common(tmp_path, packing):
    return {"training": {"output_dir": str(tmp_path / str(packing)), "batch_size": 8,
                         "max_steps": 1, "seed": 0, "learning_rate": 1e-3},
            "logging": {"tensorboard": False, "progress_bar": False}}


def test_sft_packing_takes_the_padded_step(tmp_path, monkeypatch):
    from rlfoundry.algorithms.sft import SFTTrainer

    _same_step(SFTTrainer, lambda p: {**_common(tmp_path, p), "algorithm": {"name": "sft"},
                                      "data": {"train": "builtin:addition_sft", "train_size": 16,
                                               "max_length": 16, "packing_length": 40}},
               monkeypatch)


def test_dpo_packing_takes_the_padded_step(tmp_path, monkeypatch):
    from rlfoundry.algorithms.dpo import DPOTrainer

    _same_step(DPOTrainer, lambda p: {**_common(tmp_path, p), "data": {
        "train": "builtin:sort_preferences", "train_size": 16, "max_length": 48,
        "packing_length": 96}}, monkeypatch)


def test_grpo_update_packing_takes_the_padded_step(tmp_path, monkeypatch):
    from rlfoundry.algorithms.grpo import GRPOTrainer

    def cfg(p):
        c = _common(tmp_path, p)
        c["training"]["batch_size"] = 4
        return {**c, "algorithm": {"name": "grpo", "group_size": 4, "sampling": {"max_new_tokens": 5},
                                   "rewards": [{"name": "tests.test_grpo_trainer:digit_fraction"}]},
                "data": {"train": "builtin:addition", "train_size": 8, "eval_size": 4,
                         "packing_length": 64}}
    _same_step(GRPOTrainer, cfg, monkeypatch)


def test_the_path_taken_is_logged_once(model, tok, caplog, monkeypatch):
    monkeypatch.setattr(attention, "_logged", set())
    pairs = pairs_of(torch.Generator().manual_seed(4), SHAPES[:2])
    batch = collate_preference_packed(pairs, tok.pad_token_id)
    with caplog.at_level("INFO", logger="rlfoundry.ops.attention"), torch.no_grad():
        packed_token_logprobs(model, batch, "auto")
        packed_token_logprobs(model, batch, "auto")
        packed_token_logprobs(model, batch, "sdpa")
    lines = [r.getMessage() for r in caplog.records if r.name == "rlfoundry.ops.attention"]
    assert sum("packed attention: blocked" in m for m in lines) == 1
    assert sum("packed attention: dense" in m and "sdpa" in m for m in lines) == 1
    assert model.config._attn_implementation == "sdpa"  # restored after the packed forward
