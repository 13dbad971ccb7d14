"""Fast checks of the pieces data parallelism is built from (no process group needed)."""

import pytest
import torch

from rlfoundry.algorithms.grpo import prompt_seed
from rlfoundry.config import load_config
from rlfoundry.errors import ConfigError
from rlfoundry.models import build_model, build_tokenizer
from rlfoundry.rollout import HFSampler, Rollout, SamplingParams, concat_rollouts
from rlfoundry.training.distributed import init_distributed, shard_range
from rlfoundry.training.metrics import WeightedMean, _merge


@pytest.mark.parametrize("n,world", [(8, 2), (7, 2), (5, 3), (2, 4), (0, 3)])
def test_shards_are_contiguous_balanced_and_cover_everything(n, world):
    shares = [shard_range(n, r, world) for r in range(world)]
    assert [i for s in shares for i in s] == list(range(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    assert not torch.distributed.is_initialized()


def test_metric_merge_is_the_weighted_mean_of_the_whole_batch():
    # rank 0 saw micro-batches with weights 2/8 and 2/8, rank 1 one with 4/8
    r0, r1 = WeightedMean(), WeightedMean()
    r0.add({"loss": torch.tensor(1.0)}, 0.25)
    r0.add({"loss": torch.tensor(3.0)}, 0.25)
    r1.add({"loss": torch.tensor(5.0), "only_here": 2.0}, 0.5)
    parts = []
    for acc in (r0, r1):
        sums = {k: float(v) for k, v in acc._sums.items()}
        parts.append((sums, dict(acc._weights)))
    sums, weights = _merge(parts)
    assert sums["loss"] / weights["loss"] == pytest.approx((1 + 3) * 0.25 + 5 * 0.5)
    assert sums["only_here"] / weights["only_here"] == pytest.approx(2.0)


def test_global_batch_must_split_evenly_across_ranks(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    base = {"training": {"batch_size": 8, "micro_batch_size": 2}}
    assert load_config(base).training.batch_size == 8
    with pytest.raises(ConfigError, match=r"training\.batch_size \(6\).*WORLD_SIZE \(2\) x "
                                          r"training\.micro_batch_size \(2\) = 4"):
        load_config({"training": {"batch_size": 6, "micro_batch_size": 2}})
    grpo = {"algorithm": {"name": "grpo", "group_size": 4}, "data": {"train": "builtin:addition"}}
    with pytest.raises(ConfigError, match=r"training\.batch_size \(3 prompts per step\).*WORLD_SIZE"):
        load_config({**grpo, "training": {"batch_size": 3}})
    grpo["algorithm"]["group_size"] = 3  # 12 samples per step, 6 per rank
    with pytest.raises(ConfigError, match=r"micro_batch_size \(4\) must divide each rank's samples.*= 6"):
        load_config({**grpo, "training": {"batch_size": 4, "micro_batch_size": 4}})


def test_per_prompt_generators_make_samples_independent_of_the_split():
    """What lets N ranks sample exactly what one process samples (sampling.seed_per_prompt)."""
    tok = build_tokenizer()
    model = build_model("tiny", tok, seed=0).double()
    sampler = HFSampler(model, tok)
    prompts = [tok(t)["input_ids"] for t in ("3+4=", "12+1=", "7+", "20+22=")]
    params = SamplingParams(temperature=1.0, max_new_tokens=6)

    def gens(positions):
        return [torch.Generator().manual_seed(prompt_seed(0, 5, p)) for p in positions]

    whole = sampler.generate(prompts, 3, params, gens(range(4)))
    halves = [sampler.generate(prompts[:2], 3, params, gens(range(2))),
              sampler.generate(prompts[2:], 3, params, gens(range(2, 4)))]
    halves[1].prompt_index = [i + 2 for i in halves[1].prompt_index]
    joined = concat_rollouts(halves)
    assert joined.completion_ids == whole.completion_ids
    assert joined.prompt_index == whole.prompt_index
    assert torch.allclose(torch.tensor(sum(joined.sampling_logprobs, [])),
                          torch.tensor(sum(whole.sampling_logprobs, [])), rtol=0, atol=1e-12)
    # and the seeds differ per round and position, so prompts do not share noise
    assert len({prompt_seed(0, r, p) for r in range(3) for p in range(4)}) == 12


def test_concat_rollouts_keeps_rank_order_and_longest_time():
    a = Rollout([0, 0], [[1], [1]], [[2], [3]], [[-0.1], [-0.2]], [False, True], seconds=2.0)
    b = Rollout([1, 1], [[4], [4]], [[5], [6]], [[-0.3], [-0.4]], [True, False], seconds=3.0)
    out = concat_rollouts([a, b])
    assert out.prompt_index == [0, 0, 1, 1] and out.completion_ids == [[2], [3], [5], [6]]
    assert out.truncated == [False, True, True, False] and out.seconds == 3.0
