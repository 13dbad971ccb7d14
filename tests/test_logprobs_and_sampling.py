import torch

from rlfoundry.models import build_model
from rlfoundry.ops.lm_head import gather_logprobs, token_logprobs
from rlfoundry.rollout import HFSampler, SamplingParams, filter_logits
from rlfoundry.rollout.hf_sampler import sample_from


def test_chunked_logprobs_match_full_log_softmax_with_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    lp, ent = gather_logprobs(hidden, weight, None, targets, chunk_size=8, with_entropy=True,
                              temperature=0.7)
    logits = hidden @ weight.T / 0.7
    ref = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    ref_ent = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    assert torch.allclose(lp, ref, atol=1e-12) and torch.allclose(ent, ref_ent, atol=1e-12)
    (g_h, g_w) = torch.autograd.grad((lp * torch.arange(37.0, dtype=torch.float64)).sum() + ent.sum(),
                                     (hidden, weight))
    (r_h, r_w) = torch.autograd.grad((ref * torch.arange(37.0, dtype=torch.float64)).sum() + ref_ent.sum(),
                                     (hidden, weight))
    assert torch.allclose(g_h, r_h, atol=1e-10) and torch.allclose(g_w, r_w, atol=1e-10)


def test_chunked_logprobs_gradients_with_bias_and_entropy_alone():
    torch.manual_seed(1)
    hidden = torch.randn(29, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(40, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 40, (29,))
    logits = (hidden @ weight.T + bias) / 1.3
    ref_lp = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    ref_ent = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    lp, ent = gather_logprobs(hidden, weight, bias, targets, chunk_size=7, with_entropy=True,
                              temperature=1.3)
    inputs = (hidden, weight, bias)
    for ours, ref in ((ent.sum(), ref_ent.sum()), (lp.sum(), ref_lp.sum())):  # one output each
        got = torch.autograd.grad(ours, inputs, retain_graph=True)
        want = torch.autograd.grad(ref, inputs, retain_graph=True)
        assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(got, want))


def test_token_logprobs_equals_model_logits_path(tokenizer):
    model = build_model("tiny", tokenizer, seed=1).double()
    ids = torch.randint(10, 200, (3, 12))
    attn = torch.ones_like(ids)
    attn[2, 9:] = 0
    mask = torch.zeros_like(ids)
    mask[:, 5:] = 1
    mask[2, 9:] = 0
    out = token_logprobs(model, ids, attn, mask, chunk_size=4)
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    ref = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]
    assert torch.allclose(out.logprobs, ref, atol=1e-10)
    assert out.token_counts().tolist() == [7.0, 7.0, 4.0]


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # nucleus 0.7: 0.5 alone is below, 0.5 + 0.3 crosses it -> keep two tokens
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]


def test_inverse_cdf_sampling_follows_the_distribution_and_skips_zeros():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(40_000, 1)
    probs[::2] *= 3.0  # unnormalised rows sample the same distribution
    gen = torch.Generator().manual_seed(0)
    draws = sample_from(probs, gen)
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    assert freq[1] == 0 and freq[4] == 0
    assert torch.allclose(freq, torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0], dtype=torch.float64), atol=0.01)
    again = sample_from(probs, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_sampler_shares_prefill_and_matches_teacher_forcing(tokenizer):
    model = build_model("tiny", tokenizer, seed=2)
    sampler = HFSampler(model, tokenizer)
    prompts = [tokenizer("12+7=")["input_ids"], tokenizer("3+4=")["input_ids"]]
    gen = torch.Generator().manual_seed(0)
    ro = sampler.generate(prompts, 3, SamplingParams(temperature=1.0, max_new_tokens=6), gen)
    assert ro.prompt_index == [0, 0, 0, 1, 1, 1]
    for k in range(6):
        full = torch.tensor([ro.prompt_ids[k] + ro.completion_ids[k]])
        mask = torch.zeros_like(full)
        mask[0, len(ro.prompt_ids[k]):] = 1
        tl = token_logprobs(model, full, torch.ones_like(full), mask)
        assert torch.allclose(torch.tensor(ro.sampling_logprobs[k]), tl.logprobs[tl.mask], atol=1e-4)
    # greedy equals transformers' own greedy decoding (left padding handled)
    greedy = sampler.generate(prompts, 1, SamplingParams(temperature=0, max_new_tokens=6), gen)
    for k, p in enumerate(prompts):
        ref = model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        assert greedy.completion_ids[k] == ref[0, len(p):].tolist()[: len(greedy.completion_ids[k])]
    # same generator state -> same samples (resumable sampling)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = sampler.generate(prompts, 2, SamplingParams(max_new_tokens=5), g1)
    b = sampler.generate(prompts, 2, SamplingParams(max_new_tokens=5), g2)
    assert a.completion_ids == b.completion_ids


def test_sampler_stops_on_eos_and_stop_strings(tokenizer):
    model = build_model("tiny", tokenizer, seed=3)
    sampler = HFSampler(model, tokenizer)
    prompt = [tokenizer("go")["input_ids"]]
    gen = torch.Generator().manual_seed(0)
    ro = sampler.generate(prompt, 1, SamplingParams(temperature=0, max_new_tokens=5), gen)
    greedy = ro.completion_ids[0]
    assert ro.truncated == [True] and len(greedy) == 5
    stop = tokenizer.decode(greedy[:3])
    ro = sampler.generate(prompt, 1, SamplingParams(temperature=0, max_new_tokens=9, stop_strings=[stop]), gen)
    assert ro.truncated == [False] and ro.completion_ids[0] == greedy[:3]
    eos = greedy[1]
    expected = greedy[: greedy.index(eos) + 1]  # up to and including the first EOS
    eos_sampler = HFSampler(model, tokenizer, eos_token_ids=[eos])
    ro = eos_sampler.generate(prompt, 2, SamplingParams(temperature=0, max_new_tokens=9), gen)
    assert ro.truncated == [False, False] and ro.completion_ids == [expected, expected]


def test_packed_rows_only_where_a_custom_mask_gives_the_same_attention():
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from rlfoundry.ops.lm_head import supports_packed_rows

    small = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=1)
    qwen = Qwen2ForCausalLM(Qwen2Config(**small, attn_implementation="sdpa"))
    assert supports_packed_rows(qwen)
    windowed = MistralForCausalLM(MistralConfig(**small, sliding_window=8, attn_implementation="sdpa"))
    assert not supports_packed_rows(windowed)  # the custom mask would drop the window
    qwen.config._attn_implementation = "flash_attention_2"
    assert not supports_packed_rows(qwen)  # takes padding masks only
