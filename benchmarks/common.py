"""Shared pieces of the side-by-side benchmarks (rlfoundry vs TRL).

Everything a benchmark needs is built locally, with no downloads:

- a word-level tokenizer with a 32,000-token vocabulary (pseudo-words drawn with a Zipf law,
  so token frequencies look like text);
- a randomly initialised Qwen2-style causal LM (tied embeddings, ~22M parameters, so the
  32k-wide lm-head is a large part of the compute, as in real small models), saved with its
  tokenizer to one Hugging Face directory that both libraries load;
- synthetic preference rows and prompts with a realistic (log-normal) length spread.

Each library runs in its own subprocess, launched from the one benchmark script, so the peak
resident memory of each is measured separately (``os.wait4`` rusage of that child) while both
runs share the invocation, the data and the weights. Repetitions are interleaved (A, B, A, B)
and medians reported, because the machine may be shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

PAD, EOS = "<pad>", "<eos>"
VOCAB_SIZE = 32_000


# ------------------------------------------------------------------------------- model spec

@dataclass
class ModelSpec:
    vocab_size: int = VOCAB_SIZE
    hidden_size: int = 384
    intermediate_size: int = 1024
    num_hidden_layers: int = 6
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    eos_rate: float = 0.03  # mean per-token EOS probability after calibration (GRPO lengths)
    seed: int = 0

    def matmul_params(self) -> dict[str, int]:
        """Parameters that take part in a matmul per token: each backbone layer, and the head."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_key_value_heads
        head_dim = h // self.num_attention_heads
        attn = h * h * 2 + 2 * h * kv * head_dim
        mlp = 3 * h * i
        return {"backbone": self.num_hidden_layers * (attn + mlp), "lm_head": self.vocab_size * h}


# --quick (the CI smoke run of benchmarks/run_gpu.sh): a small backbone, same tokenizer
QUICK_SPEC = ModelSpec(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2)


def words(n: int) -> list[str]:
    """``n`` distinct pronounceable pseudo-words (deterministic)."""
    cons, vows = "bcdfghjklmnprstvz", "aeiou"
    syll = [c + v for c in cons for v in vows]  # 85 syllables
    out: list[str] = []
    k = 1
    while len(out) < n:
        def rec(prefix: str, depth: int):
            if len(out) >= n:
                return
            if depth == 0:
                out.append(prefix)
                return
            for s in syll:
                rec(prefix + s, depth - 1)
                if len(out) >= n:
                    return
        rec("", k)
        k += 1
    return out[:n]


def build_tokenizer():
    """Word-level tokenizer: ``<pad>``, ``<eos>`` and 31,998 pseudo-words (whitespace split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1}
    for w in words(VOCAB_SIZE - len(vocab)):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS)
    fast.padding_side = "right"
    return fast


def build_model(spec: ModelSpec, tokenizer):
    """Random-init Qwen2 model; the EOS row of the (tied) head is calibrated so that sampled
    completions end after about ``1 / eos_rate`` tokens instead of never."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=2048, tie_word_embeddings=True, attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config).eval()
    _calibrate_eos(model, tokenizer.eos_token_id, spec.eos_rate, spec.seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.eos_token_id
    return model


def _calibrate_eos(model, eos_id: int, rate: float, seed: int) -> None:
    """Give EOS a roughly position-independent probability ``rate``.

    A random-init model almost never samples EOS, so every completion would run to the length
    limit. The last layer's value bias passes through attention unchanged (the weights sum to
    one), so it adds the same vector ``u`` to the residual stream at every position; we size
    it to make up about half of the normalised final hidden state, and point the EOS row of the
    head along ``u``, scaled so that the mean EOS probability is ``rate``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, model.config.vocab_size, (8, 96), generator=g)
    layer = model.model.layers[-1].self_attn
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    groups = model.config.num_attention_heads // model.config.num_key_value_heads
    with torch.no_grad():
        b = torch.randn(layer.v_proj.bias.shape, generator=g)
        u = layer.o_proj.weight @ b.view(-1, 1, head_dim).expand(-1, groups, -1).reshape(-1)
        direction = u / u.norm()
        b, u = b / u.norm(), direction

        def hidden_states(scale: float) -> torch.Tensor:
            layer.v_proj.bias.copy_(scale * b)
            out = model.model(input_ids=ids).last_hidden_state
            return out.reshape(-1, model.config.hidden_size)

        lo, hi = 0.0, 1e4  # value-bias scale so that cos(h, u) is about 0.5
        for _ in range(40):
            mid = (lo + hi) / 2
            cos = float((hidden_states(mid) @ u / hidden_states(mid).norm(dim=-1)).mean())
            lo, hi = (mid, hi) if cos < 0.5 else (lo, mid)
        hidden = hidden_states(lo)
        weight = model.get_output_embeddings().weight
        others = hidden @ weight.T
        others[:, eos_id] = -math.inf
        lse = torch.logsumexp(others, -1)
        proj = hidden @ u
        lo, hi = 0.0, 100.0  # EOS row scale for the target mean probability
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if float(torch.sigmoid(mid * proj - lse).mean()) < rate else (lo, mid)
        weight[eos_id] = lo * u


def prepare_assets(workdir: Path, spec: ModelSpec) -> tuple[Path, Path]:
    """Save the shared model (``workdir/model``) and tokenizer (``workdir/tokenizer``, a
    directory of its own: next to a Qwen2 config, ``AutoTokenizer`` would pick the Qwen2 class
    instead of the saved word-level one) once; return both paths."""
    path, tok_path = workdir / "model", workdir / "tokenizer"
    marker = path / "spec.json"
    if marker.is_file() and json.loads(marker.read_text()) == asdict(spec) and tok_path.is_dir():
        return path, tok_path
    tok = build_tokenizer()
    model = build_model(spec, tok)
    model.save_pretrained(path)
    tok.save_pretrained(tok_path)
    marker.write_text(json.dumps(asdict(spec)))
    return path, tok_path


# ------------------------------------------------------------------------------- data

def _lognormal_lengths(rng, n: int, median: float, sigma: float, lo: int, hi: int) -> list[int]:
    return [int(min(hi, max(lo, round(rng.lognormvariate(math.log(median), sigma))))) for _ in range(n)]


class TextGen:
    """Random text of pseudo-words with Zipf-distributed frequencies."""

    def __init__(self, seed: int):
        import random

        self.rng = random.Random(seed)
        self.vocab = words(VOCAB_SIZE - 2)
        weights = [1.0 / (r + 1) ** 1.05 for r in range(len(self.vocab))]
        total = sum(weights)
        self.cum, acc = [], 0.0
        for w in weights:
            acc += w / total
            self.cum.append(acc)

    def text(self, n: int) -> str:
        return " ".join(self.rng.choices(self.vocab, cum_weights=self.cum, k=n))


def preference_rows(n: int, seed: int = 0, prompt=(40, 0.6, 8, 256), response=(32, 0.7, 4, 256)):
    """``n`` rows ``{"prompt", "chosen", "rejected"}``; lengths in words (= tokens, + EOS on each
    response) are log-normal: (median, sigma, min, max). Prompts end with a space."""
    gen = TextGen(seed)
    p = _lognormal_lengths(gen.rng, n, *prompt)
    c = _lognormal_lengths(gen.rng, n, *response)
    r = _lognormal_lengths(gen.rng, n, *response)
    return [{"prompt": gen.text(a) + " ", "chosen": gen.text(b), "rejected": gen.text(d)}
            for a, b, d in zip(p, c, r)]


def prompt_rows(n: int, seed: int = 1, prompt=(32, 0.5, 8, 128)):
    gen = TextGen(seed)
    return [{"prompt": gen.text(a)} for a in _lognormal_lengths(gen.rng, n, *prompt)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------- workers

def worker_setup(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)


def vm_hwm_mb() -> float:
    """Peak resident set size of this process so far (MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class RunResult:
    library: str
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    peak_rss_mb: float = float("nan")
    wall_s: float = float("nan")
    error: str = ""


def run_worker(script: str, library: str, spec_path: Path, out_dir: Path, tag: str,
               timeout: float | None = None) -> RunResult:
    """Run ``script --worker LIBRARY --spec SPEC --out OUT`` in a subprocess; peak RSS of that
    child comes from ``os.wait4`` (ru_maxrss, KiB on Linux)."""
    out = out_dir / f"{tag}.json"
    log = out_dir / f"{tag}.log"
    cmd = [sys.executable, script, "--worker", library, "--spec", str(spec_path), "--out", str(out)]
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        deadline = None if timeout is None else start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline and time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak = usage.ru_maxrss / 1024
    if proc.returncode != 0 or not out.is_file():
        tail = log.read_text()[-3000:]
        return RunResult(library, False, peak_rss_mb=peak, wall_s=wall, error=tail)
    return RunResult(library, True, json.loads(out.read_text()), peak, wall)


def interleaved(script: str, libraries: list[str], spec: dict, workdir: Path, repeats: int,
                timeout: float | None = None, label: str = "run") -> dict[str, list[RunResult]]:
    """Run every library ``repeats`` times in the order A, B, A, B, ...; stop on a failure."""
    spec_path = workdir / f"{label}_spec.json"
    spec_path.write_text(json.dumps(spec))
    results: dict[str, list[RunResult]] = {lib: [] for lib in libraries}
    for rep in range(repeats):
        for lib in libraries:
            print(f"  [{label}] {lib} repetition {rep + 1}/{repeats} ...", flush=True)
            r = run_worker(script, lib, spec_path, workdir, f"{label}_{lib}_{rep}", timeout)
            if not r.ok:
                print(f"  {lib} failed:\n{r.error}", file=sys.stderr)
                raise SystemExit(1)
            print(f"    done in {r.wall_s:.0f}s, peak RSS {r.peak_rss_mb:.0f} MiB", flush=True)
            results[lib].append(r)
    return results


def median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


# ------------------------------------------------------------------------------- FLOPs

def matmul_peak_gflops(threads: int, n: int = 2048, seconds: float = 3.0, device: str = "cpu",
                       dtype: str = "float32") -> float:
    """Best sustained fp32 GEMM rate of this machine (GFLOP/s), with ``threads`` threads; on
    a GPU, the median GEMM rate in ``dtype`` (:func:`flops.gemm_peak`)."""
    import torch

    if device != "cpu":
        from flops import gemm_peak

        return gemm_peak(device, dtype, n=8192, warmup=5, repeats=20)["median"]

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(3):
            torch.mm(a, b, out=c)
        best = max(best, 3 * 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def attention_flops(spec: ModelSpec, seq_lens: list[int]) -> int:
    """Forward FLOPs of QK^T and AV (causal: half of T^2) over all layers for given rows."""
    return sum(2 * 2 * spec.hidden_size * t * t // 2 for t in seq_lens) * spec.num_hidden_layers


# ------------------------------------------------------------------------------- output

def fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in header]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [f"### {title}", "",
             "| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    text = "\n".join(lines)
    print(text + "\n", flush=True)
    return text


def equal_math_table(title: str, runs: dict[str, list[dict]]) -> str:
    """Per-step loss and gradient norm of each library side by side (``runs``: library ->
    its per-step records), with the loss difference and gradient-norm ratio of two."""
    libraries = list(runs)
    header = ["step"] + [f"{lib} {k}" for k in ("loss", "grad_norm") for lib in libraries]
    if len(libraries) == 2:
        header += ["|d loss|", "grad_norm ratio"]
    rows = []
    for i in range(min(len(v) for v in runs.values())):
        row = [i + 1] + [f"{runs[lib][i][k]:.6f}" for k in ("loss", "grad_norm") for lib in libraries]
        if len(libraries) == 2:
            a, b = (runs[lib][i] for lib in libraries)
            row += [f"{abs(a['loss'] - b['loss']):.2e}", b["grad_norm"] / a["grad_norm"]]
        rows.append(row)
    return print_table(title, header, rows)


def finish_report(report: dict, res: dict[str, list[RunResult]], peak: float, json_path) -> None:
    """Add the raw runs and the matmul peak to ``report``, print the machine, write the JSON."""
    report["runs"] = {lib: [asdict(r) for r in runs] for lib, runs in res.items()}
    report["matmul_peak_gflops"] = peak
    print(f"machine: {report['machine']}")
    if json_path:
        json_path.write_text(json.dumps(report, indent=1))


def machine_info(threads: int) -> str:
    import torch

    try:
        import trl

        trl_v = trl.__version__
    except ImportError:
        trl_v = "not installed"
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} cores visible, "
            f"{threads} torch threads, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, trl {trl_v}, Python {platform.python_version()}")


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=2, help="interleaved repetitions per library")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (1: on a shared machine, 2 threads spin-wait on each other)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the shared model/data are written (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    p.add_argument("--libraries", default="trl,rlfoundry",
                   help="comma-separated subset of trl,rlfoundry (trl needs `pip install .[bench]`); "
                   "bench_dpo.py also takes rlfoundry variants, e.g. "
                   "'rlfoundry,rlfoundry:data.share_prompt=false' (ratios against the first)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: both libraries on the GPU (benchmarks/run_gpu.sh)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="bfloat16: autocast in both libraries")
    p.add_argument("--rlf", action="append", default=[], metavar="KEY=VALUE",
                   help="override an rlfoundry config key (e.g. data.share_prompt=false) to "
                   "measure one technique against the default; repeatable")
    return p


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def trl_device_args(spec: dict, kind: str) -> dict:
    """TRL config keywords for ``--device`` / ``--dtype``: CPU fp32 as before; on CUDA, bf16
    autocast and TRL's fastest GPU settings: Liger kernels when ``liger_kernel`` is installed,
    padding-free DPO batches, vLLM (colocated) generation for GRPO when ``vllm`` is installed."""
    gpu = spec.get("device", "cpu") == "cuda"
    kw = {"use_cpu": not gpu, "bf16": spec.get("dtype") == "bfloat16", "fp16": False}
    if gpu:
        if _importable("liger_kernel"):
            kw["use_liger_kernel"] = True
        if kind == "dpo":
            kw["padding_free"] = True
        if kind == "grpo" and _importable("vllm"):
            kw.update(use_vllm=True, vllm_mode="colocate")
    return kw


def trl_model_kwargs(spec: dict) -> dict:
    """``from_pretrained`` keywords of TRL's model: flash-attention 2 on CUDA when installed
    (what its padding-free batches are for)."""
    if spec.get("device", "cpu") == "cuda" and _importable("flash_attn"):
        return {"attn_implementation": "flash_attention_2"}
    return {}


def rlf_device_args(spec: dict) -> dict:
    """rlfoundry ``training`` keys for ``--device`` / ``--dtype`` (bf16 autocast on request)."""
    return {"device": spec.get("device", "cpu"),
            "precision": "bf16" if spec.get("dtype") == "bfloat16" else "fp32"}


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Dotted ``key.path=value`` overrides (values parsed as JSON when they parse)."""
    for item in overrides:
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def workdir_for(args) -> Path:
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return args.workdir
    return Path(tempfile.mkdtemp(prefix="rlfoundry_bench_"))


def check_trl(libraries: list[str]) -> None:
    if "trl" in libraries:
        try:
            import trl  # noqa: F401
        except ImportError:
            raise SystemExit("TRL is not installed: pip install -c constraints.txt -e '.[bench]' "
                             "(or pass --libraries rlfoundry)") from None
