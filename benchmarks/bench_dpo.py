"""DPO side by side: rlfoundry vs TRL on the same model, data, batch shapes and steps.

    PYTHONPATH=src python benchmarks/bench_dpo.py            # full run (a few minutes)
    PYTHONPATH=src python benchmarks/bench_dpo.py --quick    # smoke test

Two phases, each library in its own subprocess:

1. **Equal math.** Both train ``--check-steps`` steps on the same pairs in the same order
   (no shuffling), sigmoid DPO, same beta / lr / AdamW / clipping / accumulation; the script
   prints each step's loss and gradient norm side by side. With the reference equal to the
   initial policy the first loss is ln 2 in both; the later steps (and the gradient norms)
   only agree if the gradients and updates agree.
2. **Throughput and memory.** One epoch over ``steps * batch_size`` pairs, each library in
   its recommended fast configuration (settings printed), repeated ``--repeats`` times in the
   order TRL, rlfoundry, TRL, rlfoundry. Reported: non-padding tokens per second of training
   (reference log-probs included: both precompute them, which costs one no-grad forward per
   pair in one epoch either way), peak RSS of the process, achieved FLOP/s against this
   machine's measured fp32 matmul peak. Medians over repetitions.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import ModelSpec  # noqa: E402

SCRIPT = str(Path(__file__).resolve())


# ------------------------------------------------------------------------------- workers

def _token_counts(tokenizer, rows):
    """Per pair: (prompt, chosen + EOS, rejected + EOS) token counts."""
    out = []
    for r in rows:
        p = len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"])
        c = len(tokenizer(r["chosen"], add_special_tokens=False)["input_ids"]) + 1
        j = len(tokenizer(r["rejected"], add_special_tokens=False)["input_ids"]) + 1
        out.append((p, c, j))
    return out


def worker_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    common.worker_setup(spec["threads"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32,
                                                 **common.trl_model_kwargs(spec))
    tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
    rows = common.read_jsonl(spec["data"])
    ds = Dataset.from_list(rows)
    t = spec["train"]
    timing = {"precompute_s": 0.0}

    class Trainer(DPOTrainer):
        def _precompute_ref_logps(self, *a, **k):
            start = time.perf_counter()
            out = super()._precompute_ref_logps(*a, **k)
            timing["precompute_s"] += time.perf_counter() - start
            return out

    steps: list[dict] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            timing["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            timing["t_end"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                steps.append({"loss": logs["loss"], "grad_norm": logs.get("grad_norm"),
                              "logps_chosen": logs.get("logps/chosen"),
                              "logps_rejected": logs.get("logps/rejected")})

    args = DPOConfig(
        output_dir=spec["output_dir"], per_device_train_batch_size=t["micro_batch_size"],
        gradient_accumulation_steps=t["batch_size"] // t["micro_batch_size"],
        learning_rate=t["learning_rate"], lr_scheduler_type=t["lr_scheduler"], warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, max_steps=t["steps"], beta=t["beta"],
        loss_type=["sigmoid"], max_length=t["max_length"], **common.trl_device_args(spec, "dpo"),
        gradient_checkpointing=spec["trl"]["gradient_checkpointing"],
        precompute_ref_log_probs=spec["trl"]["precompute_ref_log_probs"],
        train_sampling_strategy="sequential" if t["sequential"] else "random",
        report_to="none", logging_steps=1, save_strategy="no", disable_tqdm=True, seed=t["seed"],
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                      callbacks=[Clock()])
    trainer.train()
    train_s = timing["t_end"] - timing["t0"]
    return {"steps": steps, "train_s": train_s, "precompute_s": timing["precompute_s"],
            "total_s": train_s + timing["precompute_s"], "peak_rss_self_mb": common.vm_hwm_mb()}


def worker_rlfoundry(spec: dict) -> dict:
    from rlfoundry.algorithms.dpo import DPOTrainer

    common.worker_setup(spec["threads"])
    t = spec["train"]
    timing = {"precompute_s": 0.0}
    steps: list[dict] = []

    class Trainer(DPOTrainer):
        def _setup_reference(self):
            start = time.perf_counter()
            super()._setup_reference()
            timing["precompute_s"] += time.perf_counter() - start

        def next_batch(self):
            timing.setdefault("t0", time.perf_counter())
            if t["sequential"]:  # same pairs per step as TRL's sequential sampler
                b = self.config.training.batch_size
                self.sampler.next_batch = lambda: list(range(self.step * b, (self.step + 1) * b))
            return super().next_batch()

        def optimizer_step(self, indices):
            metrics = super().optimizer_step(indices)
            timing["t_end"] = time.perf_counter()
            steps.append({"loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                          "logps_chosen": metrics.get("logps_chosen"),
                          "logps_rejected": metrics.get("logps_rejected")})
            return metrics

    config = {
        "algorithm": {"name": "dpo", "loss": {"type": "dpo", "reference_policy_kl_penalty": t["beta"]}},
        "model": {"name_or_path": spec["model"], "tokenizer": spec["tokenizer"]},
        "data": {"train": spec["data"], "max_length": t["max_length"]},
        "reference": {"precompute": True},
        "training": {"output_dir": spec["output_dir"], "batch_size": t["batch_size"],
                     "micro_batch_size": t["micro_batch_size"], "learning_rate": t["learning_rate"],
                     "lr_scheduler": t["lr_scheduler"], "max_steps": t["steps"], "max_grad_norm": 1.0,
                     "seed": t["seed"], **common.rlf_device_args(spec), **spec["rlfoundry"]},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    common.apply_overrides(config, spec["rlfoundry_overrides"])
    trainer = Trainer(config=config)
    trainer.train()
    train_s = timing["t_end"] - timing["t0"]
    return {"steps": steps, "train_s": train_s, "precompute_s": timing["precompute_s"],
            "total_s": train_s + timing["precompute_s"], "peak_rss_self_mb": common.vm_hwm_mb()}


WORKERS = {"trl": worker_trl, "rlfoundry": worker_rlfoundry}


# ------------------------------------------------------------------------------- driver

def dpo_flops(spec: ModelSpec, counts, ref_forward: bool = True) -> float:
    """Model FLOPs of one epoch over ``counts``: backbone on every real token and the lm-head on
    response tokens, forward + backward (6 per parameter per token) for the policy, plus one
    forward (2) of the reference; attention added. Recomputation and padding not counted."""
    p = spec.matmul_params()
    rows = [(a, b) for a, b, _ in counts] + [(a, c) for a, _, c in counts]
    tokens = sum(a + b for a, b in rows)
    resp = sum(b for _, b in rows)
    fwd = 2 * p["backbone"] * tokens + 2 * p["lm_head"] * resp
    fwd += common.attention_flops(spec, [a + b for a, b in rows])
    return fwd * (3 + (1 if ref_forward else 0))


def layout_table(counts, batch: int, micro: int, shuffles: int = 20) -> str:
    """Positions the backbone runs per non-padding token, averaged over random epoch orders:
    TRL's layout (chosen and rejected as separate rows, micro-batches in sampler order) and
    rlfoundry's (one packed row per pair, micro-batches cut from the step in length order)."""
    import random

    from rlfoundry.training.sampler import length_blocks

    real = sum(2 * p + c + r for p, c, r in counts)
    packed_len = [p + c + r for p, c, r in counts]

    def positions(order, rows_of):
        total = 0
        for s in range(0, len(order), batch):
            step = order[s:s + batch]
            for m in range(0, len(step), micro):
                rows = [n for i in step[m:m + micro] for n in rows_of(i)]
                total += max(rows) * len(rows)
        return total / real

    sums = {"TRL: 2 rows per pair, sampler order": 0.0,
            "rlfoundry: 1 packed row per pair, sampler order": 0.0,
            "rlfoundry: packed rows, length-ordered micro-batches (default)": 0.0}
    for seed in range(shuffles):
        order = list(range(len(counts)))
        random.Random(seed).shuffle(order)
        two = positions(order, lambda i: (counts[i][0] + counts[i][1], counts[i][0] + counts[i][2]))
        one = positions(order, lambda i: (packed_len[i],))
        blocks = [i for s in range(0, len(order), batch)
                  for i in length_blocks(order[s:s + batch], packed_len, micro)]
        for key, v in zip(sums, (two, one, positions(blocks, lambda i: (packed_len[i],)))):
            sums[key] += v / shuffles
    rows = [[k, v] for k, v in sums.items()]
    return common.print_table(
        f"positions run through the model per non-padding token ({real} tokens; prompt counted "
        "twice per pair, as two rows need it)", ["layout", "positions / token"], rows)


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="optimizer steps in the timed run")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    p.add_argument("--micro-batch-size", type=int, default=4, help="pairs per forward/backward")
    p.add_argument("--check-steps", type=int, default=3, help="steps of the equal-math check (0: skip)")
    p.add_argument("--trl-config", choices=["fast", "default"], default="fast",
                   help="fast: gradient checkpointing off + precomputed reference (TRL's fastest and "
                   "leanest without recompute); default: TRL's defaults (checkpointing on, live reference)")
    args = p.parse_args()
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        out_dir = Path(spec["output_dir"]) / Path(args.out).stem
        shutil.rmtree(out_dir, ignore_errors=True)  # no cached reference log-probs from a past run
        spec["output_dir"] = str(out_dir)
        name, _, variant = args.worker.partition(":")  # rlfoundry:KEY=VALUE[+KEY=VALUE]
        if variant:
            spec["rlfoundry_overrides"] = spec["rlfoundry_overrides"] + variant.split("+")
        result = WORKERS[name](spec)
        Path(args.out).write_text(json.dumps(result))
        return

    libraries = args.libraries.split(",")
    common.check_trl(libraries)
    if args.quick:
        args.steps, args.batch_size, args.micro_batch_size, args.repeats = 2, 4, 2, 1
        args.check_steps = min(args.check_steps, 2)
    workdir = common.workdir_for(args)
    mspec = common.QUICK_SPEC if args.quick else ModelSpec()
    print(f"workdir {workdir}\nbuilding the shared model and data ...", flush=True)
    model_path, tok_path = common.prepare_assets(workdir, mspec)
    n = args.steps * args.batch_size
    rows = common.preference_rows(n, seed=0)
    data = common.write_jsonl(workdir / "dpo_train.jsonl", rows)
    from transformers import AutoTokenizer

    counts = _token_counts(AutoTokenizer.from_pretrained(tok_path), rows)
    tokens = sum(2 * a + b + c for a, b, c in counts)
    max_length = max(a + max(b, c) for a, b, c in counts) + 8  # nothing is truncated
    trl_cfg = ({"gradient_checkpointing": False, "precompute_ref_log_probs": True}
               if args.trl_config == "fast" else
               {"gradient_checkpointing": True, "precompute_ref_log_probs": False})
    base = {"model": str(model_path), "tokenizer": str(tok_path), "data": str(data), "threads": args.threads, "device": args.device, "dtype": args.dtype, "trl": trl_cfg,
            "rlfoundry": {},
            "rlfoundry_overrides": args.rlf}
    train = {"batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size,
             "learning_rate": 1e-4, "beta": 0.1, "max_length": max_length, "seed": 0,
             "lr_scheduler": "linear"}
    print(f"model: Qwen2 {asdict(mspec)}, {sum(mspec.matmul_params().values()) / 1e6:.1f}M matmul "
          f"parameters; {n} pairs, {tokens} non-pad tokens; batch {args.batch_size} pairs, micro-batch "
          f"{args.micro_batch_size}; {args.dtype} on {args.device}; {args.threads} threads", flush=True)

    report: dict = {"machine": common.machine_info(args.threads), "settings": {**train, **trl_cfg}}
    peak = common.matmul_peak_gflops(args.threads, seconds=0.3 if args.quick else 3.0,
                                      device=args.device, dtype=args.dtype)  # best of before and after the runs
    sections = []
    if args.check_steps:
        spec = {**base, "output_dir": str(workdir / "check"),
                "train": {**train, "steps": args.check_steps, "sequential": True,
                          "lr_scheduler": "constant"}}
        res = common.interleaved(SCRIPT, libraries, spec, workdir, 1, label="dpo_check")
        sections.append(report_check(res, libraries))
        report["check"] = {lib: res[lib][0].data["steps"] for lib in libraries}

    sections.append(layout_table(counts, args.batch_size, args.micro_batch_size))
    spec = {**base, "output_dir": str(workdir / "run"),
            "train": {**train, "steps": args.steps, "sequential": False}}
    res = common.interleaved(SCRIPT, libraries, spec, workdir, args.repeats, label="dpo")
    peak = max(peak, common.matmul_peak_gflops(args.threads, seconds=0.3 if args.quick else 3.0,
                                      device=args.device, dtype=args.dtype))
    flops = dpo_flops(mspec, counts)
    sections.append(report_speed(res, libraries, tokens, flops, peak, args))
    common.finish_report(report, res, peak, args.json)


def report_check(res, libraries) -> str:
    runs = {lib: res[lib][0].data["steps"] for lib in libraries}
    return common.equal_math_table("DPO equal-math check (same pairs, same order; ln 2 = 0.6931)", runs)


def report_speed(res, libraries, tokens, flops, peak, args) -> str:
    def med(lib, key):
        return common.median([r.data[key] for r in res[lib]])

    def med_rss(lib):
        return common.median([r.peak_rss_mb for r in res[lib]])

    figures = {
        "tokens/s (higher is better)": {lib: tokens / med(lib, "total_s") for lib in libraries},
        "peak RSS MiB (lower is better)": {lib: med_rss(lib) for lib in libraries},
        "training s (steps)": {lib: med(lib, "train_s") for lib in libraries},
        "reference precompute s": {lib: med(lib, "precompute_s") for lib in libraries},
        "achieved GFLOP/s": {lib: flops / med(lib, "total_s") / 1e9 for lib in libraries},
        f"fraction of matmul peak ({peak:.0f} GFLOP/s)": {
            lib: flops / med(lib, "total_s") / 1e9 / peak for lib in libraries},
    }
    rows = []
    if set(libraries) == {"trl", "rlfoundry"}:
        header = ["figure"] + libraries + ["rlfoundry / trl"]
        for name, vals in figures.items():
            rows.append([name] + [vals[lib] for lib in libraries]
                        + [f"{vals['rlfoundry'] / vals['trl']:.2f}x"])
    else:  # variants: each against the first
        header = ["figure"] + libraries + [f"{lib} / {libraries[0]}" for lib in libraries[1:]]
        for name, vals in figures.items():
            rows.append([name] + [vals[lib] for lib in libraries]
                        + [f"{vals[lib] / vals[libraries[0]]:.2f}x" for lib in libraries[1:]])
    title = (f"DPO: {args.steps} steps x {args.batch_size} pairs, {tokens} tokens, "
             f"median of {args.repeats} interleaved runs")
    return common.print_table(title, header, rows)


if __name__ == "__main__":
    main()
