"""Per-token cost against sequence length, and against the FLOP model (rlfoundry only).

    PYTHONPATH=src python benchmarks/bench_scaling.py                 # CPU, fp32 (~45 min)
    PYTHONPATH=src python benchmarks/bench_scaling.py --quick         # smoke test (seconds)
    PYTHONPATH=src python benchmarks/bench_scaling.py --device cuda --dtype bfloat16

**DPO**: a fixed token budget per step (``--budget`` tokens, counted as two sequences per
pair); at each length ``L`` every pair has a prompt of ``L/4`` and chosen / rejected
responses of ``3L/4`` each, so a step holds ``budget / 2L`` pairs, packed one pair per row
(prompt once). Timed: forward + backward of the policy's pair log-probs (rlfoundry's
``pair_logps``, the DPO training forward) under each ``model.attention`` path: ``sdpa``
(the dense ``[B,1,T,T]`` mask) and ``auto`` (block skipping: flex on CUDA, blocked sdpa on
CPU). **GRPO update**: one prompt of ``L/8`` tokens and ``G`` completions of ``L`` tokens,
padding-free packed (``data.packing``), forward + backward with entropy, over ``G`` and ``L``.

Each point is the median of ``--repeats`` timed steps (after one warm-up step), by wall time
and, on CPU, by this thread's CPU time (``time.thread_time``; one torch thread, so the step
runs on the calling thread and time lost to other jobs on a shared machine is not counted).
Per-token cost is divided by the first configuration's; the FLOP model's prediction (model
FLOPs, and FLOPs actually executed, :mod:`flops`) is normalised the same way; ``ratio`` =
measured / executed-FLOP prediction (1.00 = cost tracks the FLOPs exactly), from CPU time on
CPU (wall time on CUDA), with the wall-time ratio next to it. Utilisation = executed FLOP/s
over the GEMM peak, the median of short GEMM probes taken before every point (so peak and
steps see the same machine state), by the same clock. Every figure carries the load average.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flops  # noqa: E402

FULL = dict(hidden=384, layers=6, intermediate=1024, heads=6, kv_heads=2, vocab=32000)
QUICK = dict(hidden=64, layers=2, intermediate=128, heads=4, kv_heads=2, vocab=512)


def build(shape: flops.Shape, device: str, dtype: str, max_len: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=shape.vocab, hidden_size=shape.hidden,
                      intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                      num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                      max_position_embeddings=max(2048, 2 * max_len), tie_word_embeddings=True,
                      attention_dropout=0.0, attn_implementation="sdpa")
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).to(device=device, dtype=getattr(torch, dtype)).train()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str, repeats: int) -> dict:
    """Median wall and (CPU only) thread CPU seconds of ``repeats`` calls after a warm-up."""
    fn()  # warm-up (compilation, allocator)
    _sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.thread_time()
        fn()
        _sync(device)
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - t)
    out = {"seconds": statistics.median(wall), "wall_all": wall}
    if not device.startswith("cuda"):
        out.update(cpu_seconds=statistics.median(cpu), cpu_all=cpu)
    return out


def dpo_point(model, shape, length: int, budget: int, path: str, device: str, repeats: int):
    import torch

    from rlfoundry.algorithms.reference import pair_logps
    from rlfoundry.data import collate_preference_packed
    from rlfoundry.data.preference import TokenizedPair

    p, c = length // 4, 3 * length // 4
    n = max(1, budget // (2 * length))
    g = torch.Generator().manual_seed(length)

    def ids(k):
        return torch.randint(1, shape.vocab, (k,), generator=g).tolist()

    pairs = [TokenizedPair(ids(p), ids(c), ids(c), {}, "b", i) for i in range(n)]
    batch = {**collate_preference_packed(pairs, 0), "attention": path}

    def step():
        model.zero_grad(set_to_none=True)
        pair_logps(model, batch).sum().backward()

    timed = _time(step, device, repeats)
    f = flops.pair_flops(shape, p, c, c)
    return {"kind": "dpo", "L": length, "pairs": n, "path": path, **timed,
            "tokens": n * f["tokens"], "model_flops": n * f["model"],
            "executed_flops": n * f["executed"], "load": flops.load_average()}


def grpo_point(model, shape, length: int, group: int, device: str, repeats: int):
    import torch

    from rlfoundry.data.packing import pack_rows
    from rlfoundry.data.padding import pad_prompt_completions
    from rlfoundry.ops.packed import packed_token_logprobs

    p = max(1, length // 8)
    g = torch.Generator().manual_seed(group * 10_000 + length)
    prompt = torch.randint(1, shape.vocab, (p,), generator=g).tolist()
    comps = [torch.randint(1, shape.vocab, (length,), generator=g).tolist() for _ in range(group)]
    ids, attn, mask = pad_prompt_completions([prompt] * group, comps, 0)
    packed = pack_rows(ids, attn, mask, 0, capacity=4 * (p + length))

    def step():
        model.zero_grad(set_to_none=True)
        out = packed_token_logprobs(model, packed, "auto", with_entropy=True)
        (out.logprobs.sum() + 0.01 * out.entropy.sum()).backward()

    timed = _time(step, device, repeats)
    f = flops.sequence_flops(shape, p, length)
    return {"kind": "grpo", "L": length, "G": group, "path": "auto", **timed,
            "tokens": group * f["tokens"], "model_flops": group * f["model"],
            "executed_flops": group * f["executed"], "load": flops.load_average()}


def normalise(points: list[dict], peak: dict) -> None:
    """Per-token cost relative to the first point, the FLOP models' predictions, the ratio
    and utilisation; by CPU time where measured (``clock``), and the wall-time ratio."""
    base = points[0]
    clock = "cpu_seconds" if "cpu_seconds" in base else "seconds"
    rate = peak["cpu_median"] if clock == "cpu_seconds" else peak["median"]
    for pt in points:
        pt["clock"] = "cpu" if clock == "cpu_seconds" else "wall"
        pt["s_per_token"] = pt[clock] / pt["tokens"]
        pt["cost_rel"] = pt["s_per_token"] / (base[clock] / base["tokens"])
        pt["model_rel"] = (pt["model_flops"] / pt["tokens"]) / (base["model_flops"] / base["tokens"])
        pt["executed_rel"] = ((pt["executed_flops"] / pt["tokens"])
                              / (base["executed_flops"] / base["tokens"]))
        pt["ratio"] = pt["cost_rel"] / pt["executed_rel"]
        pt["wall_ratio"] = (pt["seconds"] / pt["tokens"]) / (base["seconds"] / base["tokens"]) \
            / pt["executed_rel"]
        pt["executed_gflops"] = pt["executed_flops"] / pt[clock] / 1e9
        pt["model_gflops"] = pt["model_flops"] / pt[clock] / 1e9
        pt["executed_util"] = pt["executed_gflops"] / rate
        pt["model_util"] = pt["model_gflops"] / rate


def table(points: list[dict], extra: str) -> str:
    clock = points[0]["clock"] if points else "wall"
    head = (f"| {extra} | path | wall s/step | {clock} s/step | ms/token ({clock}) | "
            f"cost / first | model-FLOP pred. | executed-FLOP pred. | measured / executed "
            f"({clock}) | ditto (wall) | executed GFLOP/s | util. (executed) | util. (model) | "
            f"load avg |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for pt in points:
        key = f"L={pt['L']}" + (f", G={pt['G']}" if "G" in pt else f", {pt['pairs']} pairs")
        own = pt.get("cpu_seconds", pt["seconds"])
        lines.append(
            f"| {key} | {pt['path']} | {pt['seconds']:.3g} | {own:.3g} | "
            f"{1e3 * pt['s_per_token']:.3g} | {pt['cost_rel']:.2f} | {pt['model_rel']:.2f} | "
            f"{pt['executed_rel']:.2f} | {pt['ratio']:.2f} | {pt['wall_ratio']:.2f} | "
            f"{pt['executed_gflops']:.3g} | {pt['executed_util']:.2f} | "
            f"{pt['model_util']:.2f} | {pt['load'].split(' on ')[0][5:]} |")
    return "\n".join(lines)


def peak_line(peak: dict, dtype: str) -> str:
    cpu = (f"; by CPU time {peak['cpu_median']:.1f} (min {peak['cpu_min']:.1f}, max "
           f"{peak['cpu_max']:.1f})" if "cpu_median" in peak else "")
    return (f"GEMM peak {peak['median']:.1f} GFLOP/s by wall time (min {peak['min']:.1f}, max "
            f"{peak['max']:.1f}){cpu}: {dtype}, {peak['n']}^3, median of {peak['repeats']} GEMMs "
            f"in {peak.get('probes', 1)} probes, one before every point")


def _ticks(ax, values: list[int]) -> None:
    ticks = sorted(set(values))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()


def plot(series: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for name, pts in series.items():
        if pts and pts[0]["kind"] == "dpo":
            ax.plot([p["L"] for p in pts], [p["cost_rel"] for p in pts], "o-", label=f"measured, {name}")
    dpo = next((p for p in series.values() if p and p[0]["kind"] == "dpo"), [])
    if dpo:
        ax.plot([p["L"] for p in dpo], [p["model_rel"] for p in dpo], "k--", label="model-FLOP model")
        ax.plot([p["L"] for p in dpo], [p["executed_rel"] for p in dpo], "k:", label="executed FLOPs")
    ax.set(xscale="log", xlabel="L (tokens per sequence)", ylabel="per-token cost / first L (CPU time on CPU)",
           title="DPO, fixed token budget")
    _ticks(ax, [p["L"] for pts in series.values() for p in pts if p["kind"] == "dpo"])
    ax.legend(fontsize=8)
    ax = axes[1]
    grpo = series.get("grpo", [])
    for group in sorted({p["G"] for p in grpo}):
        pts = [p for p in grpo if p["G"] == group]
        ax.plot([p["L"] for p in pts], [p["cost_rel"] for p in pts], "o-", label=f"measured, G={group}")
        ax.plot([p["L"] for p in pts], [p["executed_rel"] for p in pts], ":", label=f"FLOPs, G={group}")
    ax.set(xscale="log", xlabel="completion length", ylabel="per-token cost / first",
           title="GRPO update (packed)")
    _ticks(ax, [p["L"] for p in grpo])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--quick", action="store_true", help="tiny model and lengths (seconds)")
    ap.add_argument("--lengths", default=None, help="DPO lengths, comma-separated")
    ap.add_argument("--budget", type=int, default=None, help="DPO tokens per step")
    ap.add_argument("--groups", default=None, help="GRPO group sizes ('' for none)")
    ap.add_argument("--grpo-lengths", default=None, help="GRPO completion lengths")
    ap.add_argument("--paths", default="auto,sdpa", help="model.attention paths for DPO")
    ap.add_argument("--sdpa-lengths", default=None,
                    help="DPO lengths for the sdpa path (default: --lengths; it is slow)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per point (median)")
    ap.add_argument("--probe", type=int, default=5, help="timed GEMMs per peak probe")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="directory for table.md, JSON, PNG")
    args = ap.parse_args(argv)
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    shape = flops.Shape(**(QUICK if args.quick else FULL))
    lengths = [int(x) for x in (args.lengths or ("64,128" if args.quick else "256,512,1024,2048,4096")).split(",")]
    budget = args.budget or (256 if args.quick else 8192)
    default_groups = "2,4" if args.quick else "4,8"
    groups = [int(x) for x in (default_groups if args.groups is None else args.groups).split(",") if x]
    glens = [int(x) for x in (args.grpo_lengths or ("32,64" if args.quick else "256,1024")).split(",")]
    n_gemm = 256 if args.quick else 1024
    probes: list[dict] = []

    def probe() -> None:  # a short GEMM probe before every point: same machine state
        pr = flops.gemm_peak(args.device, args.dtype, n=n_gemm, warmup=1, repeats=args.probe)
        probes.append(pr)
        cpu = f", CPU {pr['cpu_median']:.1f}" if "cpu_median" in pr else ""
        print(f"  probe: GEMM {pr['median']:.1f} GFLOP/s wall{cpu} ({pr['load']})", flush=True)

    def show(what: str, pt: dict) -> None:
        cpu = f", CPU {pt['cpu_seconds']:.3f} s" if "cpu_seconds" in pt else ""
        print(f"  {what}: wall {pt['seconds']:.3f} s{cpu} ({pt['load']})", flush=True)

    model = build(shape, args.device, args.dtype, max(lengths + glens))
    series: dict[str, list[dict]] = {}
    for path in [x for x in args.paths.split(",") if x]:
        series[path] = []
        todo = lengths
        if path == "sdpa" and args.sdpa_lengths:
            todo = [int(x) for x in args.sdpa_lengths.split(",")]
        for length in todo:
            probe()
            pt = dpo_point(model, shape, length, budget, path, args.device, args.repeats)
            series[path].append(pt)
            show(f"dpo {path} L={length}", pt)
    series["grpo"] = []
    for group in groups:
        for length in glens:
            probe()
            pt = grpo_point(model, shape, length, group, args.device, args.repeats)
            series["grpo"].append(pt)
            show(f"grpo G={group} L={length}", pt)
    probe()
    peak = flops.pooled(probes)
    for name, pts in series.items():
        if name == "grpo":
            for group in groups:
                normalise([p for p in pts if p["G"] == group], peak)
        elif pts:
            normalise(pts, peak)
    dpo_rows = [p for name, pts in series.items() if name != "grpo" for p in pts]
    text = (f"{peak_line(peak, args.dtype)}; device {args.device}; model hidden {shape.hidden}, "
            f"{shape.layers} layers, vocab {shape.vocab}; DPO budget {budget} tokens/step; "
            f"each point the median of {args.repeats} timed steps\n\n"
            + (table(dpo_rows, "DPO") if dpo_rows else "")
            + ("\n\n" + table(series["grpo"], "GRPO update") if series["grpo"] else ""))
    print(text)
    result = {"peak": peak, "probes": probes, "series": series,
              "args": {k: str(v) for k, v in vars(args).items()}}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scaling.md").write_text(text + "\n")
        (args.out / "scaling.json").write_text(json.dumps(result, indent=1))
        plot(series, args.out / "scaling.png")
    return result


if __name__ == "__main__":
    main()
