"""FLOP accounting and an honest peak for the benchmarks (issue 20).

Two counts for the same work:

- **model FLOPs** (the usual MFU convention): every sequence on its own, prompt included
  (a DPO pair is prompt+chosen and prompt+rejected), the lm-head on every position and
  dense causal attention (T^2 / 2 per sequence).
- **executed FLOPs**: what rlfoundry's packed path computes: the prompt once per pair,
  attention by the area of its mask (prompt causal, each response over the prompt and
  causally itself), the lm-head only at response positions.

Training counts 3x the forward (forward + 2x backward). The peak is the median of repeated
GEMMs, never the best one, by wall and by CPU time, in short probes taken between the timed
points so that peak and steps see the same machine state; every figure is printed with the
machine's load average.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer's matmuls (q, k, v, o and the gated MLP)."""
        head_dim = self.hidden // self.heads
        attn = self.hidden * self.hidden * 2 + 2 * self.hidden * self.kv_heads * head_dim
        return attn + 3 * self.hidden * self.intermediate

    def linear(self, tokens: float) -> float:
        """Forward FLOPs of the decoder layers' matmuls for ``tokens`` positions."""
        return 2.0 * self.layer_params * self.layers * tokens

    def head(self, tokens: float) -> float:
        return 2.0 * self.hidden * self.vocab * tokens

    def attention(self, area: float) -> float:
        """Forward FLOPs of QK^T and AV over ``area`` (query, key) pairs, all layers."""
        return 4.0 * self.hidden * area * self.layers


def causal_area(n: int) -> float:
    return n * (n + 1) / 2


def pair_flops(shape: Shape, p: int, c: int, r: int, train: bool = True) -> dict[str, float]:
    """Model and executed FLOPs of one DPO pair (prompt p, chosen c, rejected r tokens)."""
    k = 3.0 if train else 1.0
    model = k * (shape.linear(2 * p + c + r) + shape.head(2 * p + c + r)
                 + shape.attention(causal_area(p + c) + causal_area(p + r)))
    area = causal_area(p) + c * p + causal_area(c) + r * p + causal_area(r)
    executed = k * (shape.linear(p + c + r) + shape.head(c + r) + shape.attention(area))
    return {"model": model, "executed": executed, "tokens": float(2 * p + c + r)}


def sequence_flops(shape: Shape, p: int, c: int, train: bool = True) -> dict[str, float]:
    """Model and executed FLOPs of one prompt + completion sequence (SFT row, GRPO sample)."""
    k = 3.0 if train else 1.0
    model = k * (shape.linear(p + c) + shape.head(p + c) + shape.attention(causal_area(p + c)))
    executed = k * (shape.linear(p + c) + shape.head(c) + shape.attention(causal_area(p + c)))
    return {"model": model, "executed": executed, "tokens": float(p + c)}


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load n/a"
    return f"load {one:.2f}/{five:.2f}/{fifteen:.2f} on {os.cpu_count()} cpus"


def gemm_peak(device: str = "cpu", dtype: str = "float32", n: int = 1024,
              warmup: int = 3, repeats: int = 9) -> dict:
    """Matmul rate of this machine (GFLOP/s): ``warmup`` untimed GEMMs, then the median (and
    spread) of ``repeats`` timed ones, by wall time and, on CPU, by this thread's CPU time
    (``cpu_*``; with one torch thread the GEMM runs on the calling thread, so time lost to
    other jobs on a shared machine is not counted). ``rates`` / ``cpu_rates`` keep every
    sample, so probes taken between timed steps can be pooled (:func:`pooled`)."""
    import torch

    dt = getattr(torch, dtype)
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    c = torch.empty(n, n, device=device, dtype=dt)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        torch.mm(a, b, out=c)
    sync()
    rates, cpu_rates = [], []
    for _ in range(repeats):
        t, cpu = time.perf_counter(), time.thread_time()
        torch.mm(a, b, out=c)
        sync()
        cpu = time.thread_time() - cpu
        rates.append(2 * n ** 3 / (time.perf_counter() - t) / 1e9)
        if not device.startswith("cuda") and cpu > 0:
            cpu_rates.append(2 * n ** 3 / cpu / 1e9)
    return {**_summary(rates, cpu_rates), "n": n, "repeats": repeats, "rates": rates,
            "cpu_rates": cpu_rates, "load": load_average()}


def _summary(rates: list[float], cpu_rates: list[float]) -> dict:
    out = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
    if cpu_rates:
        out.update(cpu_median=statistics.median(cpu_rates), cpu_min=min(cpu_rates),
                   cpu_max=max(cpu_rates))
    return out


def pooled(probes: list[dict]) -> dict:
    """One peak from several :func:`gemm_peak` probes: the median over all their samples."""
    rates = [r for pr in probes for r in pr["rates"]]
    cpu_rates = [r for pr in probes for r in pr["cpu_rates"]]
    return {**_summary(rates, cpu_rates), "n": probes[0]["n"], "repeats": len(rates),
            "probes": len(probes), "load": probes[-1]["load"]}
