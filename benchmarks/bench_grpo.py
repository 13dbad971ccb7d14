"""GRPO side by side: rlfoundry vs TRL, step time split into generation and training.

    PYTHONPATH=src python benchmarks/bench_grpo.py            # full run (a few minutes)
    PYTHONPATH=src python benchmarks/bench_grpo.py --quick    # smoke test

Both libraries get the same model, prompts, reward function (a cheap length reward), number
of prompts per step, ``num_generations``, ``max_completion_length``, sampling settings
(temperature 1, top-p 1, no top-k), loss (``dapo``: token mean over the whole step, clip 0.2,
one update per rollout so no old-log-prob forward), learning rate, AdamW and micro-batch
size, fp32. Each library runs in its own subprocess; repetitions interleave.

``--betas`` (default ``0,0.04``) runs each KL setting side by side: beta 0 (no reference
model) and beta > 0 (the k3 KL term against a live reference model, a frozen copy of the
initial policy, in both libraries; GRPO's reference log-probs are of freshly sampled
completions, so there is nothing to precompute as in DPO). Each beta gets its own
equal-math check and timing table.

**What "equal math" means for sampled runs.** Sampled completions differ between two runs
(each library draws its own random numbers), so their losses are not comparable sample by
sample. The script therefore first runs both libraries on *identical* completions: a fixed
rollout (the same token ids for every prompt and sample, fed through TRL's and rlfoundry's
generation hooks) for ``--check-steps`` steps, and prints each step's loss and gradient norm
side by side. The loss checks the rewards, advantages and their aggregation; the gradient
norm checks the per-token log-probs (at the sampling temperature) and their weighting; the
second step checks that both updates were the same.

Timed figures (median over repetitions): generation seconds per step, training seconds per
step (everything else in the step: rewards, advantages, log-probs, backward, optimizer), full
step seconds, peak RSS, and achieved FLOP/s against the machine's measured matmul peak.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import ModelSpec  # noqa: E402

SCRIPT = str(Path(__file__).resolve())


def length_reward(prompts, completions, **kwargs):
    """Reward completions of about 24 words (same function for both libraries)."""
    return [-abs(len(c.split()) - 24) / 24 for c in completions]


def fixed_completions(prompt_ids: list[int], count: int, max_len: int, eos: int, vocab: int):
    """``count`` deterministic completions of a prompt (for the equal-math check)."""
    rng = random.Random(hash(tuple(prompt_ids)) % (2 ** 31))
    out = []
    for _ in range(count):
        n = rng.randint(1, max_len)
        ids = [rng.randrange(2, vocab) for _ in range(n)]
        if n < max_len:
            ids[-1] = eos
        out.append(ids)
    return out


# ------------------------------------------------------------------------------- workers

def worker_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    common.worker_setup(spec["threads"])
    t = spec["train"]
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32,
                                                 **common.trl_model_kwargs(spec))
    tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
    ds = Dataset.from_list(common.read_jsonl(spec["data"]))
    timing = {"generation": [], "steps": []}
    fixed = t["fixed"]
    records: list[dict] = []

    class Trainer(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *a, **k):
            start = time.perf_counter()
            if fixed:
                seen: dict[tuple, int] = {}
                completions = []
                for ids in prompt_ids:
                    key = tuple(ids)
                    i = seen.get(key, 0)
                    seen[key] = i + 1
                    completions.append(fixed_completions(ids, i + 1, t["max_completion_length"],
                                                         tok.eos_token_id, len(tok))[i])
                out = (completions, None)
            else:
                out = super()._generate_single_turn(prompt_ids, images, multimodal_fields,
                                                    num_generations, *a, **k)
            timing["generation"].append(time.perf_counter() - start)
            return out

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            timing["last"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            timing["steps"].append(now - timing["last"])
            timing["last"] = now

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                records.append({"loss": logs["loss"], "grad_norm": logs.get("grad_norm"),
                                "reward": logs.get("reward"),
                                "completion_length": logs.get("completions/mean_length")})

    micro = t["micro_batch_size"]
    samples = t["prompts_per_step"] * t["num_generations"]
    args = GRPOConfig(
        output_dir=spec["output_dir"], per_device_train_batch_size=micro,
        gradient_accumulation_steps=samples // micro, num_generations=t["num_generations"],
        max_completion_length=t["max_completion_length"], temperature=1.0, top_p=1.0, top_k=0,
        beta=t["beta"], loss_type="dapo", epsilon=0.2, num_iterations=1, scale_rewards="group",
        learning_rate=t["learning_rate"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, max_steps=t["steps"], **common.trl_device_args(spec, "grpo"),
        gradient_checkpointing=spec["trl"]["gradient_checkpointing"],
        shuffle_dataset=not t["sequential"], report_to="none", logging_steps=1,
        save_strategy="no", disable_tqdm=True, seed=t["seed"], dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, reward_funcs=[length_reward], args=args, train_dataset=ds,
                      processing_class=tok, callbacks=[Clock()])
    trainer.train()
    return {"records": records, "generation_s": timing["generation"], "step_s": timing["steps"],
            "peak_rss_self_mb": common.vm_hwm_mb()}


def worker_rlfoundry(spec: dict) -> dict:
    import torch

    from rlfoundry.algorithms.grpo import GRPOTrainer
    from rlfoundry.rollout import Rollout

    common.worker_setup(spec["threads"])
    t = spec["train"]
    timing = {"generation": [], "steps": []}
    records: list[dict] = []
    fixed = t["fixed"]

    class Trainer(GRPOTrainer):
        def next_batch(self):
            timing["start"] = time.perf_counter()
            if t["sequential"] and (self.buffer is None or self.iteration >= self.num_iterations):
                b = self.config.training.batch_size
                order = list(range(self.step * b, (self.step + 1) * b))
                self.buffer, self.rollout_metrics = self.make_rollout(order)
                self.iteration = 0
            return super().next_batch()

        def optimizer_step(self, indices):
            metrics = super().optimizer_step(indices)
            timing["steps"].append(time.perf_counter() - timing["start"])
            records.append({"loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                            "reward": metrics.get("reward_mean"),
                            "completion_length": metrics.get("completion_length_mean")})
            return metrics

    class FixedRollout:
        """Returns the same completions as the TRL worker's hook (equal-math check)."""

        def __init__(self, tokenizer):
            self.tok = tokenizer

        def generate(self, prompts, num_samples, params, generator):
            comps = [c for p in prompts for c in fixed_completions(
                list(p), num_samples, t["max_completion_length"], self.tok.eos_token_id, len(self.tok))]
            n = len(comps)
            return Rollout(prompt_index=[i // num_samples for i in range(n)],
                           prompt_ids=[list(prompts[i // num_samples]) for i in range(n)],
                           completion_ids=comps, sampling_logprobs=[[0.0] * len(c) for c in comps],
                           truncated=[c[-1] != self.tok.eos_token_id for c in comps])

        def sync_weights(self, model):
            pass

    config = {
        "algorithm": {"name": "grpo", "group_size": t["num_generations"],
                      "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0,
                                   "max_new_tokens": t["max_completion_length"]},
                      "loss": {"type": "dapo", "clip_ratio": 0.2,
                               "reference_policy_kl_penalty": t["beta"]},
                      "advantage": {"estimator": "grpo", "scale_rewards": "group"},
                      "rewards": [{"name": "math_accuracy"}]},  # replaced by reward_fns below
        "model": {"name_or_path": spec["model"], "tokenizer": spec["tokenizer"]},
        "data": {"train": spec["data"]},
        "training": {"output_dir": spec["output_dir"], "batch_size": t["prompts_per_step"],
                     "micro_batch_size": t["micro_batch_size"], "learning_rate": t["learning_rate"],
                     "lr_scheduler": "constant", "max_steps": t["steps"], "max_grad_norm": 1.0,
                     "seed": t["seed"], **common.rlf_device_args(spec), **spec["rlfoundry"]},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    common.apply_overrides(config, spec["rlfoundry_overrides"])
    from rlfoundry.models import load_tokenizer

    tok = load_tokenizer(spec["model"], spec["tokenizer"])
    backend = FixedRollout(tok) if fixed else None
    trainer = Trainer(tokenizer=tok, config=config, reward_fns=[length_reward], rollout_backend=backend)
    if not fixed:  # time the built-in sampler
        inner = trainer.rollout.generate

        def timed(*a, **k):
            start = time.perf_counter()
            out = inner(*a, **k)
            timing["generation"].append(time.perf_counter() - start)
            return out

        trainer.rollout.generate = timed
    else:
        timing["generation"] = []
    torch.manual_seed(t["seed"])
    trainer.train()
    return {"records": records, "generation_s": timing["generation"] or [0.0] * len(timing["steps"]),
            "step_s": timing["steps"], "peak_rss_self_mb": common.vm_hwm_mb()}


WORKERS = {"trl": worker_trl, "rlfoundry": worker_rlfoundry}


# ------------------------------------------------------------------------------- driver

def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="optimizer steps (= rollouts) per run")
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--micro-batch-size", type=int, default=8, help="completions per forward/backward")
    p.add_argument("--check-steps", type=int, default=2, help="steps of the equal-math check (0: skip)")
    p.add_argument("--betas", default="0,0.04",
                   help="comma-separated KL coefficients; each > 0 uses a live reference model")
    p.add_argument("--trl-config", choices=["fast", "default"], default="fast",
                   help="fast: gradient checkpointing off; default: TRL's default (on)")
    args = p.parse_args()
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        out_dir = Path(spec["output_dir"]) / Path(args.out).stem
        shutil.rmtree(out_dir, ignore_errors=True)  # no cached reference log-probs from a past run
        spec["output_dir"] = str(out_dir)
        Path(args.out).write_text(json.dumps(WORKERS[args.worker](spec)))
        return

    libraries = args.libraries.split(",")
    common.check_trl(libraries)
    if args.quick:
        args.steps, args.prompts_per_step, args.max_completion_length, args.repeats = 2, 2, 16, 1
        args.micro_batch_size = 4
        args.check_steps = min(args.check_steps, 2)
    workdir = common.workdir_for(args)
    mspec = common.QUICK_SPEC if args.quick else ModelSpec()
    print(f"workdir {workdir}\nbuilding the shared model and data ...", flush=True)
    model_path, tok_path = common.prepare_assets(workdir, mspec)
    n = max(args.steps, args.check_steps) * args.prompts_per_step
    data = common.write_jsonl(workdir / "grpo_prompts.jsonl", common.prompt_rows(n, seed=1))
    train = {"prompts_per_step": args.prompts_per_step, "num_generations": args.num_generations,
             "max_completion_length": args.max_completion_length,
             "micro_batch_size": args.micro_batch_size, "learning_rate": 1e-4, "seed": 0}
    trl_cfg = {"gradient_checkpointing": args.trl_config == "default"}
    base = {"model": str(model_path), "tokenizer": str(tok_path), "data": str(data),
            "threads": args.threads, "device": args.device, "dtype": args.dtype, "trl": trl_cfg, "rlfoundry": {},
            "rlfoundry_overrides": args.rlf}
    print(f"model: Qwen2 {asdict(mspec)}; {args.prompts_per_step} prompts x {args.num_generations} "
          f"generations per step, max_completion_length {args.max_completion_length}, micro-batch "
          f"{args.micro_batch_size} completions; {args.dtype} on {args.device}; {args.threads} threads", flush=True)
    report: dict = {"machine": common.machine_info(args.threads), "settings": {**train, **trl_cfg}}
    peak = common.matmul_peak_gflops(args.threads, seconds=0.3 if args.quick else 3.0,
                                      device=args.device, dtype=args.dtype)  # best of before and after the runs
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_path)
    prompt_len = sum(len(tok(r["prompt"])["input_ids"]) for r in common.read_jsonl(data)) / n
    res: dict = {}
    for beta in [float(b) for b in args.betas.split(",")]:
        tag = f"beta{beta:g}"
        train_b = {**train, "beta": beta}
        print(f"\n=== beta {beta:g} ({'live reference model' if beta else 'no reference model'}) ===",
              flush=True)
        if args.check_steps:
            spec = {**base, "output_dir": str(workdir / f"grpo_check_{tag}"),
                    "train": {**train_b, "steps": args.check_steps, "sequential": True, "fixed": True}}
            check = common.interleaved(SCRIPT, libraries, spec, workdir, 1, label=f"grpo_check_{tag}")
            report_check(check, libraries, beta)
            report[f"check_{tag}"] = {lib: check[lib][0].data["records"] for lib in libraries}
        spec = {**base, "output_dir": str(workdir / f"grpo_run_{tag}"),
                "train": {**train_b, "steps": args.steps, "sequential": False, "fixed": False}}
        res = common.interleaved(SCRIPT, libraries, spec, workdir, args.repeats, label=f"grpo_{tag}")
        peak = max(peak, common.matmul_peak_gflops(args.threads, seconds=0.3 if args.quick else 3.0,
                                      device=args.device, dtype=args.dtype))
        report_speed(res, libraries, args, peak, mspec, prompt_len, beta)
        report[f"runs_{tag}"] = {lib: [asdict(r) for r in runs] for lib, runs in res.items()}
    common.finish_report(report, res, peak, args.json)


def report_check(res, libraries, beta: float) -> str:
    runs = {lib: res[lib][0].data["records"] for lib in libraries}
    return common.equal_math_table(
        f"GRPO equal-math check, beta {beta:g} (identical fixed completions)", runs)


def grpo_step_flops(spec: ModelSpec, args, prompt_len: float, completion_len: float) -> float:
    """Model FLOPs of one step at mean lengths: prefill each prompt once and 2 FLOPs per
    parameter per sampled token (generation), then forward + backward (6 per parameter per
    token) over prompt + completion with the head on completion tokens (training)."""
    p = spec.matmul_params()
    n = args.prompts_per_step * args.num_generations
    gen = 2 * p["backbone"] * prompt_len * args.prompts_per_step
    gen += 2 * (p["backbone"] + p["lm_head"]) * completion_len * n
    train = 6 * (p["backbone"] * (prompt_len + completion_len) + p["lm_head"] * completion_len) * n
    return gen + train


def report_speed(res, libraries, args, peak, mspec, prompt_len, beta: float = 0.0) -> str:
    def per_step(lib, key):
        # drop each run's first step (warm-up: allocator, lazy init), then median over all steps
        vals = [v for r in res[lib] for v in r.data[key][1:] or r.data[key]]
        return common.median(vals)

    gen = {lib: per_step(lib, "generation_s") for lib in libraries}
    full = {lib: per_step(lib, "step_s") for lib in libraries}
    flops = {lib: grpo_step_flops(mspec, args, prompt_len, common.median(
        [x["completion_length"] for r in res[lib] for x in r.data["records"]])) for lib in libraries}
    figures = {
        "full step s (lower is better)": full,
        "generation s / step": gen,
        "training s / step (rest of the step)": {lib: full[lib] - gen[lib] for lib in libraries},
        "peak RSS MiB": {lib: common.median([r.peak_rss_mb for r in res[lib]]) for lib in libraries},
        "achieved GFLOP/s (model FLOPs of a step)": {
            lib: flops[lib] / full[lib] / 1e9 for lib in libraries},
        f"fraction of matmul peak ({peak:.0f} GFLOP/s)": {
            lib: flops[lib] / full[lib] / 1e9 / peak for lib in libraries},
        "mean completion length": {lib: common.median(
            [x["completion_length"] for r in res[lib] for x in r.data["records"]]) for lib in libraries},
    }
    header = ["figure"] + libraries + (["rlfoundry / trl"] if len(libraries) == 2 else [])
    rows = []
    for name, vals in figures.items():
        row = [name] + [vals[lib] for lib in libraries]
        if len(libraries) == 2:
            row.append(f"{vals['rlfoundry'] / vals['trl']:.2f}x")
        rows.append(row)
    title = (f"GRPO beta {beta:g}: {args.prompts_per_step} prompts x {args.num_generations} generations, "
             f"max {args.max_completion_length} new tokens, median step of {args.repeats} "
             f"interleaved runs x {args.steps} steps (first step of each run dropped)")
    return common.print_table(title, header, rows)


if __name__ == "__main__":
    main()
