import math

import pytest
import torch

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.errors import ConfigError


def config(tmp_path, model=None, **training):
    return {  # a reference-free loss: no frozen copy whose layers the hooks would also count
        "algorithm": {"loss": {"type": "simpo", "reference_policy_kl_penalty": 2.0}},
        "model": {"name_or_path": "builtin:tiny", "dtype": "float64", **(model or {})},
        "data": {"train": "builtin:sort_preferences", "train_size": 16, "eval_size": 8, "max_length": 48},
        "training": {"output_dir": str(tmp_path), "batch_size": 8, "micro_batch_size": 4,
                     "max_steps": 1, "learning_rate": 1e-3, "seed": 0, **training},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


class Counting(torch.nn.Module):
    """Counts its forward calls (module hooks are not re-run by a checkpoint's recompute)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def count_layer_forwards(trainer) -> Counting:
    mlp = trainer.model.model.layers[0].mlp
    mlp.act_fn = Counting(mlp.act_fn)
    return mlp.act_fn


def test_gradient_checkpointing_recomputes_and_leaves_gradients_unchanged(tmp_path):
    plain = DPOTrainer(config=config(tmp_path / "plain"))
    plain_calls = count_layer_forwards(plain)
    m_plain = plain.train()
    ckpt = DPOTrainer(config=config(tmp_path / "ckpt", {"gradient_checkpointing": True}))
    ckpt_calls = count_layer_forwards(ckpt)
    m_ckpt = ckpt.train()
    # two micro-batches: each layer runs once per forward, and once more in the backward
    assert plain_calls.calls == 2 and ckpt_calls.calls == 4
    assert m_ckpt["grad_norm"] == pytest.approx(m_plain["grad_norm"], rel=1e-12)
    assert torch.allclose(params(plain.model), params(ckpt.model), rtol=0, atol=1e-12)


def test_fp16_is_refused_on_cpu_with_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.precision: fp16 autocast needs a CUDA device"):
        DPOTrainer(config=config(tmp_path, device="cpu", precision="fp16"))


def test_bf16_autocast_on_cpu_runs_forwards_in_bf16_and_keeps_fp32_weights(tmp_path):
    t = DPOTrainer(config=config(tmp_path, {"dtype": "float32"}, device="cpu", precision="bf16"))
    seen = set()
    t.model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    metrics = t.train()
    assert seen == {torch.bfloat16}
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
