"""Hostile configs, data and text (issue 15, items 1, 9-14): each case is attacked from the
user's side and must end in a clear error that names the key, file and line, or be made
harmless, with a bounded message, never a raw traceback or a silent acceptance."""

from __future__ import annotations

import json
import logging
import re
import time
import types
import typing

import pytest
from pydantic import BaseModel

from rlfoundry.cli import console_logging, error_text, main
from rlfoundry.config import load_config
from rlfoundry.config.schema import RunConfig
from rlfoundry.data import PreferenceDataset, PromptDataset
from rlfoundry.data.lengths import grpo_prompt_limit, model_context
from rlfoundry.errors import ConfigError, DataError
from rlfoundry.report import cell
from rlfoundry.safe_text import escape_control
from rlfoundry.training.logger import MetricsLogger

MAX_MESSAGE = 4096  # an error message stays readable: a few KB at most
GRPO = ["algorithm.name=grpo", "data.train=builtin:addition"]
ESCAPE = "\x1b]0;owned\x07\x1b[2J\r\x08\x9b\u202e"  # title, clear screen, CR, BS, CSI, RLO


def rejected(overrides: list[str], match: str, source=None) -> str:
    with pytest.raises(ConfigError, match=match) as info:
        load_config(source, overrides)
    message = str(info.value)
    assert len(message) < MAX_MESSAGE
    return message


# ---------------------------------------------------------------- 1. numbers in the schema


def _leaf_fields(model: type[BaseModel], prefix: str = ""):
    """(key path, annotation) of every scalar field of non-list sections of the schema."""
    for name, field in model.model_fields.items():
        ann = field.annotation
        sub = next((c for c in (ann, *typing.get_args(ann))
                    if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if sub is not None:
            if typing.get_origin(ann) is not list:
                yield from _leaf_fields(sub, f"{prefix}{name}.")
            continue
        yield f"{prefix}{name}", ann


def _has(ann, kind) -> bool:
    return ann is kind or kind in typing.get_args(ann)


FLOAT_KEYS = [k for k, a in _leaf_fields(RunConfig)  # adam_betas (a pair) is tested on its own
              if _has(a, float) and not k.startswith("model.lora") and k != "training.adam_betas"]
INT_KEYS = [k for k, a in _leaf_fields(RunConfig) if _has(a, int) and not k.startswith("model.lora")]
BOOL_KEYS = [k for k, a in _leaf_fields(RunConfig) if _has(a, bool)]


def test_the_schema_walk_finds_the_optimizer_keys():
    for key in ("training.learning_rate", "training.weight_decay", "training.adam_eps",
                "training.max_grad_norm", "training.epochs", "algorithm.sampling.temperature"):
        assert key in FLOAT_KEYS
    assert {"training.seed", "training.max_steps", "training.batch_size"} <= set(INT_KEYS)
    assert "logging.progress_bar" in BOOL_KEYS


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_rejects_non_finite_values(key, value):
    rejected([*GRPO, f"{key}={value}"], rf"{re.escape(key)}: .*finite")


@pytest.mark.parametrize("value", [".inf", ".nan"])
@pytest.mark.parametrize("key", ["model.lora.alpha", "model.lora.dropout"])
def test_lora_floats_reject_non_finite_values(key, value):
    rejected([f"{key}={value}"], rf"{re.escape(key)}: .*finite")


@pytest.mark.parametrize("overrides", [
    ["algorithm.rewards=[{name: format, weight: .inf}]"],
    ["algorithm.group_strategy=adaptive", "algorithm.grouping.stages=[{until: .nan, strategy: random}]"],
], ids=["reward weight", "stage until"])
def test_floats_inside_list_sections_reject_non_finite_values(overrides):
    rejected([*GRPO, *overrides], "finite")


@pytest.mark.parametrize("betas", ["[0.9, 1.0]", "[1.5, 0.9]", "[-0.1, 0.9]", "[.nan, 0.9]", "[0.9, .inf]"])
def test_adam_betas_must_lie_in_zero_one(betas):
    rejected([f"training.adam_betas={betas}"], r"training\.adam_betas")


def test_adam_betas_from_yaml_list_still_load():
    assert load_config(None, ["training.adam_betas=[0.8, 0.95]"]).training.adam_betas == (0.8, 0.95)


@pytest.mark.parametrize("value", ["true", "1.5", "2.0", "'3'", ".inf", str(2**63), str(-(2**63) - 1)])
@pytest.mark.parametrize("key", INT_KEYS)
def test_every_int_key_rejects_bools_floats_strings_and_huge_values(key, value):
    rejected([*GRPO, f"{key}={value}"], rf"{re.escape(key)}")


@pytest.mark.parametrize("value", ["1", "0", "'yes'", "'true'"])
@pytest.mark.parametrize("key", BOOL_KEYS)
def test_every_bool_key_takes_only_true_or_false(key, value):
    rejected([*GRPO, f"{key}={value}"], rf"{re.escape(key)}: .*boolean")


@pytest.mark.parametrize("seed", [2**63, 2**64 + 5, -1])
def test_seed_outside_the_int64_range_is_a_config_error(seed):
    rejected([f"training.seed={seed}"], r"training\.seed")


def test_ordinary_numbers_still_load():
    cfg = load_config(None, ["training.max_steps=3", "training.epochs=2", "training.seed=0",
                             "training.learning_rate=1e-4", f"training.seed={2**63 - 1}"])
    assert (cfg.training.max_steps, cfg.training.epochs, cfg.training.seed) == (3, 2.0, 2**63 - 1)


# ---------------------------------------------------------------- 13. silently accepted values


@pytest.mark.parametrize("overrides, match", [
    (["algorithm.sampling.stop_strings=['']"], r"algorithm\.sampling\.stop_strings: .*empty"),
    (["algorithm.sampling.stop_strings=['ok', '']"], r"stop_strings\[1\] is empty"),
    (["algorithm.sampling.temperature=-1"], r"algorithm\.sampling\.temperature"),
    (["training.output_dir=''"], r"training\.output_dir: .*empty"),
    (["training.output_dir='   '"], r"training\.output_dir: .*empty"),
    (["training.max_steps=true"], r"training\.max_steps"),
], ids=["stop empty", "stop empty second", "temperature negative", "output_dir empty",
        "output_dir blank", "max_steps true"])
def test_values_once_accepted_silently(overrides, match):
    rejected([*GRPO, *overrides], match)


@pytest.mark.parametrize("schedule, match", [
    ("{type: linear, final_beta: -0.05}", r"reaches -0\.05.*at step"),
    ("{type: linear, initial_beta: -1}", r"reaches -1"),
    ("{type: warmup_cosine, final_beta: -0.5}", r"reaches -0\.5"),
    ("{type: linear, initial_beta: 1.0, final_beta: -1.0e-9}", r"reaches -1e-09"),
    ("{type: reward_gap, min_beta: -1, down: -1}", r"after \d+ updates"),
    ("{type: warmup_cosine, warmup_steps: ten}", r"fails with these options: ValueError"),
])
def test_beta_schedule_that_leaves_the_valid_range_is_rejected_at_load(schedule, match):
    rejected([f"algorithm.beta_schedule={schedule}"], r"algorithm\.beta_schedule: .*" + match)


@pytest.mark.parametrize("option", ["final_beta: .nan", "final_beta: .inf", "warmup_steps: .inf"])
def test_beta_schedule_with_non_finite_options_is_rejected_at_load(option):
    rejected([f"algorithm.beta_schedule={{type: warmup_cosine, {option}}}"],
             rf"algorithm\.beta_schedule\.{option.split(':')[0]}: (nan|inf) is not a finite number")


def test_lr_controller_that_turns_the_rate_negative_is_rejected():
    rejected(["training.lr_controller={type: performance, up: -2, down: -2, min_scale: -5}"],
             r"training\.lr_controller: the lr schedule reaches -")


def test_valid_beta_schedules_still_load():
    load_config(None, ["algorithm.beta_schedule={type: linear, final_beta: 0.0}"])
    load_config(None, ["algorithm.beta_schedule={type: reward_gap}"])
    load_config(None, ["algorithm.beta_schedule={type: warmup_cosine, warmup_steps: 5}"])


# ---------------------------------------------------------------- 9/12/13. YAML


def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines)


def test_alias_bomb_config_is_rejected_fast_with_a_short_message(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("x_anchors:\n" + "\n".join("  " + line for line in _bomb().splitlines())
                    + "\ntraining: {learning_rate: *a8}\n")
    assert path.stat().st_size < 1200
    start = time.perf_counter()
    message = rejected([], rf"{path}:1: aliases .* expand this document", source=path)
    assert time.perf_counter() - start < 5
    assert re.search(r"to [\d,]{11,} values and [\d,]+ characters from \d\d values", message)


def test_alias_bomb_inside_reward_args_is_rejected(tmp_path):
    path = tmp_path / "grpo.yaml"
    body = "\n".join("      " + line for line in _bomb(7).splitlines())
    path.write_text("algorithm:\n  name: grpo\n  rewards:\n  - name: format\n    args:\n"
                    f"{body}\ndata: {{train: 'builtin:addition'}}\n")
    rejected([], "aliases", source=path)


def test_alias_bomb_in_an_override_value_is_rejected():
    bomb = "{" + ", ".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 8))
    rejected([f"data.builtin_options={{a0: &a0 [1,2,3,4,5,6,7,8,9], {bomb[1:]}}}"],
             r"override 'data\.builtin_options'.*aliases")


def test_recursive_alias_is_rejected(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("data:\n  builtin_options: &a\n    self: *a\n")
    rejected([], rf"{path}:2: .*contains it", source=path)


def test_modest_aliases_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("data:\n  builtin_options: &opts {max_value: 9}\n"
                    "algorithm:\n  loss: {type: dpo}\n  beta_schedule: {type: linear, final_beta: 0.05}\n"
                    "training: &t\n  learning_rate: 1.0e-4\nreference: {}\n")
    cfg = load_config(path)
    assert cfg.training.learning_rate == 1e-4
    merged = tmp_path / "merged.yaml"
    merged.write_text("training:\n  <<: {learning_rate: 2.0e-4, batch_size: 4}\n  batch_size: 8\n")
    cfg = load_config(merged)
    assert (cfg.training.learning_rate, cfg.training.batch_size) == (2e-4, 8)


@pytest.mark.parametrize("text, line, first", [
    ("training:\n  learning_rate: 1.0\n  learning_rate: 1.0e-5\n", 3, 2),
    ("training: {}\nmodel: {}\ntraining: {max_steps: 2}\n", 3, 1),
    ("algorithm:\n  loss:\n    type: ipo\n    type: dpo\n", 4, 3),
], ids=["nested", "top level", "free-form loss"])
def test_duplicate_yaml_keys_are_rejected_with_file_and_line(tmp_path, text, line, first):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    rejected([], rf"{path}:{line}: key '\w+' is written twice .*first at line {first}", source=path)


def test_duplicate_key_inside_an_override_value_names_the_override():
    rejected(["algorithm.loss={type: ipo, type: dpo}"], r"override 'algorithm\.loss'.*written twice")


def test_non_utf8_config_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("training:\n  output_dir: runs/caf\u00e9\n".encode("latin-1"))
    rejected([], rf"{path}:2: not UTF-8 text", source=path)


def test_deeply_nested_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("data:\n  builtin_options:\n    x: " + "[" * 50_000 + "]" * 50_000 + "\n")
    rejected([], rf"{path}", source=path)


@pytest.mark.parametrize("override", ["training.learning_rate=[1, 2", "algorithm.loss={type: ipo",
                                      "training.output_dir='unclosed", "data.train=@x"])
def test_yaml_syntax_error_in_an_override_names_the_override(override):
    key = override.split("=")[0].replace(".", r"\.")
    rejected([override], rf"override '{key}': not valid YAML")


@pytest.mark.parametrize("overrides", [
    ["training.learning_rate=[" + ", ".join(["1"] * 20_000) + "]"],  # 60 KB: 15x MAX_MESSAGE
    [f"training.key{i}=1" for i in range(2000)],
    ["training.output_dir={a: " + "x" * 100_000 + "}"],
    ["training.lr_scheduler='" + "cosine" * 50_000 + "'"],
], ids=["huge list", "many unknown keys", "huge string", "huge literal"])
def test_error_messages_stay_short(overrides):
    rejected(overrides, "invalid config")


def test_error_messages_escape_control_characters_in_values():
    message = rejected([], "invalid config", source={"training": {"output_dir": ["x" * 10**5 + ESCAPE],
                                                                  "bad\x1b[2Jkey": 1}})
    assert "\x1b" not in message and "\u202e" not in message


# ---------------------------------------------------------------- 14. the command line


def test_config_path_with_equals_sign_is_read_as_the_config(tmp_path, capsys):
    path = tmp_path / "lr=1e-3.yaml"
    path.write_text("training:\n  learning_rate: .inf\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "training.learning_rate: Input should be a finite number" in err


@pytest.mark.parametrize("arg", ["missing/run=1.yaml", "=5", "training..lr=1", "a b=1", "x\x1b[2J=1"])
def test_an_override_whose_key_is_not_a_key_path_is_a_clear_error(arg, capsys):
    assert main(["train", arg]) == 2
    err = capsys.readouterr().err
    assert "is not of the form key.path=value" in err


# ---------------------------------------------------------------- 11. terminal injection


def test_escape_control_keeps_text_and_newlines_and_escapes_the_rest():
    assert escape_control("ok\ttab\nnext") == "ok\ttab\nnext"
    out = escape_control(ESCAPE)
    assert all(ch not in out for ch in "\x1b\x07\r\x08\x9b\u202e")
    assert "\\x1b" in out and "\\u202e" in out
    assert escape_control("a\nb", keep_newlines=False) == "a\\x0ab"


def test_logger_write_escapes_control_characters(tmp_path, capsys):
    from rlfoundry.config.schema import LoggingConfig

    log = MetricsLogger(tmp_path, LoggingConfig(backends=["jsonl"], progress_bar=False), 1)
    log.write(f"step 1: reward 'r' on p0/s0: raised ValueError: {ESCAPE}")
    log.close()
    out = capsys.readouterr()
    text = out.out + out.err
    assert "step 1: reward 'r'" in text and "\\x1b]0;owned" in text
    assert all(ch not in text for ch in "\x1b\x07\r\x08\x9b\u202e")


def test_cli_errors_and_warnings_are_escaped_and_bounded(capsys):
    console_logging()
    logging.getLogger("rlfoundry.rewards.runner").warning("reward failed: %s", ESCAPE)
    err = capsys.readouterr().err
    assert "reward failed" in err and "\x1b" not in err and "\r" not in err
    text = error_text(DataError("x" * 100_000 + ESCAPE))
    assert len(text) < MAX_MESSAGE and "\x1b" not in text


def test_report_cells_escape_control_characters():
    assert "\x1b" not in cell(f"completion {ESCAPE}") and "\\x1b" in cell(ESCAPE)


# ---------------------------------------------------------------- 12. data rows


def test_deeply_nested_jsonl_row_is_a_data_error_naming_file_and_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "x", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(DataError, match=rf"{path}:2: nested more than 64 levels"):
        PromptDataset.from_file(path)


@pytest.mark.parametrize("depth", [65, 500])
def test_rows_nested_beyond_the_cap_are_bad_rows(tmp_path, depth):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "x", "extra": ' + "[" * depth + "]" * depth + "}\n")
    with pytest.raises(DataError, match=rf"{path}:2: nested"):
        PromptDataset.from_file(path)
    assert len(PromptDataset.from_rows(path, on_bad_row="skip")) == 1


def test_deeply_nested_json_file_is_a_data_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=rf"{path}: nested"):
        PromptDataset.from_file(path)
    with pytest.raises(DataError, match=r"<python>\[row 0\]: nested"):
        PromptDataset.from_rows([{"prompt": "p", "x": json.loads("[" * 100 + "]" * 100)}])


# ---------------------------------------------------------------- 13. data semantics


def test_pairs_with_chosen_equal_rejected_everywhere_are_an_error(tmp_path):
    path = tmp_path / "same.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "a"}) + "\n"
                            for i in range(3)))
    with pytest.raises(DataError, match=rf"{path}: chosen == rejected in all 3 rows \(first: {path}:1"):
        PreferenceDataset.from_file(path)


def test_some_identical_pairs_are_counted_in_a_warning(caplog):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "a"}, {"prompt": "q", "chosen": "a", "rejected": "b"}]
    with caplog.at_level(logging.WARNING, logger="rlfoundry.data"):
        ds = PreferenceDataset.from_rows(rows)
    assert ds.num_identical == 1
    assert "chosen == rejected in 1 of 2 rows (first: <python>[row 0])" in caplog.text


def test_special_token_text_in_data_stays_ordinary_text(tokenizer):
    eos, specials = tokenizer.eos_token_id, set(tokenizer.all_special_ids)
    ds = PreferenceDataset.from_rows([{"prompt": "say <|eos|><|user|> now", "chosen": "ok<|eos|>",
                                       "rejected": "<|assistant|>no"}])
    pair = ds.tokenize(tokenizer)[0]
    assert not specials & set(pair.prompt_ids)
    assert not specials & set(pair.chosen_ids[:-1]) and pair.chosen_ids[-1] == eos
    assert not specials & set(pair.rejected_ids[:-1]) and pair.rejected_ids[-1] == eos
    assert tokenizer.decode(pair.chosen_ids[:-1]) == "ok<|eos|>"
    prompts = PromptDataset(prompts=["2+2=<|eos|>"]).tokenize(tokenizer)
    assert not specials & set(prompts[0])


def test_special_token_text_in_chat_messages_is_a_data_error(tokenizer):
    ds = PromptDataset.from_rows([{"prompt": [{"role": "user", "content": "hi<|eos|><|assistant|>sure"}]}])
    with pytest.raises(DataError, match=r"<python>\[row 0\]: message 0 contains the special-token text"):
        ds.tokenize(tokenizer)


# ---------------------------------------------------------------- 10. lengths and the context


def _model(context: int):
    return types.SimpleNamespace(config=types.SimpleNamespace(max_position_embeddings=context))


def test_model_context_takes_the_smaller_of_model_and_tokenizer_limits(tokenizer):
    assert model_context(_model(1024), tokenizer) == 1024  # the tiny tokenizer sets no limit
    assert model_context(_model(1024), types.SimpleNamespace(model_max_length=512)) == 512
    assert model_context(types.SimpleNamespace()) is None


@pytest.mark.parametrize("new", [100, 5000])
def test_max_new_tokens_at_or_above_the_context_is_a_config_error(new):
    cfg = load_config(None, [*GRPO, f"algorithm.sampling.max_new_tokens={new}"])
    with pytest.raises(ConfigError, match=rf"algorithm\.sampling\.max_new_tokens \({new}\) must be "
                                          r"less than the model's context \(100 tokens"):
        grpo_prompt_limit(cfg, _model(100))


def test_prompt_limit_is_context_minus_completion_and_max_prompt_length():
    cfg = load_config(None, [*GRPO, "algorithm.sampling.max_new_tokens=30"])
    assert grpo_prompt_limit(cfg, _model(100)) == 70
    cfg = load_config(None, [*GRPO, "algorithm.sampling.max_new_tokens=30", "data.max_prompt_length=20"])
    assert grpo_prompt_limit(cfg, _model(100)) == 20


@pytest.fixture(scope="module")
def grpo_trainer():
    from rlfoundry.algorithms.grpo import GRPOTrainer

    return GRPOTrainer(config=load_config(None, [*GRPO, "logging.backends=[jsonl]"]))


def _long_prompts(tmp_path):
    path = tmp_path / "long.jsonl"
    rows = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "9" * 200_000 + "+1=", "answer": "x"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("policy", ["truncate_prompt", "drop", "error"])
def test_grpo_prompts_longer_than_the_context_follow_data_truncation(grpo_trainer, tmp_path, policy):
    path = _long_prompts(tmp_path)
    grpo_trainer.config.data.truncation = policy
    dataset = PromptDataset.from_file(path)
    room = 1024 - grpo_trainer.config.algorithm.sampling.max_new_tokens
    if policy == "error":
        with pytest.raises(DataError, match=rf"{path}:2: the prompt has 200\d+ tokens, more than the "
                                            rf"limit of {room} \(the model's context 1024 minus"):
            grpo_trainer.setup_data(dataset, dataset)
        return
    n = grpo_trainer.setup_data(dataset, dataset)
    assert max(len(ids) for ids in grpo_trainer.train_prompts) <= room
    if policy == "drop":
        assert n == 1 and len(grpo_trainer.train_set) == 1 and grpo_trainer.train_set[0].prompt == "1+1="
    else:
        assert n == 2 and len(grpo_trainer.train_prompts[1]) == room


def test_grpo_max_new_tokens_above_the_model_context_fails_at_setup(grpo_trainer, tmp_path):
    grpo_trainer.config.algorithm.sampling.max_new_tokens = 4096
    try:
        with pytest.raises(ConfigError, match=r"max_new_tokens \(4096\) must be less than the model's "
                                              r"context \(1024 tokens: max_position_embeddings=1024\)"):
            grpo_trainer.setup_data(PromptDataset(prompts=["1+1="], answer=["2"]))
    finally:
        grpo_trainer.config.algorithm.sampling.max_new_tokens = 64


def test_dpo_max_length_above_the_model_context_fails_at_setup():
    from rlfoundry.algorithms.dpo import DPOTrainer

    trainer = DPOTrainer(config=load_config(None, ["data.max_length=4096", "data.train_size=8",
                                                   "logging.backends=[jsonl]"]))
    with pytest.raises(ConfigError, match=r"data\.max_length \(4096\) is longer than the model's "
                                          r"context \(1024 tokens"):
        trainer.setup_data()


def test_one_long_string_aliased_many_times_is_rejected(tmp_path):
    path = tmp_path / "strings.yaml"
    path.write_text("data:\n  builtin_options:\n    s: &s '" + "x" * 100_000 + "'\n    l: ["
                    + ", ".join(["*s"] * 200) + "]\n")
    rejected([], rf"{path}:1: aliases .* 20,\d{{3}},\d{{3}} characters", source=path)


@pytest.mark.parametrize("schedule", ["training.lr_controller={type: performance, up: .inf}",
                                      "algorithm.beta_schedule={type: reward_gap, max_beta: .inf}"])
def test_non_finite_schedule_options_are_rejected(schedule):
    rejected([schedule], r"(lr_controller\.up|beta_schedule\.max_beta): inf is not a finite number")


def test_sft_max_length_above_the_model_context_fails_at_setup():
    from rlfoundry.algorithms.sft import SFTTrainer

    trainer = SFTTrainer(config=load_config(None, ["algorithm.name=sft", "data.train=builtin:addition",
                                                   "data.max_length=2048", "logging.backends=[jsonl]"]))
    with pytest.raises(ConfigError, match=r"data\.max_length \(2048\) is longer than the model's context"):
        trainer.setup_data()


@pytest.mark.parametrize("override", [
    "algorithm.name=" + "x" * 10**6,
    "algorithm.loss.type=" + "x" * 10**6,
    "algorithm.beta_schedule={type: " + "x" * 10**6 + "}",
    "algorithm.rewards=[{name: " + "x" * 10**6 + "}]",
], ids=["trainer", "loss", "schedule", "reward"])
def test_registry_errors_quoting_huge_names_stay_short(override):
    rejected([*GRPO, override] if "rewards" in override else [override], r"unknown|no (trainer|loss|reward)|x{100}")


class _NoSplitTokenizer:
    """A tokenizer that ignores split_special_tokens (as some custom ones do)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, texts, add_special_tokens=True, split_special_tokens=False):
        return self.inner(texts, add_special_tokens=add_special_tokens)


def test_a_tokenizer_that_cannot_split_special_text_gives_a_data_error(tokenizer):
    ds = PromptDataset.from_rows([{"prompt": "fine"}, {"prompt": "stop<|eos|>here"}])
    with pytest.raises(DataError, match=r"<python>\[row 1\]: the text holds special-token text"):
        ds.tokenize(_NoSplitTokenizer(tokenizer))
    assert PromptDataset(prompts=["fine"]).tokenize(_NoSplitTokenizer(tokenizer))
