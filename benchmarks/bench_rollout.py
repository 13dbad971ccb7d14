"""GRPO rollouts on the HF backend vs vLLM: generation tokens/s and step time, side by side.

    PYTHONPATH=src python benchmarks/bench_rollout.py             # hf vs vllm (needs the extra)
    PYTHONPATH=src python benchmarks/bench_rollout.py --quick     # smoke test
    PYTHONPATH=src python benchmarks/bench_rollout.py --libraries hf,vllm,trl-vllm

Every backend trains the same model (the 21.7M-parameter benchmark model of common.py, fp32)
on the same prompts with the same GRPO settings (``--prompts-per-step`` prompts x
``--num-generations`` samples, up to ``--max-completion-length`` tokens, temperature 1,
``dapo`` loss, one update per rollout); only ``rollout.backend`` differs. Runs are separate
subprocesses, interleaved (hf, vllm, hf, vllm, ...), medians reported. The first step of
each run is dropped (vLLM's engine start happens in it; reported on its own as start-up).

- generation s/step: the backend's ``generate`` call, including vLLM's weight push (the
  engine loads the policy's new weights before each rollout);
- tokens/s: completion tokens generated / generation seconds;
- step s: the whole optimizer step (rollout, rewards, log-probs, backward, optimizer).

``trl-vllm`` is TRL's own vLLM path (``GRPOConfig(use_vllm=True, vllm_mode="colocate")``);
when it cannot run, the error it stops with is printed in the report.
"""

from __future__ import annotations

import json
import os
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
    """Reward completions of about 24 words (the same function for every backend)."""
    return [-abs(len(c.split()) - 24) / 24 for c in completions]


def rlfoundry_config(spec: dict, rollout: dict) -> dict:
    t = spec["train"]
    return {
        "algorithm": {"name": "grpo", "group_size": t["num_generations"],
                      "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0,
                                   "max_new_tokens": t["max_completion_length"]},
                      "loss": {"type": "dapo", "clip_ratio": 0.2},
                      "rewards": [{"name": "math_accuracy"}]},  # replaced by reward_fns
        "model": {"name_or_path": spec["model"], "tokenizer": spec["tokenizer"]},
        "data": {"train": spec["data"]},
        "training": {"output_dir": spec["output_dir"], "batch_size": t["prompts_per_step"],
                     "micro_batch_size": t["micro_batch_size"], "learning_rate": t["learning_rate"],
                     "lr_scheduler": "constant", "max_steps": t["steps"], "max_grad_norm": 1.0,
                     "seed": t["seed"], "device": "cpu"},
        "rollout": rollout,
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def worker_rlfoundry(spec: dict, rollout: dict) -> dict:
    from rlfoundry.algorithms.grpo import GRPOTrainer
    from rlfoundry.models import load_tokenizer
    from rlfoundry.rollout.factory import attach_backend

    common.worker_setup(spec["threads"])
    timing: dict = {"generation": [], "tokens": [], "steps": []}

    class Trainer(GRPOTrainer):
        def next_batch(self):
            timing["start"] = time.perf_counter()
            return super().next_batch()

        def optimizer_step(self, indices):
            metrics = super().optimizer_step(indices)
            timing["steps"].append(time.perf_counter() - timing["start"])
            return metrics

    tok = load_tokenizer(spec["model"], spec["tokenizer"])
    trainer = Trainer(tokenizer=tok, config=rlfoundry_config(spec, rollout), reward_fns=[length_reward])
    attach_backend(trainer)
    inner = trainer.rollout.generate

    def timed(*a, **k):
        start = time.perf_counter()
        out = inner(*a, **k)
        timing["generation"].append(time.perf_counter() - start)
        timing["tokens"].append(out.num_tokens)
        return out

    trainer.rollout.generate = timed
    trainer.train()
    return {"generation_s": timing["generation"], "tokens": timing["tokens"],
            "step_s": timing["steps"], "startup_s": getattr(trainer.rollout, "startup_seconds", 0.0),
            "peak_rss_self_mb": common.vm_hwm_mb()}


def worker_trl_vllm(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    common.worker_setup(spec["threads"])
    t = spec["train"]
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
    ds = Dataset.from_list(common.read_jsonl(spec["data"]))
    timing: dict = {"generation": [], "tokens": [], "steps": []}

    class Trainer(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *a, **k):
            start = time.perf_counter()
            out = super()._generate_single_turn(prompt_ids, *a, **k)
            timing["generation"].append(time.perf_counter() - start)
            timing["tokens"].append(sum(len(c) for c in out[0]))
            return out

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            timing["last"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            timing["steps"].append(now - timing["last"])
            timing["last"] = now

    micro = t["micro_batch_size"]
    samples = t["prompts_per_step"] * t["num_generations"]
    args = GRPOConfig(
        output_dir=spec["output_dir"], per_device_train_batch_size=micro,
        gradient_accumulation_steps=samples // micro, num_generations=t["num_generations"],
        max_completion_length=t["max_completion_length"], temperature=1.0, top_p=1.0, top_k=0,
        beta=0.0, loss_type="dapo", epsilon=0.2, num_iterations=1,
        learning_rate=t["learning_rate"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, max_steps=t["steps"], bf16=False, fp16=False,
        use_cpu=True, gradient_checkpointing=False, report_to="none", logging_steps=1,
        save_strategy="no", disable_tqdm=True, seed=t["seed"], dataloader_num_workers=0,
        use_vllm=True, vllm_mode="colocate",
    )
    trainer = Trainer(model=model, reward_funcs=[length_reward], args=args, train_dataset=ds,
                      processing_class=tok, callbacks=[Clock()])
    trainer.train()
    return {"generation_s": timing["generation"], "tokens": timing["tokens"],
            "step_s": timing["steps"], "startup_s": float("nan"),
            "peak_rss_self_mb": common.vm_hwm_mb()}


WORKERS = {
    "hf": lambda spec: worker_rlfoundry(spec, {"backend": "hf"}),
    "vllm": lambda spec: worker_rlfoundry(spec, {"backend": "vllm", "dtype": "float32"}),
    "trl-vllm": worker_trl_vllm,
}


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.set_defaults(libraries="hf,vllm")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps (= rollouts) per run")
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--micro-batch-size", type=int, default=8, help="completions per forward/backward")
    args = p.parse_args()
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        out_dir = Path(spec["output_dir"]) / Path(args.out).stem
        shutil.rmtree(out_dir, ignore_errors=True)
        spec["output_dir"] = str(out_dir)
        Path(args.out).write_text(json.dumps(WORKERS[args.worker](spec)))
        return

    libraries = args.libraries.split(",")
    if args.quick:
        args.steps, args.prompts_per_step, args.max_completion_length, args.repeats = 2, 2, 16, 1
        args.num_generations, args.micro_batch_size = 4, 4
    workdir = common.workdir_for(args)
    mspec = ModelSpec()
    print(f"workdir {workdir}\nbuilding the shared model and data ...", flush=True)
    model_path, tok_path = common.prepare_assets(workdir, mspec)
    n = args.steps * args.prompts_per_step
    data = common.write_jsonl(workdir / "rollout_prompts.jsonl", common.prompt_rows(n, seed=1))
    train = {"prompts_per_step": args.prompts_per_step, "num_generations": args.num_generations,
             "max_completion_length": args.max_completion_length,
             "micro_batch_size": args.micro_batch_size, "learning_rate": 1e-4, "seed": 0,
             "steps": args.steps}
    spec = {"model": str(model_path), "tokenizer": str(tok_path), "data": str(data),
            "threads": args.threads, "output_dir": str(workdir / "rollout_run"), "train": train}
    print(f"model: Qwen2 {asdict(mspec)}; {args.prompts_per_step} prompts x {args.num_generations} "
          f"samples per step, max_completion_length {args.max_completion_length}; fp32; "
          f"{args.threads} threads", flush=True)
    report: dict = {"machine": common.machine_info(args.threads), "settings": train,
                    "load_average_before": list(os.getloadavg())}
    spec_path = workdir / "rollout_spec.json"
    spec_path.write_text(json.dumps(spec))
    res, failed = {}, {}
    for rep in range(args.repeats):  # interleaved; a backend that fails is reported, not retried
        for lib in [x for x in libraries if x not in failed]:
            print(f"  {lib} repetition {rep + 1}/{args.repeats} ...", flush=True)
            r = common.run_worker(SCRIPT, lib, spec_path, workdir, f"{lib}_{rep}")
            if not r.ok:
                failed[lib] = r.error.strip().splitlines()[-1] if r.error.strip() else "failed"
                print(f"    {lib} failed: {failed[lib]}", flush=True)
                continue
            print(f"    done in {r.wall_s:.0f}s", flush=True)
            res.setdefault(lib, []).append(r)
    report["load_average_after"] = list(os.getloadavg())
    report["failed"] = failed
    report_speed(res, libraries, failed, args)
    common.finish_report(report, res, float("nan"), args.json)
    print(f"load average before/after: {report['load_average_before']} / {report['load_average_after']}")


def report_speed(res, libraries, failed, args) -> str:
    def med(lib, key, per_token=False):
        values = []
        for r in res[lib]:
            gen, tok = r.data["generation_s"][1:], r.data["tokens"][1:]
            if per_token:
                values += [k / g for k, g in zip(tok, gen) if g > 0]
            else:
                values += r.data[key][1:]
        return common.median(values)

    ran = [lib for lib in libraries if lib in res]
    base = ran[0] if ran else None
    rows = []
    for lib in ran:
        tps, step, gen = med(lib, "", True), med(lib, "step_s"), med(lib, "generation_s")
        rows.append([lib, gen, tps, step, common.median([r.data["startup_s"] for r in res[lib]]),
                     common.median([r.peak_rss_mb for r in res[lib]]),
                     tps / med(base, "", True), med(base, "step_s") / step])
    text = common.print_table(
        f"GRPO rollouts: {args.prompts_per_step} prompts x {args.num_generations} samples, "
        f"<= {args.max_completion_length} tokens (medians over {args.repeats} interleaved runs x "
        f"{args.steps - 1} steps)",
        ["backend", "generation s/step", "tokens/s", "step s", "start-up s", "peak RSS MiB",
         f"tokens/s vs {base}", f"step speed-up vs {base}"], rows)
    for lib, why in failed.items():
        print(f"{lib}: did not run: {why}")
    return text


if __name__ == "__main__":
    main()
