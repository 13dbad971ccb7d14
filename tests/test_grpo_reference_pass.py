"""The GRPO reference (and old-policy) log-prob pass: the training micro-batch groups, each
forward cut to its longest row, with the same log-probs as one full-width forward."""

import torch

from rlfoundry.algorithms import grpo_buffer
from rlfoundry.algorithms.grpo_buffer import TrainingBuffer, rows_logprobs
from rlfoundry.data.padding import pad_prompt_completions
from rlfoundry.models import build_model
from rlfoundry.ops.lm_head import token_logprobs
from rlfoundry.training.sampler import length_blocks


def make_buffer(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, 100, (int(k),), generator=g).tolist()
               for k in torch.randint(1, 9, (n,), generator=g)]
    completions = [torch.randint(5, 100, (int(k),), generator=g).tolist()
                   for k in torch.randint(1, 14, (n,), generator=g)]
    ids, att, loss_mask = pad_prompt_completions(prompts, completions, 0)
    buf = TrainingBuffer.__new__(TrainingBuffer)
    buf.input_ids, buf.attention_mask, buf.loss_mask = ids, att, loss_mask
    return buf


def test_chunks_are_the_micro_batches_trimmed_to_their_longest_row(tokenizer, monkeypatch):
    model = build_model("tiny", tokenizer, seed=0).double().eval()
    buf = make_buffer()
    widths, seen = [], []
    real = grpo_buffer.token_logprobs

    def spy(module, input_ids, attention_mask, loss_mask, **kw):
        widths.append(input_ids.shape[1])
        seen.append(attention_mask.sum(-1).tolist())
        return real(module, input_ids, attention_mask, loss_mask, **kw)

    monkeypatch.setattr(grpo_buffer, "token_logprobs", spy)
    with torch.no_grad():
        full = token_logprobs(model, buf.input_ids, buf.attention_mask, buf.loss_mask).logprobs
        got = rows_logprobs(model, buf, range(0, 10), 3, torch.device("cpu"), 1.0)
    lengths = buf.attention_mask.sum(-1).tolist()
    order = length_blocks(list(range(10)), lengths, 3)
    expected = [[lengths[i] for i in order[k:k + 3]] for k in range(0, 10, 3)]
    assert seen == expected  # the training micro-batches, in their order
    assert widths == [max(x) for x in expected] and max(widths) <= buf.input_ids.shape[1]
    assert sum(widths) < len(widths) * buf.input_ids.shape[1]  # padding was skipped
    assert got.dtype == torch.float64 and got.shape == full.shape
    torch.testing.assert_close(got, full, rtol=0, atol=1e-12)


def test_a_rank_share_keeps_its_rows_in_place(tokenizer):
    model = build_model("tiny", tokenizer, seed=0).double().eval()
    buf = make_buffer(seed=1)
    with torch.no_grad():
        full = token_logprobs(model, buf.input_ids, buf.attention_mask, buf.loss_mask).logprobs
        got = rows_logprobs(model, buf, range(4, 9), 2, torch.device("cpu"), 1.0)
    torch.testing.assert_close(got, full[4:9], rtol=0, atol=1e-12)
