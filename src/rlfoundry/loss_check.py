"""``rlfoundry check-loss``: exercise a loss on random and edge-case batches before training.

Checks, each reported as pass/fail with a reason:

- finite: the loss is a finite scalar on random inputs, equal chosen/rejected log-probs,
  very large magnitudes, an all-empty response mask and a batch of one;
- gradients: the policy inputs (``policy_chosen_logps``/``policy_rejected_logps`` for
  preference losses, ``logprobs`` for token losses) receive finite, non-zero gradients;
- gradcheck: float64 finite-difference check of those gradients (``torch.autograd.gradcheck``);
- batch-size invariance: the loss of a batch equals the loss of that batch repeated twice
  (a mean, not a sum, so accumulation weights mean what they say);
- metrics: every metric is a number or a 0-dim tensor;
- direction: for pairs, raising the chosen log-probs over the rejected ones (from equal
  log-probs) lowers the loss; for sampled responses, the gradient raises the log-probs of
  samples with a positive advantage and lowers those with a negative one (a sign-flipped
  DPO or GRPO loss trains the model away from the preferred responses and fails here).

A loss that cannot run at all is reported with its real cause: a signature other than
``(batch, model_outputs)``, a non-scalar loss, metrics that are not a dict, or the error it
raised on each input kind.

Two input kinds: ``preference`` (pairs, as the DPO trainer calls losses) and ``policy``
(sampled responses with advantages, as the GRPO trainer calls them); ``auto`` tries
policy first (pair losses fail there for lack of pairs), then preference.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rlfoundry.errors import ConfigError, LossError
from rlfoundry.training.loss_result import check_loss_signature, checked_loss_result

KINDS = ("auto", "preference", "policy")
_POLICY_INPUTS = {"preference": ("policy_chosen_logps", "policy_rejected_logps"), "policy": ("logprobs",)}


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class LossReport:
    kind: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def add(self, name: str, passed: bool, detail: str = "") -> None:
        self.results.append(CheckResult(name, bool(passed), detail))

    def format(self) -> str:
        lines = [f"input kind: {self.kind}"]
        lines += [f"  [{'PASS' if r.passed else 'FAIL'}] {r.name}" + (f": {r.detail}" if r.detail else "")
                  for r in self.results]
        lines.append("all checks passed" if self.passed else
                     f"{sum(not r.passed for r in self.results)} check(s) failed")
        return "\n".join(lines)


def make_batch(kind: str, b: int = 3, t: int = 6, seed: int = 0, scale: float = 1.0,
               equal: bool = False, empty: bool = False, dtype=torch.float64):
    """(batch, model_outputs) like a trainer builds them; policy inputs require grad."""
    g = torch.Generator().manual_seed(seed)
    rows = 2 * b if kind == "preference" else b
    mask = torch.ones(rows, t, dtype=torch.bool)
    mask[:, : t // 3] = False
    if empty:
        mask[:] = False
    logprobs = -(torch.rand(rows, t, generator=g, dtype=dtype) * 2 + 0.05) * scale
    if equal and kind == "preference":
        logprobs[b:] = logprobs[:b]
    logprobs = logprobs.masked_fill(~mask, 0.0).requires_grad_()
    batch: dict[str, Any] = {
        "response_mask": mask, "loss_mask": torch.cat([torch.zeros(rows, 1), mask.double()], 1),
        "input_ids": torch.randint(3, 100, (rows, t + 1), generator=g),
        "num_sequences": b, "num_tokens": int(mask[:b].sum()) if kind == "preference" else int(mask.sum()),
    }
    outputs: dict[str, Any] = {"logprobs": logprobs}
    if kind == "preference":
        sums = logprobs.sum(-1)
        counts = mask.sum(-1).to(dtype)
        ref = sums.detach() + (0.0 if equal else torch.randn(rows, generator=g, dtype=dtype) * 0.5 * scale)
        batch.update(reference_chosen_logps=ref[:b], reference_rejected_logps=ref[b:],
                     chosen_token_counts=counts[:b], rejected_token_counts=counts[b:],
                     is_chosen=torch.arange(rows) < b, advantages=(torch.arange(rows) < b).to(dtype) * 2 - 1)
        outputs.update(policy_chosen_logps=sums[:b], policy_rejected_logps=sums[b:])
    else:
        noise = torch.randn(rows, t, generator=g, dtype=dtype) * 0.1
        batch.update(advantages=torch.randn(rows, generator=g, dtype=dtype) * scale,
                     old_logprobs=(logprobs.detach() + noise).masked_fill(~mask, 0.0),
                     reference_logprobs=(logprobs.detach() - noise).masked_fill(~mask, 0.0),
                     sampling_logprobs=logprobs.detach().clone(),
                     returns=torch.rand(rows, generator=g, dtype=dtype),
                     truncated=torch.zeros(rows, dtype=torch.bool),
                     group_id=torch.arange(rows) // 2)
        outputs["entropy"] = torch.rand(rows, t, generator=g, dtype=dtype)
    return batch, outputs


def _repeat(batch, outputs, kind: str):
    """The same batch twice (pairs stay pairs: chosen rows first, then rejected rows)."""
    def rep(v, rows_first: bool):
        if not isinstance(v, torch.Tensor) or v.dim() == 0:
            return v
        if kind == "preference" and rows_first:
            b = v.shape[0] // 2
            return torch.cat([v[:b], v[:b], v[b:], v[b:]])
        return torch.cat([v, v])

    rows = 2 * batch["num_sequences"] if kind == "preference" else batch["num_sequences"]
    b2 = {k: rep(v, isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == rows) for k, v in batch.items()}
    b2["num_sequences"], b2["num_tokens"] = 2 * batch["num_sequences"], 2 * batch["num_tokens"]
    o2 = {k: rep(v, isinstance(v, torch.Tensor) and v.shape[0] == rows) for k, v in outputs.items()}
    return b2, o2


def _run(factory, batch, outputs):
    """``(scalar loss, metrics)``; ``LossError`` for a non-scalar loss or non-dict metrics."""
    return checked_loss_result(factory()(batch, outputs), "the loss", check_values=False)  # own check


def detect_kind(factory) -> tuple[str | None, dict[str, BaseException]]:
    """'policy' if the loss runs on sampled responses alone, else 'preference' if on pairs
    (None if neither), and the error raised on each kind that failed."""
    errors: dict[str, BaseException] = {}
    for kind in ("policy", "preference"):
        try:
            _run(factory, *make_batch(kind))
            return kind, errors
        except Exception as e:  # noqa: BLE001 - trying the other input kind is the point
            errors[kind] = e
    return None, errors


def _cannot_run(report: LossReport, errors: dict[str, BaseException]) -> LossReport:
    """The real cause when the loss runs on no input kind: a defect of its result (the same
    LossError on every kind), else each kind's error."""
    shape = [e for e in errors.values() if isinstance(e, LossError)]
    if shape:
        report.add("returns a scalar loss and a metrics dict", False, str(shape[0]))
        return report
    for kind, e in errors.items():
        report.add(f"runs on {kind} batches", False, f"raised {type(e).__name__}: {e}")
    return report


def check_loss(factory: Callable[[], Any], kind: str = "auto") -> LossReport:
    """Run every check; ``factory()`` returns a fresh loss (stateful losses start clean)."""
    if kind not in KINDS:
        raise ConfigError(f"--kind must be one of {KINDS}, got {kind!r}")
    try:
        check_loss_signature(factory(), "the loss")
    except ConfigError as e:
        report = LossReport(kind)
        report.add("callable as loss(batch, model_outputs)", False, str(e))
        return report
    if kind == "auto":
        kind, errors = detect_kind(factory)
        if kind is None:
            return _cannot_run(LossReport("undetermined (fails on preference and policy batches)"), errors)
    report = LossReport(kind)
    cases = {"random inputs": {}, "equal chosen/rejected log-probs": {"equal": True},
             "large magnitudes (x1e4)": {"scale": 1e4}, "empty response masks": {"empty": True},
             "batch of one": {"b": 1}}
    random_result = None
    for name, kw in cases.items():
        batch, outputs = make_batch(kind, **kw)
        try:
            loss, metrics = _run(factory, batch, outputs)
        except Exception as e:  # noqa: BLE001 - reported, not swallowed
            report.add(f"finite loss on {name}", False, f"raised {type(e).__name__}: {e}")
            continue
        ok = math.isfinite(float(loss.detach()))
        report.add(f"finite loss on {name}", ok, f"loss={float(loss.detach()):.6g}")
        if name == "random inputs":
            random_result = (batch, outputs, loss, metrics)
    if random_result is None:
        return report
    batch, outputs, loss, metrics = random_result
    _check_gradients(report, kind, outputs, loss)
    _check_gradcheck(report, factory, kind)
    _check_invariance(report, factory, kind, float(loss.detach()))
    _check_direction(report, factory, kind)
    bad = {k: type(v).__name__ for k, v in metrics.items()
           if not (isinstance(v, numbers.Number) or (isinstance(v, torch.Tensor) and v.numel() == 1))}
    report.add("metrics are numbers or 0-dim tensors", not bad, f"bad: {bad}" if bad else f"{len(metrics)} metrics")
    return report


def _check_gradients(report: LossReport, kind: str, outputs, loss) -> None:
    leaf = outputs["logprobs"]
    if not loss.requires_grad:
        report.add("gradients reach the policy inputs", False, "the loss does not depend on the policy inputs")
        return
    loss.backward()
    grad = leaf.grad
    fine = grad is not None and bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)
    names = ", ".join(_POLICY_INPUTS[kind])
    report.add(f"gradients reach the policy inputs ({names})", fine,
               "no gradient" if grad is None else f"|grad| sum={float(grad.abs().sum()):.4g}")


def _check_gradcheck(report: LossReport, factory, kind: str) -> None:
    batch, outputs = make_batch(kind, b=2, t=4, seed=1)
    leaf = outputs["logprobs"]

    def fn(x):
        b2, o2 = make_batch(kind, b=2, t=4, seed=1)
        x_masked = x.masked_fill(~b2["response_mask"], 0.0)
        o2["logprobs"] = x_masked
        if kind == "preference":
            sums = x_masked.sum(-1)
            o2["policy_chosen_logps"], o2["policy_rejected_logps"] = sums[:2], sums[2:]
        return _run(factory, b2, o2)[0]

    try:
        ok = torch.autograd.gradcheck(fn, (leaf.detach().clone().requires_grad_(),), eps=1e-6, atol=1e-5,
                                      rtol=1e-4, raise_exception=True)
        report.add("float64 finite-difference gradient check", ok)
    except Exception as e:  # noqa: BLE001 - reported
        report.add("float64 finite-difference gradient check", False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")


def _check_invariance(report: LossReport, factory, kind: str, value: float) -> None:
    batch, outputs = make_batch(kind)
    try:
        doubled = float(_run(factory, *_repeat(batch, outputs, kind))[0].detach())
    except Exception as e:  # noqa: BLE001 - reported
        report.add("mean is invariant to batch size", False, f"raised {type(e).__name__}: {e}")
        return
    ok = math.isclose(doubled, value, rel_tol=1e-6, abs_tol=1e-9)
    report.add("mean is invariant to batch size (batch repeated twice)", ok,
               f"loss={value:.6g}, repeated={doubled:.6g}" + ("" if ok else " (a sum, not a mean?)"))


def _check_direction(report: LossReport, factory, kind: str) -> None:
    """Does minimising the loss move the policy the right way? (see the module docstring)"""
    name = ("raising chosen over rejected log-probs lowers the loss" if kind == "preference"
            else "the gradient raises the log-probs of positive-advantage samples")
    try:
        ok, detail = (_preference_direction if kind == "preference" else _policy_direction)(factory)
    except Exception as e:  # noqa: BLE001 - reported
        ok, detail = False, f"raised {type(e).__name__}: {e}"
    report.add(name, ok, detail)


def _preference_direction(factory) -> tuple[bool, str]:
    batch, outputs = make_batch("preference", equal=True)  # margin 0: every DPO loss has a slope
    before = float(_run(factory, batch, outputs)[0].detach())
    b = batch["num_sequences"]
    mask = batch["response_mask"].to(outputs["logprobs"].dtype)
    shift = torch.cat([torch.ones(b), -torch.ones(b)]).to(mask).unsqueeze(-1) * 0.5
    logprobs = (outputs["logprobs"].detach() + shift * mask / mask.sum(-1, keepdim=True)).requires_grad_()
    sums = logprobs.sum(-1)
    moved = {**outputs, "logprobs": logprobs, "policy_chosen_logps": sums[:b], "policy_rejected_logps": sums[b:]}
    after = float(_run(factory, batch, moved)[0].detach())
    detail = f"loss {before:.6g} -> {after:.6g} when chosen log-probs rise by 0.5 and rejected fall by 0.5"
    if after < before:
        return True, detail
    return False, detail + ("; the loss rewards the rejected response (sign flipped?)"
                            if after > before else "; the loss does not depend on the margin")


def _policy_direction(factory) -> tuple[bool, str]:
    up, down = _descent_moves(factory, 1.0)
    detail = (f"a descent step moves positive-advantage log-probs by {up:+.3g} and negative ones "
              f"by {down:+.3g} (times the learning rate)")
    if up > 0 and down < 0:
        return True, detail
    if math.isclose(up, down, rel_tol=1e-6, abs_tol=1e-12) and (up, down) == _descent_moves(factory, -1.0):
        return True, detail + "; the loss does not use advantages (e.g. NLL): not a policy-gradient term"
    return False, detail + ("; the advantage sign is flipped" if up < 0 and down > 0 else "")


def _descent_moves(factory, sign: float) -> tuple[float, float]:
    """How a gradient-descent step moves the summed log-probs of the samples with advantage
    ``+sign`` and of those with ``-sign`` (old = reference = sampling log-probs: ratio 1)."""
    batch, outputs = make_batch("policy", b=4)
    lp = outputs["logprobs"].detach()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=lp.dtype) * sign
    batch.update(advantages=adv, old_logprobs=lp.clone(), reference_logprobs=lp.clone(),
                 sampling_logprobs=lp.clone())
    leaf = lp.clone().requires_grad_()
    loss = _run(factory, batch, {**outputs, "logprobs": leaf})[0]
    if not loss.requires_grad:
        return 0.0, 0.0
    loss.backward()
    step = -(leaf.grad * batch["response_mask"].to(lp.dtype)).sum(-1)
    return float(step[0::2].sum()), float(step[1::2].sum())


def loss_factory(spec: str, options: dict[str, Any]) -> Callable[[], Any]:
    """``module:Name``, ``path/file.py:Name`` or a registered name -> a loss factory."""
    from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
    from rlfoundry.plugins import import_plugins
    from rlfoundry.registry import import_object

    if ":" in spec:
        module, _, attr = spec.rpartition(":")
        if module.endswith(".py") or "/" in module:
            import sys

            import_plugins([module])
            obj = getattr(sys.modules[f"rlfoundry_plugin_{module.rsplit('/', 1)[-1][:-3]}"], attr, None)
            if obj is None:
                raise ConfigError(f"'{module}' has no attribute '{attr}'")
        else:
            obj = import_object(spec)
    else:
        obj = LossFunctionRegistry.get(spec)
    if isinstance(obj, type):
        return lambda: obj(dict(options))
    if callable(obj):
        if options:
            raise ConfigError("options apply to loss classes, not to a plain loss function")
        return lambda: obj
    raise ConfigError(f"'{spec}' is not a loss class or function")
