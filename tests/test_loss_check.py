import textwrap

import pytest

from rlfoundry.loss_check import check_loss, loss_factory

BAD_LOSSES = textwrap.dedent('''
    import torch
    import torch.nn.functional as F

    def _h(batch, out):
        return (out["policy_chosen_logps"] - batch["reference_chosen_logps"]) - (
            out["policy_rejected_logps"] - batch["reference_rejected_logps"])

    class GoodDPO:
        def __init__(self, cfg):
            self.beta = cfg.get("beta", 0.1)
        def __call__(self, batch, out):
            loss = -F.logsigmoid(self.beta * _h(batch, out)).mean()
            return loss, {"loss": loss.detach(), "beta": self.beta}

    class SummedDPO(GoodDPO):
        def __call__(self, batch, out):
            return -F.logsigmoid(self.beta * _h(batch, out)).sum(), {}

    class LogGapDPO(GoodDPO):  # log of the policy gap: NaN when chosen == rejected
        def __call__(self, batch, out):
            gap = out["policy_chosen_logps"] - out["policy_rejected_logps"]
            return -torch.log(gap.abs()).mean(), {}

    class DetachedDPO(GoodDPO):
        def __call__(self, batch, out):
            return -F.logsigmoid(self.beta * _h(batch, out)).mean().detach(), {}

    class ListMetricDPO(GoodDPO):
        def __call__(self, batch, out):
            loss = -F.logsigmoid(self.beta * _h(batch, out)).mean()
            return loss, {"per_pair": _h(batch, out).detach()}

    class WrongGradDPO(GoodDPO):  # a custom autograd function with a wrong backward
        def __call__(self, batch, out):
            class Sq(torch.autograd.Function):
                @staticmethod
                def forward(ctx, x):
                    ctx.save_for_backward(x)
                    return x * x
                @staticmethod
                def backward(ctx, g):
                    (x,) = ctx.saved_tensors
                    return g * x  # should be 2x
            return Sq.apply(self.beta * _h(batch, out)).mean(), {}
''')


@pytest.fixture(scope="module")
def losses_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "bad_losses.py"
    path.write_text(BAD_LOSSES)
    return path


def failed(report):
    return {r.name.split(" (")[0].split(" on ")[-1] if r.name.startswith("finite") else r.name.split(" (")[0]
            for r in report.results if not r.passed}


def test_good_and_builtin_losses_pass(losses_file):
    assert check_loss(loss_factory(f"{losses_file}:GoodDPO", {"beta": 0.2})).passed
    for name in ("dpo", "ipo", "simpo", "grpo", "dapo", "nll"):
        report = check_loss(loss_factory(name, {}))
        assert report.passed, report.format()
    assert check_loss(loss_factory("grpo", {})).kind == "policy"


@pytest.mark.parametrize("name, expected", [
    ("SummedDPO", {"mean is invariant to batch size"}),
    ("LogGapDPO", {"equal chosen/rejected log-probs"}),
    ("DetachedDPO", {"gradients reach the policy inputs"}),
    ("ListMetricDPO", {"metrics are numbers or 0-dim tensors"}),
    ("WrongGradDPO", {"float64 finite-difference gradient check"}),
])
def test_each_defect_is_reported(losses_file, name, expected):
    report = check_loss(loss_factory(f"{losses_file}:{name}", {}), kind="preference")
    assert expected <= failed(report), report.format()


def test_cli_exit_codes(losses_file, capsys):
    # in this process (the `python -m rlfoundry` entry point: test_cli.test_help_lists_commands)
    from rlfoundry.cli import main

    assert main(["check-loss", f"{losses_file}:GoodDPO", "-o", "beta=0.3"]) == 0
    out = capsys.readouterr()
    assert "all checks passed" in out.out, out.out + out.err
    assert main(["check-loss", f"{losses_file}:SummedDPO"]) == 1
    assert "[FAIL] mean is invariant" in capsys.readouterr().out
    assert main(["check-loss", "no_such_loss"]) == 2
    assert "unknown loss function" in capsys.readouterr().err
