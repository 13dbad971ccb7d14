"""rollout.backend: vllm against the HF backend, on the built-in tiny model (no hub).

Marked ``vllm``: skipped when vLLM is not importable, unless RLFOUNDRY_REQUIRE_VLLM=1 (CI
installs the extra and sets it), where a missing vLLM fails every test here. Colocated
tests share one in-process engine; the GRPO run and the server are subprocesses.
"""

import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rlfoundry.models.tiny import build_model, build_tokenizer
from rlfoundry.ops.lm_head import token_logprobs
from rlfoundry.rollout import HFSampler, SamplingParams

REQUIRED = os.environ.get("RLFOUNDRY_REQUIRE_VLLM") == "1"
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not HAVE_VLLM and not REQUIRED,
                       reason="vllm is not installed (docs/rollouts.md); RLFOUNDRY_REQUIRE_VLLM=1 "
                       "makes this a failure"),
]
ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["max of 3 5 1 =", "hello world", "abc", "a longer prompt with more tokens in it"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def policy(tok):
    return build_model("tiny", tok, seed=3).eval()


@pytest.fixture(scope="module")
def engine(policy, tok):
    from rlfoundry.rollout.vllm_engine import VLLMColocated

    eng = VLLMColocated(policy, tok)
    yield eng
    eng.close()


def prompts_of(tok, texts=TEXTS):
    return [tok(t)["input_ids"] for t in texts]


def both(engine, policy, tok, prompts, g, params, gen=lambda: torch.Generator().manual_seed(0)):
    return (engine.generate(prompts, g, params, gen()),
            HFSampler(policy, tok).generate(prompts, g, params, gen()))


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max((abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v)), default=0.0)


def test_greedy_matches_hf_backend(engine, policy, tok):
    params = SamplingParams(temperature=0.0, max_new_tokens=20)
    ours, hf = both(engine, policy, tok, prompts_of(tok), 2, params)
    assert ours.completion_ids == hf.completion_ids
    assert ours.truncated == hf.truncated
    assert ours.prompt_index == hf.prompt_index == [0, 0, 1, 1, 2, 2, 3, 3]
    assert max_abs_diff(ours.sampling_logprobs, hf.sampling_logprobs) < 1e-4


def test_multi_turn_episodes_on_vllm_match_the_hf_backend(engine, policy, tok):
    """Issue 14: the episode runner drives the vLLM engine like the HF one: same turns, same
    sampled ids, the environment's tokens masked the same way, engine log-probs of the model
    tokens only."""
    from rlfoundry.environments import (
        Environment,
        EnvStep,
        EpisodeRunner,
        EpisodeSettings,
        EpisodeStart,
    )

    class ThreeTurns(Environment):
        def reset(self, row):
            return EpisodeStart([{"role": "user", "content": row["prompt"]}], 0)

        def step(self, turn, text):
            done = turn == 2
            return EnvStep([] if done else [{"role": "user", "content": f"again {turn}"}],
                           float(len(text)) if done else None, done, turn + 1)

    rows = [{"prompt": t} for t in TEXTS[:2]]
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    runs = [EpisodeRunner(ThreeTurns(), backend, tok, params, EpisodeSettings(max_turns=3))
            .run(rows, ["r0", "r1"], 2, torch.Generator().manual_seed(0))
            for backend in (engine, HFSampler(policy, tok))]
    ours, hf = runs
    assert [e.turns for e in ours.episodes] == [3, 3, 3, 3] == [e.turns for e in hf.episodes]
    assert ours.completion_ids == hf.completion_ids and ours.model_mask == hf.model_mask
    assert all(0 < sum(m) < len(m) for m in ours.model_mask)  # model and environment tokens
    assert [e.env_reward for e in ours.episodes] == [e.env_reward for e in hf.episodes]
    model_lp = [[lp for lp, m in zip(lps, mask) if m] for lps, mask in zip(ours.sampling_logprobs, ours.model_mask)]
    hf_lp = [[lp for lp, m in zip(lps, mask) if m] for lps, mask in zip(hf.sampling_logprobs, hf.model_mask)]
    assert max_abs_diff(model_lp, hf_lp) < 1e-4


def teacher_forced(policy, rollout, temperature):
    """The trainer's log-probs of every sampled token (logits / temperature, fp32)."""
    out = []
    for p, c in zip(rollout.prompt_ids, rollout.completion_ids):
        ids = torch.tensor([p + c])
        mask = torch.zeros_like(ids)
        mask[0, len(p):] = 1
        with torch.no_grad():
            lp = token_logprobs(policy, ids, torch.ones_like(ids), mask, temperature=temperature).logprobs
        out.append(lp[0, len(p) - 1:len(p) - 1 + len(c)].tolist())
    return out


def test_sampled_logprobs_match_teacher_forced_trainer_logprobs(engine, policy, tok):
    params = SamplingParams(temperature=0.8, max_new_tokens=12)
    ro = engine.generate(prompts_of(tok), 4, params, [torch.Generator().manual_seed(i) for i in range(4)])
    assert len(ro.completion_ids) == 16 and all(len(c) == len(lp) for c, lp in
                                                zip(ro.completion_ids, ro.sampling_logprobs))
    assert len({tuple(c) for c in ro.completion_ids}) > 4  # really sampled
    assert max_abs_diff(ro.sampling_logprobs, teacher_forced(policy, ro, 0.8)) < 1e-4


def test_top_k_samples_only_top_k_tokens_with_renormalised_logprobs(engine, policy, tok):
    """vLLM reports log-probs of the distribution it sampled from: with top_k that is the
    renormalised top-k set (docs/rollouts.md), not the full softmax the trainer computes."""
    params = SamplingParams(temperature=1.0, top_k=3, max_new_tokens=8)
    ro = engine.generate(prompts_of(tok)[:2], 4, params, torch.Generator().manual_seed(1))
    for p, c, lps in zip(ro.prompt_ids, ro.completion_ids, ro.sampling_logprobs):
        with torch.no_grad():
            logits = policy(torch.tensor([p + c])).logits[0, len(p) - 1:len(p) - 1 + len(c)].float()
        top = logits.topk(3, -1)
        for t, (tok_id, lp) in enumerate(zip(c, lps)):
            assert tok_id in top.indices[t].tolist()
            expected = top.values[t].log_softmax(-1)[top.indices[t].tolist().index(tok_id)]
            assert abs(lp - float(expected)) < 1e-4


def test_stop_strings_cut_where_the_hf_backend_cuts(engine, policy, tok):
    prompts = prompts_of(tok)
    free, _ = both(engine, policy, tok, prompts, 1, SamplingParams(temperature=0.0, max_new_tokens=20))
    texts = [tok.decode(c[3:10], skip_special_tokens=True) for c in free.completion_ids]
    stops = [t[len(t) // 2] for t in texts if t.strip()][:2]  # characters met mid-completion
    assert stops
    params = SamplingParams(temperature=0.0, max_new_tokens=20, stop_strings=stops)
    ours, hf = both(engine, policy, tok, prompts, 1, params)
    assert ours.completion_ids == hf.completion_ids
    assert ours.truncated == hf.truncated
    assert not all(hf.truncated)  # some completions did stop at a stop string


def test_seeds_make_rollouts_reproducible_per_prompt(engine, tok):
    prompts, params = prompts_of(tok), SamplingParams(temperature=1.0, max_new_tokens=10)

    def gens(n, first=0):
        return [torch.Generator().manual_seed(first + i) for i in range(n)]

    a = engine.generate(prompts, 3, params, gens(4))
    b = engine.generate(prompts, 3, params, gens(4))
    assert a.completion_ids == b.completion_ids
    alone = engine.generate(prompts[:1], 3, params, gens(1))  # other prompts do not matter
    assert alone.completion_ids == a.completion_ids[:3]
    other = engine.generate(prompts, 3, params, gens(4, first=100))
    assert other.completion_ids != a.completion_ids
    one = torch.Generator().manual_seed(5)  # one generator for the call: it advances
    assert engine.generate(prompts, 3, params, one).completion_ids != \
        engine.generate(prompts, 3, params, one).completion_ids


def test_engine_leaves_rng_threads_and_environment_alone(engine, tok):
    env = dict(os.environ)
    set_threads = torch.set_num_threads
    random.seed(7)
    torch.manual_seed(7)
    expected = (random.random(), torch.rand(3))
    random.seed(7)
    torch.manual_seed(7)
    engine.generate(prompts_of(tok), 2, SamplingParams(temperature=1.0, max_new_tokens=6),
                    torch.Generator().manual_seed(0))
    assert (random.random(), *torch.rand(3).tolist()) == (expected[0], *expected[1].tolist())
    assert torch.set_num_threads is set_threads
    changed = {k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)}
    assert not {k for k in changed if not k.startswith("VLLM_")}, changed


def test_engine_generates_from_the_new_weights_after_sync(engine, policy, tok):
    prompts, params = prompts_of(tok), SamplingParams(temperature=0.0, max_new_tokens=16)
    before, _ = both(engine, policy, tok, prompts, 1, params)
    with torch.no_grad():  # a different model, whose output layer (tied) favours EOS
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
        policy.model.embed_tokens.weight[tok.eos_token_id] *= 20
    stale, _ = both(engine, policy, tok, prompts, 1, params)
    assert stale.completion_ids == before.completion_ids  # no sync yet: the old weights
    engine.sync_weights(policy)
    ours, hf = both(engine, policy, tok, prompts, 1, params)
    assert ours.completion_ids == hf.completion_ids != before.completion_ids
    assert ours.truncated == hf.truncated
    assert any(c[-1] == tok.eos_token_id for c in ours.completion_ids)  # EOS kept, not truncated
    assert max_abs_diff(ours.sampling_logprobs, hf.sampling_logprobs) < 1e-4


def test_lora_policy_is_served_with_the_adapter_folded_in(tok):
    pytest.importorskip("peft")
    from rlfoundry.config.schema import LoRAConfig
    from rlfoundry.models.lora import apply_lora
    from rlfoundry.rollout.vllm_engine import VLLMColocated

    policy = apply_lora(build_model("tiny", tok, seed=4), LoRAConfig(r=4, alpha=8)).eval()
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    eng = VLLMColocated(policy, tok)
    try:
        params = SamplingParams(temperature=0.0, max_new_tokens=12)
        for _ in range(2):  # the engine's start, then a push after the adapter changed
            ours, hf = both(eng, policy, tok, prompts_of(tok), 1, params)
            assert ours.completion_ids == hf.completion_ids
            assert max_abs_diff(ours.sampling_logprobs, hf.sampling_logprobs) < 1e-4
            with torch.no_grad():
                for name, p in policy.named_parameters():
                    if "lora_A" in name:
                        p.mul_(-3.0)
            eng.sync_weights(policy)
    finally:
        eng.close()


# ---- end to end ---------------------------------------------------------------------------
def run_cli(args: list[str], timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlfoundry", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def grpo_config(tmp: Path, sft: Path, rollout: dict, steps: int) -> Path:
    cfg = yaml.safe_load((ROOT / "examples/configs/grpo_max_vllm.yaml").read_text())
    cfg["model"]["name_or_path"] = str(sft)
    cfg["rollout"] = rollout
    cfg["training"].update(output_dir=str(tmp / "grpo"), max_steps=steps, save_every=4,
                           eval_every=steps, keep_last=3)
    cfg["logging"] = {"tensorboard": False, "progress_bar": False}
    path = tmp / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def sft_model(sft_max_model) -> Path:
    """The demo's SFT warm start (HF only): sft_max.yaml's model, shared with the HF GRPO
    demo test and the quickstart (conftest.py)."""
    return sft_max_model


@pytest.mark.slow
def test_grpo_on_vllm_learns_max_and_resumes_after_a_kill(tmp_path, sft_model):
    steps = 16
    config = grpo_config(tmp_path, sft_model, {"backend": "vllm"}, steps)
    run = tmp_path / "grpo"
    proc = subprocess.Popen([sys.executable, "-m", "rlfoundry", "train", str(config)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    while not any(m.get("step") == 6 for m in metrics(run)):  # checkpoint at 4, killed after 6
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "no step 6 in 15 minutes"
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = {m["step"]: m for m in metrics(run) if "loss" in m}
    done = run_cli(["train", str(config), "training.resume=auto"])
    assert done.returncode == 0, done.stderr[-3000:]
    lines = metrics(run)
    resumed = [m for m in lines if "loss" in m and m["step"] in (5, 6)][-2:]
    for m in resumed:  # steps 5-6 ran twice, from the same checkpoint and seeds
        assert m["loss"] == pytest.approx(killed[m["step"]]["loss"], rel=1e-4, abs=1e-6)
        assert m["reward_mean"] == pytest.approx(killed[m["step"]]["reward_mean"], abs=1e-6)
    evals = [m for m in lines if "eval/accuracy" in m]
    start, end = evals[0]["eval/accuracy"], evals[-1]["eval/accuracy"]
    assert evals[-1]["step"] == steps
    assert end >= start + 0.1, f"held-out accuracy {start:.3f} -> {end:.3f}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_server_mode_serves_a_run_and_leaves_no_processes(tmp_path, sft_model, tok):
    import psutil

    from rlfoundry.config.schema import RolloutConfig
    from rlfoundry.rollout.vllm_server import VLLMServerClient, post_json

    port = free_port()
    address = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "rlfoundry", "rollout-server", "--model",
                               str(sft_model), "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    family: list[psutil.Process] = []
    try:
        deadline = time.time() + 900
        while True:
            try:
                post_json(address + "/health", None, 5, "GET")
                break
            except Exception:
                assert server.poll() is None, "the rollout server exited while starting"
                assert time.time() < deadline, "the rollout server did not start in 15 minutes"
                time.sleep(1)
        family = psutil.Process(server.pid).children(recursive=True)
        assert family  # vLLM's API server and engine processes
        policy = build_model("tiny", tok, seed=11).eval()  # not the served weights: pushed first
        client = VLLMServerClient(policy, tok, RolloutConfig(backend="vllm", mode="server", server=address))
        params = SamplingParams(temperature=0.0, max_new_tokens=12)
        prompts = prompts_of(tok)
        ours = client.generate(prompts, 1, params, torch.Generator())
        hf = HFSampler(policy, tok).generate(prompts, 1, params, torch.Generator())
        assert ours.completion_ids == hf.completion_ids
        assert max_abs_diff(ours.sampling_logprobs, hf.sampling_logprobs) < 1e-4

        config = grpo_config(tmp_path, sft_model, {"backend": "vllm", "mode": "server",
                                                   "server": address}, steps=3)
        done = run_cli(["train", str(config)])
        assert done.returncode == 0, done.stderr[-3000:]
        assert [m["step"] for m in metrics(tmp_path / "grpo") if "loss" in m] == [1, 2, 3]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    psutil.wait_procs(family, timeout=60)
    left = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert server.returncode is not None and not left, f"left running: {left}"
