"""The four GRPO rollout stages hand each other plain-data records (dataclasses): what a
rollout worker on another host would send must pickle, hold no trainer or model, and the
checkpointed trainer state must be plain containers only."""

from __future__ import annotations

import dataclasses
import pickle

import torch

from rlfoundry.algorithms.grpo import GRPOTrainer
from rlfoundry.algorithms.grpo_buffer import TrainingBuffer
from rlfoundry.algorithms.grpo_grouping import GroupedRound, SelectedSamples
from rlfoundry.models import build_model, build_tokenizer
from rlfoundry.rollout import Rollout
from rlfoundry.rollout.scoring import ScoredRollout

PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def digit_fraction(prompts, completions, **columns):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def config(tmp_path, **algorithm):
    return {
        "algorithm": {"name": "grpo", "group_size": 4, "sampling": {"max_new_tokens": 5},
                      "rewards": [{"name": "tests.test_rollout_stages:digit_fraction"}], **algorithm},
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"train": "builtin:addition", "train_size": 32, "eval_size": 4},
        "training": {"output_dir": str(tmp_path), "batch_size": 4, "max_steps": 1, "seed": 0,
                     "learning_rate": 1e-3, "lr_scheduler": "constant"},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def plain_paths(obj, path="", records_ok=True):
    """Paths of values that are neither plain containers/scalars/tensors (nor, with
    ``records_ok``, dataclass records made of them)."""
    if isinstance(obj, PLAIN):
        return []
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in
                ([f"{path}.<key {k!r}>"] if not isinstance(k, str) else []) + plain_paths(v, f"{path}.{k}", records_ok)]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in plain_paths(v, f"{path}[{i}]", records_ok)]
    if records_ok and dataclasses.is_dataclass(obj):
        return [p for f in dataclasses.fields(obj)
                for p in plain_paths(getattr(obj, f.name), f"{path}.{f.name}", records_ok)]
    return [f"{path}: {type(obj).__name__}"]


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name))
                                          for f in dataclasses.fields(a))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


class Recording(GRPOTrainer):
    """Keeps each stage's record of the first rollout."""

    seen: dict = {}

    def _generate(self, prompt_indices, share):
        out = super()._generate(prompt_indices, share)
        self.seen.setdefault("generate", out)
        return out

    def _score(self, rollout, prompt_indices):
        out = super()._score(rollout, prompt_indices)
        self.seen.setdefault("score", out)
        return out

    def _sample_round(self, prompt_indices):
        out = super()._sample_round(prompt_indices)
        self.seen.setdefault("group", out)
        return out

    def _to_buffer(self, selection):
        self.seen.setdefault("select", selection)
        out = super()._to_buffer(selection)
        self.seen.setdefault("update", out)
        return out


def test_stage_records_are_plain_dataclasses_that_pickle(tmp_path):
    tok = build_tokenizer()
    t = Recording(model=build_model("tiny", tok, seed=0), tokenizer=tok,
                  config=config(tmp_path, num_iterations=2))  # old log-probs in the buffer too
    t.seen = {}
    t.train()
    kinds = {"generate": Rollout, "score": ScoredRollout, "group": GroupedRound,
             "select": SelectedSamples, "update": TrainingBuffer}
    assert set(t.seen) == set(kinds)
    for stage, record in t.seen.items():
        assert type(record) is kinds[stage] and dataclasses.is_dataclass(record), stage
        assert plain_paths(record) == [], stage  # no model, trainer or engine inside
        back = pickle.loads(pickle.dumps(record))
        assert same(record, back), stage
    buffer = t.seen["update"]
    assert buffer.old_logprobs is not None and "old_logprobs" in buffer  # dict-style reading
    assert buffer["advantages"] is buffer.advantages and buffer.get("reference_logprobs") is None


def test_training_buffer_state_round_trip_collates_the_same(tmp_path):
    tok = build_tokenizer()
    t = GRPOTrainer(model=build_model("tiny", tok, seed=0), tokenizer=tok, config=config(tmp_path))
    t.train()
    state = t.extra_state()
    assert plain_paths(state, records_ok=False) == []  # what a safetensors+JSON encoder accepts
    restored = TrainingBuffer.from_state(pickle.loads(pickle.dumps(state["buffer"])))
    rows = list(range(len(t.buffer)))[::-1]
    assert same(restored.collate(rows), t.buffer.collate(rows))
    assert same(restored, t.buffer)


def test_ranks_scored_records_join_in_rank_order():
    from types import SimpleNamespace

    from rlfoundry.rollout.scoring import concat_scored

    def part(offset, n, reasons, counts, answers):
        ro = Rollout(prompt_index=[offset] * n, prompt_ids=[[1]] * n, completion_ids=[[2, 3]] * n,
                     sampling_logprobs=[[-0.1, -0.2]] * n, truncated=[False] * n, seconds=offset + 1.0)
        return ScoredRollout(rollout=ro, prompts=["p"] * n, responses=[f"r{offset}"] * n,
                             columns={"answer": answers}, rewards=torch.full((n,), float(offset)),
                             per_function={"f": torch.full((n,), float(offset))}, reasons=reasons,
                             reason_counts=counts)

    a = part(0, 2, {"f": ["timeout", None]}, {"reward/f/timeout": 1.0}, ["1", "1"])
    b = part(1, 2, {}, {}, [None, None])  # this rank's rows have no answer column
    rows = [SimpleNamespace(extras={"answer": "1"})] * 2 + [SimpleNamespace(extras={})] * 2
    joined = concat_scored(pickle.loads(pickle.dumps([a, b])), rows)
    assert joined.rollout.prompt_index == [0, 0, 1, 1] and joined.rollout.seconds == 2.0
    assert joined.responses == ["r0", "r0", "r1", "r1"]
    assert joined.rewards.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert joined.reasons == {"f": ["timeout", None, None, None]}
    assert joined.reason_counts == {"reward/f/timeout": 1.0}
    assert joined.columns == {"answer": ["1", "1", None, None], "completion_lengths": [2, 2, 2, 2]}
