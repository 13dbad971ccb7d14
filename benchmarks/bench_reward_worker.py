"""Cost of running rewards in a killable worker process (``algorithm.reward_timeout``).

One GRPO step's scoring -- 64 samples (16 prompts x 4), two reward functions (the built-in
``math_accuracy`` and a user function doing a little string work) -- timed in this process
(no timeout) and in forked workers (timeout set), side by side in one process. The trainer's
resident memory is what a fork has to copy page tables for, so the pair is repeated with
``--rss-gb`` extra GiB of touched host memory standing in for a loaded model.

    PYTHONPATH=src python benchmarks/bench_reward_worker.py --rss-gb 0,2 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rlfoundry.rewards import compute_rewards, resolve_rewards


def user_reward(prompts, completions, **kw):
    """A typical cheap custom reward: formatting and length checks on the text."""
    return [float("<answer>" in c) - 0.001 * len(c.split()) for c in completions]


def batch(n: int = 64):
    prompts = [f"What is {i} + {i}?" for i in range(n // 4) for _ in range(4)]
    answers = [str(2 * i) for i in range(n // 4) for _ in range(4)]
    completions = [f"Let me think step by step. {i} plus {i} is <answer>{a}</answer> " * 4
                   for i, a in enumerate(answers)]
    return prompts, completions, {"answer": answers}


def time_scoring(fns, data, timeout, repeats: int) -> list[float]:
    prompts, completions, columns = data
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        compute_rewards(fns, prompts, completions, columns, timeout=timeout)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rss-gb", default="0,2", help="extra resident GiB to hold, comma-separated")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    fns = resolve_rewards(["math_accuracy"]) + [("user_reward", user_reward, 1.0)]
    data = batch()
    print(f"{'extra RSS':>10} | {'in process (ms)':>15} | {'worker (ms)':>11} | {'overhead (ms)':>13} | ratio")
    ballast = None
    for gb in (float(x) for x in args.rss_gb.split(",")):
        del ballast
        ballast = torch.ones(int(gb * (1 << 30)) // 4, dtype=torch.float32)  # noqa: F841  (held: the trainer-size RSS)
        time_scoring(fns, data, None, 2)  # warm-up (imports, regex caches)
        time_scoring(fns, data, 60.0, 2)
        here = statistics.median(time_scoring(fns, data, None, args.repeats)) * 1e3
        worker = statistics.median(time_scoring(fns, data, 60.0, args.repeats)) * 1e3
        print(f"{gb:>8.1f} G | {here:>15.2f} | {worker:>11.2f} | {worker - here:>13.2f} | "
              f"{worker / here:.1f}x")


if __name__ == "__main__":
    main()
