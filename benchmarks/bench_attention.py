"""Packed-pair attention alone, forward + backward, one layer: what each CPU path costs.

    PYTHONPATH=src python benchmarks/bench_attention.py                  # L = 256 ... 4096
    PYTHONPATH=src python benchmarks/bench_attention.py --lengths 1024 --quick

The layout of ``bench_scaling.py``'s DPO points (a fixed budget of 8,192 tokens, prompt
``L/4``, chosen and rejected ``3L/4``, one pair per row; 6 query heads, 2 key/value heads,
head size 64, fp32, 1 thread). Paths: ``dense`` (sdpa with the ``[B,1,T,T]`` mask),
``blocks`` (the block loop, 128-token blocks), ``segments`` (the default for this layout,
:mod:`rlfoundry.ops.attention`), and for reference sdpa's fused kernel with ``is_causal``
against no mask at ``n`` tokens (the upper triangle is skipped only in 512-key steps).
Times are this thread's CPU time (median of ``--repeats``); GFLOP/s counts the mask's area
only (4 x head size FLOPs per (query, key) pair and head, x3 for forward + backward).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flops  # noqa: E402

HEADS, KV_HEADS, DIM = 6, 2, 64


class _Training:
    training = True


def _cpu(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return statistics.median(times)


def pair_layout(length: int, budget: int):
    import torch

    p, c = length // 4, 3 * length // 4
    rows, t = max(1, budget // (2 * length)), p + 2 * c
    doc = torch.zeros(rows, t, dtype=torch.long)
    seg = torch.zeros(rows, t, dtype=torch.long)
    seg[:, p:p + c], seg[:, p + c:] = 1, 2
    area = rows * (flops.causal_area(p) + 2 * (c * p + flops.causal_area(c)))
    return doc, seg, area


def time_paths(length: int, budget: int, repeats: int) -> dict[str, float]:
    import torch

    from rlfoundry.ops import attention

    doc, seg, area = pair_layout(length, budget)
    b, t = doc.shape
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(b, h, t, DIM, generator=g) for h in (HEADS, KV_HEADS, KV_HEADS)]
    mask = attention.dense_mask(doc, seg)
    by_segments = mask.clone()  # the plan is built once per forward, for all layers: untimed
    by_segments._rlf_segments = attention.segment_calls(doc, seg)

    def run(path):
        q, k, v = (x.clone().requires_grad_() for x in base)
        if path == "dense":
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                   enable_gqa=True)
        else:  # blocks: the block plan is cached by the warm-up call, as across layers
            m = by_segments if path == "segments" else mask
            out = attention._blocked_forward(_Training(), q, k, v, m)[0]
        out.sum().backward()

    gflop = 3 * 4 * DIM * HEADS * area / 1e9
    out = {}
    for path in ("dense", "blocks", "segments"):
        run(path)  # warm-up
        out[path] = _cpu(lambda p=path: run(p), repeats)
        print(f"L={length} ({b} rows of {t}) {path:8s} CPU {out[path]:.3f} s  "
              f"{gflop / out[path]:.1f} GFLOP/s of the mask's area  ({flops.load_average()})",
              flush=True)
    return out


def causal_vs_full(n: int, repeats: int) -> None:
    import torch

    q0, k0, v0 = (torch.randn(1, h, n, DIM) for h in (HEADS, KV_HEADS, KV_HEADS))
    res = {}
    for causal in (True, False):
        def run(causal=causal):
            q, k, v = (x.clone().requires_grad_() for x in (q0, k0, v0))
            torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=causal, enable_gqa=True).sum().backward()
        run()
        res[causal] = _cpu(run, repeats)
    print(f"n={n}: is_causal {1e3 * res[True]:.1f} ms, no mask {1e3 * res[False]:.1f} ms, "
          f"causal / full {res[True] / res[False]:.2f} (ideal {flops.causal_area(n) / n / n:.2f})",
          flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="256,1024,2048,4096")
    ap.add_argument("--budget", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one repeat, no kernel table")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    repeats = 1 if args.quick else args.repeats
    for length in (int(x) for x in args.lengths.split(",")):
        time_paths(length, args.budget, repeats)
    if not args.quick:
        for n in (256, 512, 1024, 2048, 4096):
            causal_vs_full(n, repeats)


if __name__ == "__main__":
    main()
