"""The bad-input corpus: every malformed data file and config has a documented outcome.

Data (files under tests/assets/bad_inputs/): with ``data.on_bad_row: error`` (default) a
DataError naming the file and line (or row); with ``skip`` the row is left out and counted,
unless the whole file is unusable. Config: rejected when it loads, naming the key path.
docs/reliability.md lists the same cases.
"""

import logging
from pathlib import Path

import pytest

from rlfoundry.config import load_config
from rlfoundry.data import PreferenceDataset, PromptDataset
from rlfoundry.errors import ConfigError, DataError

ASSETS = Path(__file__).parent / "assets" / "bad_inputs"

# file: (dataset, error message with on_bad_row=error, rows kept with skip or None: always an error)
DATA_CASES = {
    "malformed_json.jsonl": ("pref", r"malformed_json.jsonl:2: invalid JSON", 2),
    "missing_key.jsonl": ("pref", r"missing_key.jsonl:2: missing key 'rejected'", 2),
    "misspelled_key.jsonl": ("pref", r"misspelled_key.jsonl:2: missing key 'chosen' \(did you mean 'choosen'\?\)", 2),
    "empty_string.jsonl": ("pref", r"empty_string.jsonl:2: 'chosen' is empty", 2),
    "whitespace_string.jsonl": ("pref", r"whitespace_string.jsonl:2: 'rejected' is empty", 2),
    "non_string.jsonl": ("pref", r"non_string.jsonl:2: 'chosen' must be a string or a list .* got int", 2),
    "null_field.jsonl": ("pref", r"null_field.jsonl:2: missing key 'rejected'", 2),
    "invalid_utf8.jsonl": ("pref", r"invalid_utf8.jsonl:2: invalid UTF-8 at byte \d+ of the line", 2),
    "not_an_object.jsonl": ("pref", r"not_an_object.jsonl:2: expected a JSON object per line, got an array", 2),
    "bad_message.jsonl": ("pref", r"bad_message.jsonl:2: prompt\[0\]: missing key 'content'", 2),
    "not_object_item.json": ("pref", r"not_object_item.json\[row 1\]: expected a JSON object, got a number", 2),
    "missing_cell.csv": ("pref", r"missing_cell.csv\[row 1\]: missing key 'rejected'", 1),
    "prompts_missing_prompt.jsonl": ("prompt", r"prompts_missing_prompt.jsonl:2: missing key 'prompt'", 2),
    "prompts_misspelled.jsonl": ("prompt", r"prompts_misspelled.jsonl:2: missing key 'prompt' \(did you mean 'promt'\?\)", 2),
    "prompts_empty.jsonl": ("prompt", r"prompts_empty.jsonl:2: 'prompt' is empty", 2),
    "prompts_non_string.jsonl": ("prompt", r"prompts_non_string.jsonl:2: 'prompt' must be a string .* got int", 2),
    # whole-file problems: errors whatever on_bad_row says
    "empty.jsonl": ("pref", r"empty.jsonl: no rows \(the file is empty\)", None),
    "blank_lines.jsonl": ("pref", r"blank_lines.jsonl: no rows \(the file is empty\)", None),
    "all_bad.jsonl": ("pref", r"all_bad.jsonl:1: invalid JSON", None),
    "corrupt.parquet": ("pref", r"corrupt.parquet: cannot read Parquet file", None),
    "unsupported.txt": ("pref", r"unsupported.txt: unsupported data file type '.txt'", None),
    "missing.jsonl": ("pref", r"data file not found: .*missing.jsonl", None),
}
CLASSES = {"pref": PreferenceDataset, "prompt": PromptDataset}


@pytest.mark.parametrize("name", list(DATA_CASES))
def test_bad_row_is_an_error_naming_file_and_line(name):
    kind, message, _ = DATA_CASES[name]
    with pytest.raises(DataError, match=message):
        CLASSES[kind].from_file(ASSETS / name)


@pytest.mark.parametrize("name", list(DATA_CASES))
def test_bad_row_is_skipped_counted_and_logged_when_configured(name, caplog):
    kind, _, kept = DATA_CASES[name]
    if kept is None:
        with pytest.raises(DataError):
            CLASSES[kind].from_file(ASSETS / name, on_bad_row="skip")
        return
    with caplog.at_level(logging.WARNING, logger="rlfoundry.data"):
        data = CLASSES[kind].from_file(ASSETS / name, on_bad_row="skip")
    assert len(data) == kept and len(data.report.skipped) == 1
    assert [e.index for e in data] == list(range(kept))  # indices stay dense
    assert f"skipped 1 of {kept + 1} rows as malformed" in caplog.text and name in caplog.text


def test_all_rows_bad_with_skip_is_an_error():
    with pytest.raises(DataError, match=r"all 2 rows were left out as malformed .* first: .*all_bad.jsonl:1"):
        PreferenceDataset.from_file(ASSETS / "all_bad.jsonl", on_bad_row="skip")


@pytest.mark.parametrize("policy, kept, match", [("keep", 3, "duplicate rows kept"),
                                                 ("drop", 2, "duplicate rows dropped")])
def test_duplicates_are_counted_and_logged(policy, kept, match, caplog):
    data = PreferenceDataset.from_file(ASSETS / "duplicates.jsonl", duplicates=policy)
    assert len(data) == kept and data.report.duplicates == [
        (f"{ASSETS / 'duplicates.jsonl'}:3", f"{ASSETS / 'duplicates.jsonl'}:1")]
    assert match in caplog.text


def test_duplicates_error_names_both_rows():
    with pytest.raises(DataError, match=r"duplicates.jsonl:3: duplicate of the row at .*duplicates.jsonl:1"):
        PreferenceDataset.from_file(ASSETS / "duplicates.jsonl", duplicates="error")


@pytest.mark.parametrize("policy, outcome", [
    ("error", r"too_long.jsonl:2: row too long: prompt \d+ \+ longest completion \d+"),
    ("drop", 2), ("truncate_prompt", 3)])
def test_rows_longer_than_max_length(tokenizer, policy, outcome):
    data = PreferenceDataset.from_file(ASSETS / "too_long.jsonl")
    if isinstance(outcome, str):
        with pytest.raises(DataError, match=outcome):
            data.tokenize(tokenizer, max_length=64, truncation=policy)
        return
    pairs = data.tokenize(tokenizer, max_length=64, truncation=policy)
    assert len(pairs) == outcome and all(p.length <= 64 for p in pairs)
    assert (data.num_dropped, data.num_truncated) == ((1, 0) if policy == "drop" else (0, 1))


def test_dpo_trains_on_dirty_data_with_skips_drops_and_a_precomputed_reference(tmp_path):
    """Skipped, duplicate and dropped rows must not shift the reference table's indices."""
    from rlfoundry.algorithms.dpo import DPOTrainer

    lines = []
    for name in ("too_long.jsonl", "malformed_json.jsonl", "duplicates.jsonl"):
        lines += (ASSETS / name).read_text().splitlines()
    data = tmp_path / "dirty.jsonl"
    data.write_text("\n".join(lines) + "\n")
    cfg = {"data": {"train": str(data), "max_length": 64, "truncation": "drop", "on_bad_row": "skip",
                    "duplicates": "drop"},
           "reference": {"precompute": True},
           "training": {"output_dir": str(tmp_path / "run"), "batch_size": 2, "max_steps": 2},
           "logging": {"tensorboard": False, "progress_bar": False}}
    t = DPOTrainer(config=cfg)
    metrics = t.train()
    assert len(t.train_pairs) == 2  # 9 lines: 1 malformed, 5 duplicates, 1 too long
    assert metrics["loss"] == metrics["loss"]  # finite, not NaN from a misaligned reference


# ---------------------------------------------------------------------------------- config

GRPO = {"algorithm": {"name": "grpo"}, "data": {"train": "builtin:addition"}}


def merged(base, extra):
    out = {k: dict(v) for k, v in base.items()}
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


# (config, the key path / message the error must contain)
CONFIG_CASES = {
    "wrong type": ({"training": {"batch_size": "eight"}}, r"training\.batch_size: Input should be a valid integer"),
    "wrong type nested": (merged(GRPO, {"algorithm": {"sampling": {"temperature": [1]}}}),
                          r"algorithm\.sampling\.temperature: Input should be a valid number"),
    "unknown key": ({"training": {"learnig_rate": 1e-4}}, r"training\.learnig_rate: unknown key \(did you mean 'learning_rate'\?\)"),
    "unknown nested key": (merged(GRPO, {"algorithm": {"sampling": {"temprature": 1.0}}}),
                           r"algorithm\.sampling\.temprature: unknown key \(did you mean 'temperature'\?\)"),
    "unknown section": ({"trainig": {}}, r"trainig: unknown key \(did you mean 'training'\?\)"),
    "zero batch": ({"training": {"batch_size": 0}}, r"training\.batch_size: Input should be greater than 0"),
    "negative micro batch": ({"training": {"micro_batch_size": -1}}, r"training\.micro_batch_size: Input should be greater than 0"),
    "zero steps": ({"training": {"max_steps": 0}}, r"training\.max_steps: Input should be greater than 0"),
    "negative learning rate": ({"training": {"learning_rate": -1e-5}}, r"training\.learning_rate: Input should be greater than 0"),
    "negative warmup": ({"training": {"warmup_steps": -1}}, r"training\.warmup_steps: Input should be greater than or equal to 0"),
    "zero keep_last": ({"training": {"keep_last": 0}}, r"training\.keep_last: Input should be greater than 0"),
    "zero save_every": ({"training": {"save_every": 0}}, r"training\.save_every: Input should be greater than 0"),
    "max_length 1": ({"data": {"max_length": 1}}, r"data\.max_length: Input should be greater than 1"),
    "zero max_new_tokens": (merged(GRPO, {"algorithm": {"sampling": {"max_new_tokens": 0}}}),
                            r"algorithm\.sampling\.max_new_tokens: Input should be greater than 0"),
    "zero reward timeout": (merged(GRPO, {"algorithm": {"reward_timeout": 0}}),
                            r"algorithm\.reward_timeout: Input should be greater than 0"),
    "group size 1": (merged(GRPO, {"algorithm": {"group_size": 1}}), r"algorithm\.group_size: Input should be greater than 1"),
    "num_generations 1": (merged(GRPO, {"algorithm": {"num_generations": 1}}),
                          r"algorithm\.num_generations: Input should be greater than 1"),
    "bad policy value": ({"data": {"on_bad_row": "ignore"}}, r"data\.on_bad_row: Input should be 'error' or 'skip'"),
    "bad nonfinite value": ({"training": {"on_nonfinite": "skip"}}, r"training\.on_nonfinite: Input should be 'raise' or 'skip_batch'"),
    "batch not a multiple of micro batch": ({"training": {"batch_size": 6, "micro_batch_size": 4}},
                                            r"training\.batch_size \(6\) must be a multiple of training\.micro_batch_size \(4\)"),
    "samples not divisible by micro batch": (merged(GRPO, {"algorithm": {"group_size": 4}, "training": {"batch_size": 3, "micro_batch_size": 5}}),
                                             r"training\.micro_batch_size \(5\) must divide the samples per step: training\.batch_size \(3\) x group size \(4\)"),
    "GRPO option on DPO": ({"algorithm": {"name": "dpo", "group_size": 4}}, r"algorithm\.group_size is a GRPO option"),
    "group size aliases disagree": (merged(GRPO, {"algorithm": {"group_size": 4, "num_generations": 8}}),
                                    r"algorithm\.group_size=4 and algorithm\.num_generations=8 disagree"),
    "aliases disagree": ({"algorithm": {"learning_rate": 1e-5}, "training": {"learning_rate": 1e-4}},
                         r"algorithm\.learning_rate=1e-05 and training\.learning_rate=0\.0001 disagree"),
    "prompt longer than sequence": ({"data": {"max_length": 64, "max_prompt_length": 64}},
                                    r"data\.max_prompt_length \(64\) must be less than data\.max_length \(64\)"),
    "precompute on GRPO": (merged(GRPO, {"reference": {"precompute": True}}),
                           r"reference\.precompute: .* algorithm 'grpo' is a grpo trainer"),
    "precompute without reference": ({"algorithm": {"loss": {"type": "simpo"}}, "reference": {"precompute": True}},
                                     r"reference\.precompute: loss 'simpo' is reference-free"),
    "greedy GRPO": (merged(GRPO, {"algorithm": {"sampling": {"temperature": 0}}}),
                    r"algorithm\.sampling\.temperature: 0 \(greedy\) .* zero reward variance"),
    "scale_rewards for rloo": (merged(GRPO, {"algorithm": {"advantage": {"estimator": "rloo", "scale_rewards": "batch"}}}),
                               r"algorithm\.advantage\.scale_rewards applies to the 'grpo' estimator only"),
    "no reward for GRPO": ({"algorithm": {"name": "grpo"}, "data": {"train": "prompts.jsonl"}},
                           r"algorithm\.rewards: GRPO needs at least one reward function"),
    "unknown reward": (merged(GRPO, {"algorithm": {"rewards": [{"name": "math_acuracy"}]}}),
                       r"algorithm\.rewards\[0\]: .*did you mean 'math_accuracy'"),
    "reward option typo": (merged(GRPO, {"algorithm": {"rewards": [{"name": "format", "args": {"patern": "x"}}]}}),
                           r"algorithm\.rewards\[0\]: reward 'format' has no option 'patern' \(did you mean 'pattern'\?\)"),
    "bad loss option": ({"algorithm": {"loss": {"type": "sigmoid", "beta": -1}}}, r"algorithm\.loss\.(beta|reference_policy_kl_penalty)"),
    "clip ratio out of range": (merged(GRPO, {"algorithm": {"loss": {"clip_ratio": 1.5}}}),
                                r"algorithm\.loss\.clip_ratio: must be in \[0, 1\)"),
    "log ratio clamp": (merged(GRPO, {"algorithm": {"loss": {"log_ratio_clamp": -1}}}),
                        r"algorithm\.loss\.log_ratio_clamp: must be > 0"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_is_rejected_at_load_with_the_key_path(case):
    cfg, message = CONFIG_CASES[case]
    with pytest.raises(ConfigError, match=message):
        load_config(cfg)


def test_grpo_micro_batches_split_samples_not_prompts():
    cfg = load_config(merged(GRPO, {"algorithm": {"group_size": 4},
                                    "training": {"batch_size": 3, "micro_batch_size": 6}}))
    assert cfg.training.micro_batch_size == 6  # 12 samples per step in 2 micro-batches
