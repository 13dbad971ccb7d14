"""Evaluation: the pass@k estimator, accuracy/pass@k aggregation, preference accuracy, `rlfoundry eval`."""

import json
import math
import subprocess
import sys

import pytest
import torch

from rlfoundry import evaluation
from rlfoundry.cli import main
from rlfoundry.data import PreferenceDataset, PromptDataset
from rlfoundry.errors import ConfigError
from rlfoundry.models import build_model
from rlfoundry.rewards import resolve_rewards


def plain_pass_at_k(n, c, k):
    """The definition: the chance that k of the n samples drawn without replacement hold a
    correct one, 1 - C(n - c, k) / C(n, k)."""
    return 1 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_equals_the_combinatorial_definition():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert evaluation.pass_at_k(n, c, k) == pytest.approx(plain_pass_at_k(n, c, k), abs=1e-12)
    assert evaluation.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the plain hit rate
    assert evaluation.pass_at_k(200, 1, 100) == pytest.approx(0.5)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="0 <= c <= n"):
        evaluation.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        evaluation.pass_at_k(4, 1, 5)


def test_accuracy_and_pass_at_k_aggregate_rewards_per_prompt(tokenizer, monkeypatch):
    """Fixed completions in place of sampling, so the numbers are known: greedy answers right
    for 2 of 3 prompts; of 4 samples per prompt, 4, 1 and 0 are right."""
    dataset = PromptDataset(prompts=["1+1=", "2+2=", "3+3="], answer=["2", "4", "6"])
    greedy = ["2", "4", "7"]
    sampled = ["2", "2", "2", "2", "4", "0", "0", "0", "1", "1", "1", "1"]

    def fake_generate(model, tok, prompts, num_samples, params, seed=0, batch_size=64):
        assert len(prompts) == 3
        return greedy if num_samples == 1 else sampled

    monkeypatch.setattr(evaluation, "generate", fake_generate)
    metrics, samples = evaluation.evaluate_prompts(
        None, tokenizer, dataset, resolve_rewards(["math_accuracy"]), ks=[1, 2], num_samples=4, show=2)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["pass@1"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert metrics["pass@2"] == pytest.approx((1 + plain_pass_at_k(4, 1, 2) + 0) / 3)
    assert samples == [{"prompt": "1+1=", "answer": "2", "completion": "2", "reward": 1.0},
                       {"prompt": "2+2=", "answer": "4", "completion": "4", "reward": 1.0}]
    with pytest.raises(ConfigError, match="--num-samples \\(2\\) must be at least the largest k \\(4\\)"):
        evaluation.evaluate_prompts(None, tokenizer, dataset, resolve_rewards(["math_accuracy"]),
                                    ks=[4], num_samples=2)


def test_pair_margins_are_log_prob_differences_of_the_completions(tokenizer):
    model = build_model("tiny", tokenizer, seed=1).eval()
    rows = [{"prompt": "sort: b a\n", "chosen": "a b", "rejected": "b a"},
            {"prompt": "sort: c a b\n", "chosen": "a b c", "rejected": "c a b"}]
    margins = evaluation.pair_margins(model, tokenizer, PreferenceDataset.from_rows(rows))

    def logp(prompt, completion):
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            lp = model(torch.tensor([p + c])).logits.double().log_softmax(-1)[0]
        return sum(float(lp[len(p) - 1 + i, t]) for i, t in enumerate(c))

    expected = [logp(r["prompt"], r["chosen"]) - logp(r["prompt"], r["rejected"]) for r in rows]
    assert margins.tolist() == pytest.approx(expected, abs=1e-4)
    # against itself as the reference every implicit reward is 0: all ties, accuracy one half
    same = evaluation.preference_accuracy(model, tokenizer, PreferenceDataset.from_rows(rows), model)
    assert same == {"num_pairs": 2.0, "preference_accuracy": 0.5, "margin_mean": 0.0}


def test_builtin_sets_must_match_the_option(tmp_path):
    with pytest.raises(ConfigError, match="preference set; pass it to --pairs"):
        evaluation.load_prompts("builtin:sort_preferences")
    with pytest.raises(ConfigError, match="not a preference set"):
        evaluation.load_pairs("builtin:max")
    rows = tmp_path / "p.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(5)))
    assert [ex.extras["answer"] for ex in evaluation.load_prompts(str(rows), limit=2)] == ["1", "2"]
    assert len(evaluation.load_prompts("builtin:max", limit=7)) == 7


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rlfoundry", *args], capture_output=True, text=True)


def test_eval_cli_end_to_end_on_the_tiny_model(tmp_path):
    out = tmp_path / "eval.json"
    proc = run_cli("eval", "builtin:tiny", "--prompts", "builtin:max", "--limit", "6", "--k", "1,2",
                   "--num-samples", "3", "--max-new-tokens", "4", "--pairs", "builtin:sort_preferences",
                   "--reference", "builtin:tiny", "--show", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    prompts = result["prompts"]
    assert prompts["rewards"] == ["math_accuracy"] and prompts["num_prompts"] == 6
    for key in ("accuracy", "pass@1", "pass@2"):
        assert 0.0 <= prompts[key] <= 1.0
    assert prompts["pass@1"] <= prompts["pass@2"]
    assert len(result["samples"]) == 2 and result["samples"][0]["prompt"].startswith("max: ")
    # the reference is the same random-init model: every pair is a tie
    assert result["pairs"]["preference_accuracy"] == 0.5 and result["pairs"]["num_pairs"] == 6
    assert "accuracy (greedy)" in proc.stdout and "pass@2" in proc.stdout
    assert "preference accuracy 0.500" in proc.stdout
    assert "[1] prompt 'max: " in proc.stdout


def test_eval_cli_errors_are_clear(tmp_path, capsys):
    def error(*args):
        assert main(["eval", *args]) == 2
        return capsys.readouterr().err

    assert "give --prompts" in error("builtin:tiny")
    rows = tmp_path / "p.jsonl"
    rows.write_text(json.dumps({"prompt": "hi", "answer": "1"}) + "\n")
    assert "--reward is needed" in error("builtin:tiny", "--prompts", str(rows))
    assert "did you mean 'math_accuracy'" in error("builtin:tiny", "--prompts", str(rows),
                                                   "--reward", "math_acuracy")
    assert "is not a local directory" in error(str(tmp_path / "missing"), "--prompts", "builtin:max")
    assert "is no file and no built-in set" in error("builtin:tiny", "--pairs", str(tmp_path / "x.jsonl"))
