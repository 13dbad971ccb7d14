import torch

from rlfoundry.config.schema import TrainingConfig
from rlfoundry.training.optim import build_optimizer


def test_fused_adamw_on_cpu_matches_plain_adamw():
    torch.manual_seed(0)
    cfg = TrainingConfig(learning_rate=1e-2, weight_decay=0.1)
    weights = [torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64)),
               torch.nn.Parameter(torch.randn(3, dtype=torch.float64))]
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    fused = build_optimizer(weights, cfg)
    plain = torch.optim.AdamW([{"params": copies[:1], "weight_decay": 0.1},
                               {"params": copies[1:], "weight_decay": 0.0}], lr=1e-2)
    assert fused.defaults["fused"]
    for _ in range(3):
        grads = [torch.randn_like(w) for w in weights]
        for w, c, g in zip(weights, copies, grads):
            w.grad, c.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for w, c in zip(weights, copies):
        assert torch.allclose(w, c, rtol=0, atol=1e-12)
