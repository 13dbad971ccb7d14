"""Process rewards wired through the GRPO trainer (``algorithm.advantage.estimator: process``)."""

import pytest
import torch
import yaml

from rlfoundry.algorithms.grpo import GRPOTrainer
from rlfoundry.algorithms.grpo_process import text_steps
from rlfoundry.algorithms.process_rewards import process_advantages, token_steps_equal
from rlfoundry.cli import main as cli_main
from rlfoundry.config import load_config
from rlfoundry.errors import ConfigError, DataError
from rlfoundry.models import build_model, build_tokenizer
from rlfoundry.rollout import Rollout

DELIM = "\n\n"
# one group per prompt: a digit in a step is what the step-reward function rewards
COMPLETIONS = ["12\n\nab", "ab\n\n34", "5\n\n6\n\n", "ab\n\ncd"]


def digit_steps(prompts, completions, **columns):
    """Step rewards: 1 for a step (text between blank lines) that holds a digit, else 0."""
    out = []
    for c in completions:
        steps = c.split(DELIM)
        if len(steps) > 1 and not steps[-1].strip():  # a trailing delimiter ends the last step
            steps.pop()
        out.append([float(any(ch.isdigit() for ch in s)) for s in steps])
    return out


def halves(prompts, completions, **columns):
    """Two steps per sample; only the first is rewarded, for every other sample."""
    return [[float(i % 2 == 0), 0.0] for i in range(len(completions))]


def one_number(prompts, completions, **columns):
    return [1.0 for _ in completions]


def one_step(prompts, completions, **columns):
    return [[1.0] for _ in completions]


def not_lists(prompts, completions, **columns):
    return [1.0 for _ in completions]


class FixedBackend:
    """Samples the same completions for every prompt (token by token, from ``COMPLETIONS``)."""

    def __init__(self, tokenizer):
        self.ids = [tokenizer(c, add_special_tokens=False).input_ids for c in COMPLETIONS]

    def generate(self, prompts, num_samples, params, generator):
        n = len(prompts) * num_samples
        completions = [list(self.ids[i % len(self.ids)]) for i in range(n)]
        return Rollout(prompt_index=[i // num_samples for i in range(n)],
                       prompt_ids=[list(prompts[i // num_samples]) for i in range(n)],
                       completion_ids=completions,
                       sampling_logprobs=[[-1.0] * len(c) for c in completions],
                       truncated=[False] * n)

    def sync_weights(self, model):
        pass


def config(tmp_path, process=None, algorithm=None, **training):
    return {
        "algorithm": {"name": "grpo", "group_size": 4, "sampling": {"max_new_tokens": 6},
                      "rewards": [{"name": "tests.test_process_rewards_trainer:one_number"}],
                      "advantage": {"estimator": "process", "process": {
                          "source": "tests.test_process_rewards_trainer:digit_steps",
                          **(process or {})}},
                      **(algorithm or {})},
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"train": "builtin:addition", "train_size": 16, "eval_size": 4},
        "training": {"output_dir": str(tmp_path), "batch_size": 2, "max_steps": 1, "seed": 0,
                     "learning_rate": 1e-3, "lr_scheduler": "constant", **training},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def trainer(cfg, fixed=True):
    tok = build_tokenizer()
    return GRPOTrainer(model=build_model("tiny", tok, seed=0).double(), tokenizer=tok, config=cfg,
                       rollout_backend=FixedBackend(tok) if fixed else None)


def collated(t):
    seen = []
    original = t.collate

    def spy(indices):
        batch = original(indices)
        seen.append(batch)
        return batch

    t.collate = spy
    t.train()
    return seen


def completion_rows(batch, tok):
    """Per row: the completion token ids and their positions in the [B, T - 1] label axis."""
    out = []
    for r in range(batch["input_ids"].shape[0]):
        pos = batch["response_mask"][r].nonzero().flatten()
        out.append((batch["input_ids"][r, 1:][pos].tolist(), pos))
    return out


def test_rewarded_step_tokens_get_higher_advantages_and_match_process_advantages(tmp_path):
    t = trainer(config(tmp_path))
    batches = collated(t)
    tok = t.tokenizer
    assert batches
    for batch in batches:
        adv = batch["advantages"]
        assert adv.shape == batch["response_mask"].shape  # [B, T - 1], like the log-probs
        assert (adv[~batch["response_mask"]] == 0).all()
        rows = completion_rows(batch, tok)
        pieces = [tok.batch_decode([[i] for i in ids], skip_special_tokens=True) for ids, _ in rows]
        texts = ["".join(p) for p in pieces]
        # the advantages equal process_advantages computed directly on the batch's groups
        rewards = digit_steps(None, texts)
        gid = batch["group_id"]
        groups = [(gid == g).nonzero().flatten() for g in gid.unique()]
        steps = [text_steps(p, DELIM) for p in pieces]
        expected = process_advantages(rewards, groups, steps)
        for r, (_, pos) in enumerate(rows):
            assert torch.allclose(adv[r, pos].double(), expected[r], atol=1e-6)
        # "12\n\nab": the rewarded first step's tokens beat the unrewarded second step's
        r = texts.index("12\n\nab")
        first = [k for k, s in enumerate(steps[r]) if s == 0]
        second = [k for k, s in enumerate(steps[r]) if s == 1]
        _, pos = rows[r]
        assert adv[r, pos[first]].min() > adv[r, pos[second]].max()
        # "ab\n\n34": the unrewarded first step's tokens get less than the rewarded second's
        r = texts.index("ab\n\n34")
        _, pos = rows[r]
        assert adv[r, pos[0]] < adv[r, pos[-1]]


def test_equal_spans_from_the_sampler(tmp_path):
    cfg = config(tmp_path, {"source": "tests.test_process_rewards_trainer:halves", "steps": "equal"})
    t = trainer(cfg, fixed=False)
    batches = collated(t)
    for batch in batches:
        adv = batch["advantages"]
        rows = completion_rows(batch, t.tokenizer)
        steps = [token_steps_equal(len(ids), 2) for ids, _ in rows]
        for r, (_ids, pos) in enumerate(rows):
            values = adv[r, pos]
            step0 = values[[k for k, s in enumerate(steps[r]) if s == 0]]
            step1 = values[[k for k, s in enumerate(steps[r]) if s == 1]]
            if len(step0) and len(step1):  # within a sample, constant per step
                assert (step0 == step0[0]).all() and (step1 == step1[0]).all()
        assert adv.abs().sum() > 0


def test_yaml_and_cli_run_two_steps(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path / "out", {
        "source": "tests.test_process_rewards_trainer:halves", "steps": "equal"}, max_steps=2)))
    cfg = load_config(path)
    assert cfg.algorithm.advantage.process.steps == "equal"
    metrics = GRPOTrainer(config=cfg).train()
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert cli_main(["train", str(path), f"training.output_dir={tmp_path / 'cli'}"]) == 0
    assert (tmp_path / "cli" / "metrics.jsonl").exists()


@pytest.mark.parametrize("change, key", [
    ({"advantage": {"estimator": "process"}}, "algorithm.advantage.process.source"),
    ({"advantage": {"estimator": "process", "process": {"source": "no_such_step_reward"}}},
     "algorithm.advantage.process.source"),
    ({"advantage": {"estimator": "grpo", "process": {"source": "tests.test_process_rewards_trainer:halves"}}},
     "algorithm.advantage.process"),
    ({"loss": {"type": "gspo"}}, "algorithm.loss.loss_type"),
    ({"advantage": {"estimator": "process", "whiten": True, "process": {
        "source": "tests.test_process_rewards_trainer:halves"}}}, "algorithm.advantage.whiten"),
])
def test_config_errors_name_the_key(tmp_path, change, key):
    cfg = config(tmp_path)
    cfg["algorithm"].update(change)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(cfg)  # at config load, before any model is built
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        trainer(cfg)  # and from Python with a dict config


def test_bad_steps_value_is_rejected_at_load(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, {"steps": "sentences"})))
    with pytest.raises(ConfigError, match="steps"):
        load_config(path)


def test_a_step_function_returning_numbers_is_a_data_error(tmp_path):
    t = trainer(config(tmp_path, {"source": "tests.test_process_rewards_trainer:not_lists"}))
    with pytest.raises(DataError, match="list of step rewards"):
        t.train()


def test_fewer_step_rewards_than_steps_is_a_data_error(tmp_path):
    t = trainer(config(tmp_path, {"source": "tests.test_process_rewards_trainer:one_step"}))
    with pytest.raises(DataError, match="1 step rewards but a token in step 1"):
        t.train()  # "12\n\nab" has two steps


def test_trailing_delimiter_belongs_to_the_last_step():
    assert text_steps(["5", "\n", "\n", "6", "\n", "\n", ""], DELIM) == [0, 0, 0, 1, 1, 1, 1]
    assert text_steps(["a", "\n", "\n", "b"], DELIM) == [0, 0, 0, 1]
