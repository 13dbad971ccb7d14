"""Per-token advantages from step rewards (issue 16, item 11): the step layout and the
normalised return-to-go, against plain float64 implementations."""

import math

import pytest
import torch

from rlfoundry.algorithms.process_rewards import (
    process_advantages,
    token_steps_equal,
    token_steps_from_text,
)
from rlfoundry.errors import DataError


def test_steps_split_at_the_delimiter_by_each_token_first_character():
    pieces = ["a", "b", "\n", "\n", "c", "d\n\n", "e", "f"]
    # text "ab\n\ncd\n\nef": step 1 starts after the first blank line, step 2 after the second
    assert token_steps_from_text(pieces) == [0, 0, 0, 0, 1, 1, 2, 2]
    assert token_steps_from_text(["x;", "y", ";z"], delimiter=";") == [0, 1, 1]
    assert token_steps_from_text(["no", " steps"]) == [0, 0]
    with pytest.raises(DataError, match="delimiter"):
        token_steps_from_text(["a"], delimiter="")


def test_equal_spans():
    assert token_steps_equal(7, 3) == [0, 0, 0, 1, 1, 2, 2]
    assert token_steps_equal(2, 4) == [0, 2]
    with pytest.raises(DataError, match="at least one step"):
        token_steps_equal(3, 0)


def reference(step_rewards, groups, token_steps, eps=1e-4):
    out = [[0.0] * len(s) for s in token_steps]
    for g in groups:
        values = [r for i in g for r in step_rewards[i]]
        if len(values) < 2 or len(set(values)) == 1:
            continue
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        for i in g:
            norm = [(r - mean) / (std + eps) for r in step_rewards[i]]
            out[i] = [sum(norm[k:]) for k in token_steps[i]]
    return out


def test_process_advantages_match_a_plain_implementation():
    step_rewards = [[1.0, 0.0, 1.0], [0.5], [0.0, 0.0], [1.0, 1.0], [2.0], [3.0, 1.0]]
    token_steps = [[0, 0, 1, 2, 2], [0, 0], [0, 1, 1], [0, 1], [0], [0, 1, 1, 1]]
    groups = [[0, 1, 2], [3], [4, 5]]
    got = process_advantages(step_rewards, [torch.tensor(g) for g in groups], token_steps)
    want = reference(step_rewards, groups, token_steps)
    for g, w in zip(got, want):
        assert g.tolist() == pytest.approx(w, rel=1e-12, abs=1e-12)
    assert got[3].tolist() == [0.0, 0.0]  # a group whose step rewards are all equal


def test_a_token_beyond_the_step_rewards_names_the_sample():
    with pytest.raises(DataError, match="row-7 has 1 step rewards but a token in step 1"):
        process_advantages([[1.0], [0.0]], [torch.tensor([0, 1])], [[0, 1], [0]],
                           sample_ids=["row-7", "row-8"])


def test_token_advantages_feed_the_grpo_loss():
    from rlfoundry.algorithms.loss_functions import GRPOLossFn

    adv = process_advantages([[1.0, -1.0], [0.0, 2.0]], [torch.tensor([0, 1])],
                             [[0, 0, 1], [0, 1, 1]])
    batch = {"response_mask": torch.ones(2, 3, dtype=torch.bool),
             "advantages": torch.stack(adv)}
    logp = torch.full((2, 3), -1.0, dtype=torch.float64, requires_grad=True)
    loss, _ = GRPOLossFn({})(batch, {"logprobs": logp})
    loss.backward()
    torch.testing.assert_close(logp.grad, -torch.stack(adv) / 6, rtol=1e-12, atol=1e-15)
