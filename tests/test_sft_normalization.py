"""SFT ``algorithm.loss.normalization``: token (default) vs sequence, against a plain float64
formula, with gradients, and exact under gradient accumulation."""

import pytest
import torch

from rlfoundry.algorithms.loss_functions.nll import NLLLossFn
from rlfoundry.algorithms.sft import SFTTrainer
from rlfoundry.errors import ConfigError
from rlfoundry.models.tiny import build_model, build_tokenizer


def plain(logprobs, mask, how):
    rows = [[-lp for lp, m in zip(r, mr) if m] for r, mr in zip(logprobs.tolist(), mask.tolist())]
    if how == "token":
        flat = [x for r in rows for x in r]
        return sum(flat) / len(flat)
    rows = [r for r in rows if r]
    return sum(sum(r) / len(r) for r in rows) / len(rows)


@pytest.mark.parametrize("how", ["token", "sequence"])
def test_formula_and_gradient(how):
    g = torch.Generator().manual_seed(0)
    lp = (-torch.rand(4, 9, generator=g, dtype=torch.float64) * 3).requires_grad_()
    mask = torch.zeros(4, 9)
    for i, n in enumerate((2, 7, 0, 4)):  # a short row, a long one, an empty one
        mask[i, 9 - n:] = 1
    fn = NLLLossFn({"type": "nll", "normalization": how})
    loss, _ = fn({"response_mask": mask}, {"logprobs": lp})
    assert loss.item() == pytest.approx(plain(lp.detach(), mask, how), rel=1e-12)
    assert fn.reduction == how
    torch.autograd.gradcheck(lambda x: fn({"response_mask": mask}, {"logprobs": x})[0], (lp,))
    (grad,) = torch.autograd.grad(loss, lp)
    if how == "sequence":  # each non-empty row's tokens share 1/3 of the weight
        assert grad[0, -1].item() == pytest.approx(-1 / (3 * 2)) and grad[1, -1].item() == pytest.approx(-1 / (3 * 7))
    else:
        assert grad[0, -1].item() == pytest.approx(-1 / 13) == grad[1, -1].item()


def test_bad_normalization_is_a_config_error():
    with pytest.raises(ConfigError, match="normalization must be one of token, sequence"):
        NLLLossFn({"normalization": "row"})
    with pytest.raises(ConfigError, match="takes only 'normalization'"):
        NLLLossFn({"scale": 2})


def test_sequence_normalization_accumulates_exactly(tmp_path):
    def run(out, **training):
        cfg = {"algorithm": {"name": "sft", "loss": {"type": "nll", "normalization": "sequence"}},
               "data": {"train": "builtin:addition_sft", "train_size": 16, "eval_size": 8, "max_length": 16},
               "training": {"output_dir": str(out), "batch_size": 8, "max_steps": 2, "learning_rate": 1e-3,
                            "eval_every": 2, **training},
               "logging": {"tensorboard": False, "progress_bar": False}}
        tok = build_tokenizer()
        t = SFTTrainer(model=build_model("tiny", tok, seed=0).double(), tokenizer=tok, config=cfg)
        return t, t.train()

    full, m_full = run(tmp_path / "a")
    acc, m_acc = run(tmp_path / "b", micro_batch_size=2)
    assert m_acc["grad_norm"] == pytest.approx(m_full["grad_norm"], rel=1e-9)
    assert m_acc["loss"] == pytest.approx(m_full["loss"], rel=1e-9)
    assert acc.last_eval["loss"] == pytest.approx(full.last_eval["loss"], rel=1e-9)
    for p, q in zip(full.model.parameters(), acc.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-8)
