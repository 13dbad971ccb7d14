"""The engine-independent parts of the vLLM backend: request mapping, HF-compatible
trimming, seeds, weight export (LoRA folding, tied output layer), config checks. No vLLM
needed; tests/test_vllm_backend.py runs the engine itself."""

import importlib.util

import pytest
import torch
from safetensors.torch import load_file

from rlfoundry.config import load_config
from rlfoundry.errors import ConfigError, RolloutEngineError
from rlfoundry.models.tiny import build_model, build_tokenizer
from rlfoundry.rollout import HFSampler, SamplingParams
from rlfoundry.rollout.engine_requests import (
    EngineSample,
    assemble_rollout,
    finish_sample,
    request_seeds,
    sampling_kwargs,
)
from rlfoundry.rollout.engine_weights import (
    engine_weights,
    fold_lora,
    write_model_dir,
    write_weights,
)
from rlfoundry.rollout.factory import build_backend
from rlfoundry.rollout.vllm_server import parse_choices

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
EOS = 2


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def decode_with(tok):
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_eos_ends_a_sample_and_is_kept(tok):
    s = EngineSample(ids(tok, "ab") + [EOS] + ids(tok, "cd"), [-1.0, -2.0, -3.0, -4.0, -5.0], True)
    out, lps, truncated = finish_sample(s, {EOS}, [], decode_with(tok))
    assert out == ids(tok, "ab") + [EOS] and lps == [-1.0, -2.0, -3.0] and not truncated


def test_stop_string_cut_keeps_the_token_that_completes_it(tok):
    s = EngineSample(ids(tok, "12;34;"), [-0.5] * 6, True)
    out, lps, truncated = finish_sample(s, {EOS}, [";"], decode_with(tok))
    assert tok.decode(out) == "12;" and len(lps) == 3 and not truncated


def test_no_stop_means_truncated_unless_the_engine_stopped(tok):
    s = EngineSample(ids(tok, "1234"), [-0.5] * 4, False)
    assert finish_sample(s, {EOS}, ["x"], decode_with(tok))[2] is True
    s.engine_stopped = True  # a stop the 16-token tail test cannot see: keep the engine's end
    assert finish_sample(s, {EOS}, ["x"], decode_with(tok))[2] is False


def test_greedy_asks_for_one_sample_and_the_rollout_repeats_it(tok):
    greedy = SamplingParams(temperature=0.0, top_p=0.5, top_k=3, max_new_tokens=7)
    kw = sampling_kwargs(greedy, 4, None, {EOS})
    assert kw["n"] == 1 and kw["temperature"] == 0.0 and kw["top_k"] == 0 and kw["top_p"] == 1.0
    sampled = sampling_kwargs(SamplingParams(0.7, 0.9, 5, 7, ["\n"]), 4, 11, {EOS, 9})
    assert sampled == dict(n=4, temperature=0.7, top_p=0.9, top_k=5, max_tokens=7, seed=11,
                           stop=["\n"], stop_token_ids=[EOS, 9], include_stop_str_in_output=True,
                           skip_special_tokens=True, logprobs=0)
    one = [[EngineSample(ids(tok, "7"), [-0.1], False)]]
    ro = assemble_rollout([[5, 6]], one, 3, greedy, {EOS}, decode_with(tok), 0.0)
    assert ro.prompt_index == [0, 0, 0] and ro.completion_ids == [ids(tok, "7")] * 3
    with pytest.raises(ValueError, match="returned 1 samples"):
        assemble_rollout([[5, 6]], one, 3, SamplingParams(1.0), {EOS}, decode_with(tok), 0.0)


def test_request_seeds_come_from_the_generators():
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    first = request_seeds(gens, 3, greedy=False)
    again = request_seeds([torch.Generator().manual_seed(i) for i in range(3)], 3, greedy=False)
    assert first == again and len(set(first)) == 3
    one = torch.Generator().manual_seed(0)
    assert request_seeds(one, 3, False) != request_seeds(one, 3, False)  # it advances
    state = one.get_state()
    assert request_seeds(one, 3, greedy=True) == [None] * 3
    assert torch.equal(one.get_state(), state)  # greedy draws nothing, like the HF backend
    with pytest.raises(ValueError, match="2 generators for 3 prompts"):
        request_seeds(gens[:2], 3, False)


def test_engine_weights_include_the_tied_output_layer(tok, tmp_path):
    model = build_model("tiny", tok)
    weights = engine_weights(model)
    assert "lm_head.weight" in weights
    assert torch.equal(weights["lm_head.weight"], model.model.embed_tokens.weight)
    path = write_weights(weights, tmp_path)  # shared storage is copied, not refused
    assert set(load_file(path)) == set(weights)
    write_model_dir(model, tok, tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()


def test_lora_is_folded_like_peft_merges_it(tok):
    pytest.importorskip("peft")
    from rlfoundry.config.schema import LoRAConfig
    from rlfoundry.models.lora import apply_lora, merged_copy

    model = apply_lora(build_model("tiny", tok), LoRAConfig(r=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # B starts at zero: make the adapter do something
    ours = engine_weights(model)
    reference = merged_copy(model).state_dict()
    assert set(reference) <= set(ours)
    for name, value in reference.items():
        assert torch.allclose(ours[name], value, atol=1e-6), name
    assert not torch.equal(ours["model.layers.0.self_attn.q_proj.weight"],
                           model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight)


def test_fold_lora_leaves_plain_weights_alone():
    state = {"base_model.model.w.base_layer.weight": torch.ones(2, 2),
             "base_model.model.w.lora_A.default.weight": torch.ones(1, 2),
             "base_model.model.w.lora_B.default.weight": torch.full((2, 1), 2.0),
             "base_model.model.norm.weight": torch.ones(2)}
    out = fold_lora(state, 0.5)
    assert set(out) == {"w.weight", "norm.weight"}
    assert torch.equal(out["w.weight"], torch.full((2, 2), 2.0))


def test_server_answers_become_samples():
    answer = {"choices": [
        {"index": 1, "token_ids": [4, 2], "finish_reason": "stop",
         "logprobs": {"token_logprobs": [-0.1, -0.2]}},
        {"index": 0, "token_ids": [5, 6, 7], "finish_reason": "length",
         "logprobs": {"token_logprobs": [-1, -2, -3]}}]}
    first, second = parse_choices(answer)
    assert first.token_ids == [5, 6, 7] and not first.engine_stopped
    assert second.logprobs == [-0.1, -0.2] and second.engine_stopped
    with pytest.raises(RolloutEngineError, match="no token ids"):
        parse_choices({"choices": [{"index": 0, "token_ids": None, "logprobs": None, "text": "x"}]})


GRPO = {"algorithm": {"name": "grpo", "rewards": [{"name": "math_accuracy"}]}}


@pytest.mark.parametrize("rollout, message", [
    ({"backend": "vllm", "mode": "server"}, "needs rollout.server"),
    ({"backend": "vllm", "server": "http://127.0.0.1:8000"}, "rollout.mode is 'colocated'"),
    ({"mode": "server", "server": "http://127.0.0.1:8000"}, "set rollout.backend: vllm"),
])
def test_rollout_config_rejects_impossible_combinations(rollout, message):
    with pytest.raises(ConfigError, match=message):
        load_config({**GRPO, "rollout": rollout})


def test_hf_backend_is_the_default(tok):
    cfg = load_config(GRPO)
    assert isinstance(build_backend(cfg, build_model("tiny", tok), tok), HFSampler)


@pytest.mark.skipif(HAVE_VLLM, reason="checks the message shown when vllm is missing")
def test_vllm_backend_without_vllm_says_how_to_install(tok):
    cfg = load_config({**GRPO, "rollout": {"backend": "vllm"}})
    with pytest.raises(RolloutEngineError, match=r"rlfoundry\[vllm\]"):
        build_backend(cfg, build_model("tiny", tok), tok)


FSDP2_SCRIPT = '''
import os, sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from rlfoundry.models.tiny import build_model, build_tokenizer
from rlfoundry.rollout.engine_weights import engine_weights
dist.init_process_group("gloo")
tok = build_tokenizer()
full = engine_weights(build_model("tiny", tok, seed=5))
model = build_model("tiny", tok, seed=5)
for layer in model.model.layers:
    fully_shard(layer)
fully_shard(model)
assert any(type(p).__name__ == "DTensor" for p in model.parameters())
got = engine_weights(model)  # every rank gathers
assert set(got) == set(full), set(got) ^ set(full)
bad = [k for k in full if not torch.equal(got[k], full[k])]
assert not bad, bad
dist.barrier()
os.write(1, f"rank {dist.get_rank()} ok\\n".encode())  # one atomic write: ranks share the pipe
'''


@pytest.mark.slow
def test_fsdp2_shards_are_gathered_into_full_weights(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "gather.py"
    script.write_text(FSDP2_SCRIPT)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count(" ok") == 2
