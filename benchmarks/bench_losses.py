"""Loss-function and log-prob microbenchmarks: time and peak memory of forward + backward.

    PYTHONPATH=src python benchmarks/bench_losses.py [--quick] [--threads 1]

1. Per-token log-probs of N response tokens from hidden states (hidden 384, vocab 32,000, the
   shapes of the benchmark model), forward + backward into the hidden states and the head:
   - naive: full logits, ``log_softmax`` over the vocabulary, ``gather`` (the [N, V] way);
   - checkpointed autograd: logits + ``logsumexp`` + ``gather`` per 1024-token chunk under
     ``torch.utils.checkpoint`` (rlfoundry's previous implementation, kept here to measure);
   - TRL's chunked fused log-prob function (its torch path, used on CPU), when TRL is installed;
   - rlfoundry ``gather_logprobs`` (hand-written chunk backward).
   With and without the entropy (GRPO's entropy bonus needs it).
2. ``DPOLossFn`` (sigmoid) and ``GRPOLossFn`` (dapo, clip 0.2) on per-sequence / per-token
   log-probs, against the bare formula in a few lines of torch, to show what validation and
   metrics cost.
3. One AdamW step over the benchmark model's parameters (loop / foreach / fused), and one
   sampling draw over a 32k vocabulary (``torch.multinomial`` / inverse CDF).

Peak memory is the growth of this process's peak RSS during the call (the peak counter is
reset before each measurement; the script re-executes itself with glibc's mmap threshold
fixed so freed buffers go back to the OS). Times are medians of ``--reps`` calls.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

H, V = 384, 32_000


def reset_peak() -> float:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return common.vm_rss_mb()


def measure(fn, reps: int) -> tuple[float, float]:
    """(median seconds, peak RSS growth MiB) of ``fn()``."""
    fn()  # warm-up
    times, peaks = [], []
    for _ in range(reps):
        base = reset_peak()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        peaks.append(common.vm_hwm_mb() - base)
    return common.median(times), common.median(peaks)


# ------------------------------------------------------------------------------- log-prob variants

def naive(hidden, weight, targets, entropy):
    logits = hidden @ weight.T
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1) if entropy else None
    return logp, ent


def checkpointed(hidden, weight, targets, entropy, chunk=1024):
    import torch
    from torch.utils.checkpoint import checkpoint

    def one(h, t):
        logits = h @ weight.T
        lse = torch.logsumexp(logits, -1)
        lp = logits.gather(-1, t[:, None]).squeeze(-1) - lse
        ent = lse - (torch.softmax(logits, -1) * logits).sum(-1) if entropy else None
        return lp, ent

    out = [checkpoint(one, hidden[i:i + chunk], targets[i:i + chunk], use_reentrant=False)
           for i in range(0, hidden.shape[0], chunk)]
    return (torch.cat([o[0] for o in out]),
            torch.cat([o[1] for o in out]) if entropy else None)


def trl_fused(hidden, weight, targets, entropy):
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    outputs = ("log_probs", "entropy") if entropy else ("log_probs",)
    lp, ent, *_ = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0,
                                               _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, outputs)
    return lp, ent


def rlfoundry_chunked(hidden, weight, targets, entropy):
    from rlfoundry.ops.lm_head import gather_logprobs

    return gather_logprobs(hidden, weight, None, targets, with_entropy=entropy)


def logprob_section(n_tokens: int, reps: int) -> None:
    import torch

    torch.manual_seed(0)
    hidden = torch.randn(n_tokens, H).mul_(0.5).requires_grad_()
    weight = torch.randn(V, H).mul_(0.02).requires_grad_()
    targets = torch.randint(0, V, (n_tokens,))
    variants = {"naive log_softmax + gather": naive, "checkpointed autograd (previous)": checkpointed}
    try:
        import trl.kernels.chunked_logprob  # noqa: F401

        variants["TRL chunked fused (CPU path)"] = trl_fused
    except ImportError:
        pass
    variants["rlfoundry gather_logprobs"] = rlfoundry_chunked
    ref = None
    for entropy in (False, True):
        rows = []
        results = {}
        for name, fn in variants.items():
            def step(fn=fn, entropy=entropy):
                hidden.grad = weight.grad = None
                lp, ent = fn(hidden, weight, targets, entropy)
                loss = (lp * 0.01).sum() + (ent.sum() * 0.01 if ent is not None else 0)
                loss.backward()
                return lp.detach()

            lp = step()
            if name.startswith("naive"):
                ref = (lp, hidden.grad.clone(), weight.grad.clone())
            err = max(float((lp - ref[0]).abs().max()), float((hidden.grad - ref[1]).abs().max()),
                      float((weight.grad - ref[2]).abs().max()))
            results[name] = measure(step, reps)
            rows.append([name, results[name][0] * 1000, results[name][1], f"{err:.1e}"])
        ours_t, ours_m = results["rlfoundry gather_logprobs"]
        for row in rows:
            t, m = results[row[0]]
            row += [f"{t / ours_t:.2f}x", f"{m / max(ours_m, 1e-9):.1f}x"]
        common.print_table(
            f"log-probs of {n_tokens} tokens, vocab {V}, hidden {H}, forward + backward"
            f"{' + entropy' if entropy else ''}",
            ["variant", "ms", "peak MiB", "max abs diff vs naive", "time / rlfoundry",
             "memory / rlfoundry"], rows)


# ------------------------------------------------------------------------------- loss functions

def loss_section(reps: int) -> None:
    import torch
    import torch.nn.functional as F

    from rlfoundry.algorithms.loss_functions import LossFunctionRegistry

    torch.manual_seed(0)
    b, t = 64, 256
    rows = []

    pc, pr = (torch.randn(b, requires_grad=True) for _ in range(2))
    rc, rr = torch.randn(b), torch.randn(b)
    dpo = LossFunctionRegistry.build({"type": "dpo", "reference_policy_kl_penalty": 0.1})

    def ours_dpo():
        loss, metrics = dpo({"reference_chosen_logps": rc, "reference_rejected_logps": rr},
                            {"policy_chosen_logps": pc, "policy_rejected_logps": pr})
        loss.backward()
        return loss

    def bare_dpo():
        loss = -F.logsigmoid(0.1 * ((pc - rc) - (pr - rr))).mean()
        loss.backward()
        return loss

    logp = (torch.randn(b, t) * 0.1 - 2).requires_grad_()
    mask = torch.rand(b, t) < 0.7
    adv = torch.randn(b)
    grpo = LossFunctionRegistry.build({"type": "dapo", "clip_ratio": 0.2})

    def ours_grpo():
        loss, metrics = grpo({"response_mask": mask, "advantages": adv}, {"logprobs": logp})
        loss.backward()
        return loss

    def bare_grpo():
        old = logp.detach()
        ratio = torch.exp(logp - old)
        a = adv[:, None]
        per_token = -torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a)
        loss = (per_token * mask).sum() / mask.sum()
        loss.backward()
        return loss

    for name, ours, bare in (("DPOLossFn sigmoid, 64 pairs", ours_dpo, bare_dpo),
                             ("GRPOLossFn dapo, 64 x 256 tokens", ours_grpo, bare_grpo)):
        diff = abs(float(ours().detach()) - float(bare().detach()))
        t_ours, _ = measure(ours, reps * 20)
        t_bare, _ = measure(bare, reps * 20)
        rows.append([name, t_ours * 1e6, t_bare * 1e6, f"{t_ours / t_bare:.2f}x", f"{diff:.1e}"])
    common.print_table("loss functions, forward + backward (metrics included in rlfoundry's)",
                       ["loss", "rlfoundry us", "bare formula us", "rlfoundry / bare", "|loss diff|"],
                       rows)


# ------------------------------------------------------------------------------- optimizer, sampling

def optimizer_section(reps: int) -> None:
    """One AdamW step over the benchmark model's parameters: torch's default on CPU (a loop
    over tensors), foreach, and fused (rlfoundry's choice where the build supports it)."""
    import torch

    spec = common.ModelSpec()
    h, i, kv = spec.hidden_size, spec.intermediate_size, spec.num_key_value_heads
    kvd = kv * h // spec.num_attention_heads
    layer = [(h, h), (kvd, h), (kvd, h), (h, h), (i, h), (i, h), (h, i), (h,), (h,), (h,), (kvd,), (kvd,)]
    shapes = [(spec.vocab_size, h), (h,)] + layer * spec.num_hidden_layers
    rows, results = [], {}
    for name, kw in (("torch default (per-tensor loop)", {}), ("foreach", {"foreach": True}),
                     ("fused (rlfoundry)", {"fused": True})):
        params = [torch.nn.Parameter(torch.randn(*sh)) for sh in shapes]
        for prm in params:
            prm.grad = torch.randn_like(prm)
        opt = torch.optim.AdamW(params, lr=1e-4, **kw)
        results[name] = measure(opt.step, reps * 3)[0]
    for name, t in results.items():
        rows.append([name, t * 1000, f"{t / results['fused (rlfoundry)']:.2f}x"])
    n = sum(torch.Size(sh).numel() for sh in shapes)
    common.print_table(f"AdamW step over {n / 1e6:.1f}M parameters", ["implementation", "ms", "time / fused"],
                       rows)


def sampling_section(reps: int) -> None:
    """Drawing one token per row from [16, 32000] probabilities (one decode step of the GRPO
    benchmark): ``torch.multinomial`` vs rlfoundry's inverse-CDF sampler."""
    import torch

    from rlfoundry.rollout.hf_sampler import sample_from

    probs = torch.randn(16, V).softmax(-1)
    gen = torch.Generator().manual_seed(0)
    t_multi = measure(lambda: torch.multinomial(probs, 1, generator=gen), reps * 10)[0]
    t_ours = measure(lambda: sample_from(probs, gen), reps * 10)[0]
    common.print_table("sampling one token per row, 16 x 32,000 probabilities",
                       ["implementation", "ms", "time / rlfoundry"],
                       [["torch.multinomial (HF generate)", t_multi * 1000, f"{t_multi / t_ours:.2f}x"],
                        ["rlfoundry sample_from (inverse CDF)", t_ours * 1000, "1.00x"]])


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1024, help="response tokens in the log-prob benchmark")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # fixed threshold: freed buffers leave RSS
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    if args.quick:
        args.tokens, args.reps = 512, 2
    common.worker_setup(args.threads)
    logprob_section(args.tokens, args.reps)
    loss_section(args.reps)
    optimizer_section(args.reps)
    sampling_section(args.reps)
    print(f"machine: {common.machine_info(args.threads)}")


if __name__ == "__main__":
    main()
