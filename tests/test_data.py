"""Behaviour of rlfoundry.data: reading rows, validation, tokenization, truncation, collation."""

from __future__ import annotations

import copy
import json
import string
from pathlib import Path

import pytest
import torch

from rlfoundry.data import (
    PreferenceDataset,
    PromptDataset,
    TokenizedPair,
    builtin_dataset,
    collate_preference,
    collate_preference_packed,
    load_rows,
    make_addition_prompts,
    make_addition_sft,
    make_sort_preferences,
    packed_attention_mask,
    read_rows,
    tokenize_prompt,
)
from rlfoundry.errors import ConfigError, DataError
from rlfoundry.models.tiny import build_tokenizer

ROWS = [
    {"prompt": "sort: q d m a\n", "chosen": "a d m q", "rejected": "q d m a", "score": 0.5, "n": 1},
    {"prompt": "2+2=", "chosen": "4", "rejected": "5", "score": 1.0, "n": 2},
    {"prompt": "say \"hi\", ok?\n", "chosen": "hi, é", "rejected": "no", "score": 0.25, "n": 3},
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def write(path: Path, rows: list[dict]) -> Path:
    """Write rows in the format the suffix names."""
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif suffix == ".csv":
        import pandas as pd

        pd.DataFrame(rows).to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------------- io


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_every_format_loads_the_same_rows(tmp_path, suffix):
    path = write(tmp_path / f"data{suffix}", ROWS)
    rows = read_rows(path)
    assert [r.data for r in rows] == ROWS
    if suffix == ".jsonl":
        assert [r.location for r in rows] == [f"{path}:{i}" for i in (1, 2, 3)]
    else:
        assert [r.location for r in rows] == [f"{path}[row {i}]" for i in range(3)]
    ds = PreferenceDataset.from_file(path)
    assert [(e.prompt, e.chosen, e.rejected, e.extras) for e in ds] == [
        (r["prompt"], r["chosen"], r["rejected"], {"score": r["score"], "n": r["n"]}) for r in ROWS
    ]


def test_json_data_object_and_blank_jsonl_lines(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": ROWS}), encoding="utf-8")
    assert [r.data for r in read_rows(path)] == ROWS
    path = tmp_path / "gaps.jsonl"
    path.write_text("\n" + json.dumps(ROWS[0]) + "\n\n  \n" + json.dumps(ROWS[1]) + "\n")
    assert [r.location for r in read_rows(path)] == [f"{path}:2", f"{path}:5"]


def test_csv_keeps_numeric_looking_text_as_text(tmp_path):
    path = write(tmp_path / "nums.csv", [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}] * 2)
    ex = PreferenceDataset.from_file(path)[0]
    assert (ex.chosen, ex.rejected) == ("2", "3")


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + '\n{"prompt": "x",\n')
    with pytest.raises(DataError, match=rf"{path}:3: invalid JSON: "):
        read_rows(path)


def test_non_object_row_names_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=rf"{path}:2: expected a JSON object.*an array"):
        read_rows(path)
    path = tmp_path / "data.json"
    path.write_text(json.dumps([ROWS[0], "text"]))
    with pytest.raises(DataError, match=r"data.json\[row 1\]: expected a JSON object"):
        read_rows(path)


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: invalid UTF-8"):
        read_rows(path)
    path = tmp_path / "data.csv"
    path.write_bytes(b"prompt,chosen,rejected\na,b,c\nd,\xff,f\n")
    with pytest.raises(DataError, match=rf"{path}:3: invalid UTF-8"):
        read_rows(path)


@pytest.mark.parametrize("name,content", [
    ("empty.jsonl", ""), ("blank.jsonl", "\n \n"), ("empty.json", "[]"), ("empty.csv", ""),
    ("header.csv", "prompt,chosen,rejected\n"),
])
def test_empty_file_is_an_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match="no rows"):
        read_rows(path)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="not found: .*nope.jsonl"):
        PreferenceDataset.from_file(tmp_path / "nope.jsonl")
    path = tmp_path / "data.txt"
    path.write_text("x")
    with pytest.raises(DataError, match="unsupported data file type '.txt'"):
        read_rows(path)


def test_load_rows_from_python_and_dataset_sources():
    import datasets

    rows, locs = load_rows(ROWS)
    assert rows == ROWS and locs == ["<python>[row 0]", "<python>[row 1]", "<python>[row 2]"]
    hf = datasets.Dataset.from_list(ROWS)
    rows, locs = load_rows(hf)
    assert rows == ROWS and locs[2] == "<dataset>[row 2]"
    ds = PreferenceDataset.from_rows(hf)
    assert len(ds) == 3 and ds[2].chosen == "hi, é" and ds[2].extras == {"score": 0.25, "n": 3}
    with pytest.raises(DataError, match="pass one split"):
        load_rows(datasets.DatasetDict({"train": hf}))
    with pytest.raises(DataError, match=r"<python>\[row 1\]: expected a dict"):
        load_rows([ROWS[0], "oops"])


# ----------------------------------------------------------------------------- validation


def test_missing_key_suggests_a_close_one(tmp_path):
    rows = [ROWS[0], {"prompt": "p", "choosen": "a", "rejected": "b"}]
    path = write(tmp_path / "data.jsonl", rows)
    with pytest.raises(DataError) as info:
        PreferenceDataset.from_file(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:2: missing key 'chosen'")
    assert "did you mean 'choosen'?" in msg


def test_bad_content_names_the_row():
    with pytest.raises(DataError, match=r"<python>\[row 1\]: 'chosen' must be a string"):
        PreferenceDataset.from_rows([ROWS[0], {"prompt": "p", "chosen": 5, "rejected": "b"}])
    with pytest.raises(DataError, match=r"\[row 0\]: 'rejected' is empty"):
        PreferenceDataset.from_rows([{"prompt": "p", "chosen": "a", "rejected": ""}])
    with pytest.raises(DataError, match=r"prompt\[0\]: missing key 'content'"):
        PreferenceDataset.from_rows([{"prompt": [{"role": "user", "text": "hi"}],
                                      "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"prompt\[0\]\['content'\] must be a string"):
        PreferenceDataset.from_rows([{"prompt": [{"role": "user", "content": 3}],
                                      "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"\[row 1\]: missing key 'prompt'"):
        PreferenceDataset.from_rows([ROWS[0], {"chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="column 'index' has the name of a batch key"):
        PreferenceDataset.from_rows([{**ROWS[0], "index": 3}])


def test_identical_pairs_are_allowed_and_counted():
    ds = PreferenceDataset.from_rows([{"prompt": "p", "chosen": "a", "rejected": "a"}, ROWS[1]])
    assert len(ds) == 2 and ds.num_identical == 1


def test_seed_api_lists_of_strings():
    chosen_responses = ["The answer is 42.", "Paris is the capital."]
    rejected_responses = ["The answer is 41.", "Paris is a city."]
    ds = PreferenceDataset(chosen_data=chosen_responses, rejected_data=rejected_responses,
                           math_correctness=[1.0, 0.0])
    assert len(ds) == 2 and ds.implicit_prompt
    assert (ds[0].prompt, ds[0].chosen, ds[0].rejected) == ("The answer is ", "42.", "41.")
    assert (ds[1].prompt, ds[1].chosen, ds[1].rejected) == ("Paris is ", "the capital.", "a city.")
    assert ds[1].extras == {"math_correctness": 0.0}
    explicit = PreferenceDataset(["a", "b"], ["c", "d"], prompts=["p1", "p2"])
    assert explicit[1].prompt == "p2" and not explicit.implicit_prompt
    with pytest.raises(DataError, match="same length; got prompt=1, chosen=2, rejected=2"):
        PreferenceDataset(chosen_data=["a", "b"], rejected_data=["c", "d"], prompts=["p"])
    with pytest.raises(DataError, match="same length"):
        PreferenceDataset(chosen_data=["a", "b"], rejected_data=["c", "d"], score=[1.0])


def test_implicit_prompt_split_rules():
    split = PreferenceDataset(
        chosen_data=["sort: b a\na b", "abc", "one two", "x y z"],
        rejected_data=["sort: b a\nb a", "abd", "one two three", "x y z"],
    )
    got = [(e.prompt, e.chosen, e.rejected) for e in split]
    assert got == [
        ("sort: b a\n", "a b", "b a"),  # cut back to the whitespace boundary
        ("ab", "c", "d"),  # no whitespace: the whole common prefix
        ("one ", "two", "two three"),  # each completion keeps at least one character
        ("x y ", "z", "z"),  # identical pair
    ]
    user = {"role": "user", "content": "hi"}
    conv = PreferenceDataset(
        chosen_data=[[user, {"role": "assistant", "content": "hello"}]],
        rejected_data=[[user, {"role": "assistant", "content": "go away"}]],
    )
    assert conv[0].prompt == [user]
    assert conv[0].chosen == [{"role": "assistant", "content": "hello"}]


def test_implicit_prompt_warns_about_a_misspelled_prompt_column():
    with pytest.warns(UserWarning, match="did you mean 'promt'"):
        ds = PreferenceDataset.from_rows([{"promt": "p", "chosen": "p a", "rejected": "p b"}])
    assert ds[0].extras == {"promt": "p"}


# ----------------------------------------------------------------------------- tokenization


def test_standard_rows_tokenize_with_eos(tok):
    pair = PreferenceDataset.from_rows([ROWS[1]]).tokenize(tok)[0]
    assert tok.decode(pair.prompt_ids) == "2+2="
    assert pair.chosen_ids == tok("4", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.decode(pair.rejected_ids) == "5<|eos|>"
    already = PreferenceDataset.from_rows([{"prompt": "q", "chosen": "a<|eos|>", "rejected": "b"}])
    assert already.tokenize(tok)[0].chosen_ids.count(tok.eos_token_id) == 1


def test_conversational_rows_split_at_the_assistant_header(tok):
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi?"}]
    ds = PreferenceDataset.from_rows([
        {"prompt": prompt, "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": "Go away.", "score": 2},
    ])
    assert ds[0].rejected == [{"role": "assistant", "content": "Go away."}]
    pair = ds.tokenize(tok)[0]
    assert tok.decode(pair.prompt_ids) == "<|system|>be brief<|eos|><|user|>hi?<|eos|><|assistant|>"
    assert tok.decode(pair.chosen_ids) == "Hello!<|eos|>"
    assert tok.decode(pair.rejected_ids) == "Go away.<|eos|>"
    assert pair.extras == {"score": 2}


def test_template_that_does_not_prefix_the_prompt_is_an_error(tok):
    odd = copy.deepcopy(tok)
    odd.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    ds = PreferenceDataset.from_rows([{"prompt": [{"role": "user", "content": "x"}],
                                       "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"<python>\[row 0\]: the chat template does not render"):
        ds.tokenize(odd)


def long_row(prompt_len: int, chosen_len: int, rejected_len: int = 3) -> dict:
    letters = (string.ascii_letters * 4)[:prompt_len]
    return {"prompt": letters, "chosen": "c" * chosen_len, "rejected": "r" * rejected_len}


def test_truncate_prompt_keeps_the_prompt_end(tok):
    ds = PreferenceDataset.from_rows([long_row(20, 5), long_row(4, 2)])
    pairs = ds.tokenize(tok, max_length=16)
    # 20 + 6 > 16: the prompt loses its start, down to 16 - 6 = 10 tokens.
    assert tok.decode(pairs[0].prompt_ids) == string.ascii_letters[10:20]
    assert len(pairs[0].chosen_ids) == 6 and pairs[0].length == 16 and pairs[0].truncated
    assert not pairs[1].truncated and len(pairs[1].prompt_ids) == 4
    assert ds.num_truncated == 1 and ds.num_dropped == 0
    # max_prompt_length caps every prompt, keeping the end.
    pairs = ds.tokenize(tok, max_length=16, max_prompt_length=3)
    assert tok.decode(pairs[0].prompt_ids) == "rst" and tok.decode(pairs[1].prompt_ids) == "bcd"


def test_truncate_prompt_then_cuts_completions(tok):
    ds = PreferenceDataset.from_rows([long_row(20, 30)])
    pair = ds.tokenize(tok, max_length=16)[0]
    # Prompt floor is max_length // 2 = 8; completions are cut at the end to the other 8.
    assert len(pair.prompt_ids) == 8 and tok.decode(pair.prompt_ids) == string.ascii_letters[12:20]
    assert pair.chosen_ids == [tok.convert_tokens_to_ids("c")] * 8
    assert len(pair.rejected_ids) == 4  # "rrr" + eos already fits
    pair = ds.tokenize(tok, max_length=16, max_prompt_length=5)[0]
    assert len(pair.prompt_ids) == 5 and len(pair.chosen_ids) == 11


def test_drop_policy_counts_and_locates(tok):
    ds = PreferenceDataset.from_rows([long_row(4, 2), long_row(20, 5), long_row(3, 3)])
    pairs = ds.tokenize(tok, max_length=16, truncation="drop")
    assert [p.index for p in pairs] == [0, 2]
    assert ds.num_dropped == 1 and ds.dropped_locations == ["<python>[row 1]"]
    pairs = ds.tokenize(tok, max_length=16, max_prompt_length=3, truncation="drop")
    assert [p.index for p in pairs] == [2] and ds.num_dropped == 2
    with pytest.raises(DataError, match="all 3 rows .* dropped"):
        ds.tokenize(tok, max_length=4, truncation="drop")


def test_error_policy_names_row_and_lengths(tok):
    ds = PreferenceDataset.from_rows([long_row(4, 2), long_row(20, 5)])
    with pytest.raises(DataError, match=r"<python>\[row 1\]: row too long: prompt 20 \+ longest "
                                        r"completion 6 = 26 tokens, max_length is 16"):
        ds.tokenize(tok, max_length=16, truncation="error")
    assert len(ds.tokenize(tok, max_length=64, truncation="error")) == 2


def test_bad_truncation_settings(tok):
    ds = PreferenceDataset.from_rows([ROWS[0]])
    with pytest.raises(ConfigError, match="did you mean 'drop'"):
        ds.tokenize(tok, truncation="dorp")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_prompt_length"):
        ds.tokenize(tok, max_length=8, max_prompt_length=8)


# ----------------------------------------------------------------------------- collation


def test_collate_layout_masks_and_padding(tok):
    ds = PreferenceDataset.from_rows(ROWS)
    pairs = ds.tokenize(tok)
    batch = collate_preference(pairs, pad_id=tok.pad_token_id)
    b = len(pairs)
    lengths = [len(p.prompt_ids) + len(p.chosen_ids) for p in pairs]
    lengths += [len(p.prompt_ids) + len(p.rejected_ids) for p in pairs]
    assert batch["input_ids"].shape == (2 * b, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    # Chosen rows first, then rejected, each prompt followed by its completion.
    for i, p in enumerate(pairs):
        n = len(p.prompt_ids) + len(p.chosen_ids)
        assert batch["input_ids"][i, :n].tolist() == p.prompt_ids + p.chosen_ids
        n = len(p.prompt_ids) + len(p.rejected_ids)
        assert batch["input_ids"][b + i, :n].tolist() == p.prompt_ids + p.rejected_ids
        assert (batch["input_ids"][b + i, n:] == tok.pad_token_id).all()
        assert batch["loss_mask"][i, : len(p.prompt_ids)].sum() == 0
    counts = batch["loss_mask"].sum(1)
    assert torch.equal(counts[:b], batch["chosen_token_counts"])
    assert torch.equal(counts[b:], batch["rejected_token_counts"])
    assert batch["chosen_token_counts"].tolist() == [len(p.chosen_ids) for p in pairs]
    assert (batch["loss_mask"] <= batch["attention_mask"]).all()
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [0, 1, 2]
    padded = collate_preference(pairs, pad_id=tok.pad_token_id, pad_to_multiple_of=8)
    assert padded["input_ids"].shape[1] % 8 == 0
    assert torch.equal(padded["loss_mask"].sum(1), counts)


def test_packed_collate_layout_positions_and_scored_tokens(tok):
    pairs = PreferenceDataset.from_rows(ROWS).tokenize(tok)
    pairs.append(TokenizedPair([], [7, 8], [9], {}, "empty prompt", 3))
    batch = collate_preference_packed(pairs, pad_id=tok.pad_token_id)
    b, t = batch["input_ids"].shape
    assert b == len(pairs) and t == max(p.packed_length for p in pairs)
    flat = batch["input_ids"].flatten()
    for i, p in enumerate(pairs):
        n_p, n_c, n_r = len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)
        n = n_p + n_c + n_r
        assert batch["input_ids"][i, :n].tolist() == p.prompt_ids + p.chosen_ids + p.rejected_ids
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()
        # rejected tokens take the positions they would have in their own row
        assert batch["position_ids"][i, :n].tolist() == (list(range(n_p + n_c))
                                                          + list(range(n_p, n_p + n_r)))
        assert batch["segment_ids"][i, :n].tolist() == [0] * n_p + [1] * n_c + [2] * n_r
        for seq, ids in ((i, p.chosen_ids), (b + i, p.rejected_ids)):
            sel = batch["logp_sequence"] == seq
            scored = ids if n_p else ids[1:]  # as in separate rows, a row's first token is not scored
            assert batch["logp_target"][sel].tolist() == scored
            src = batch["logp_source"][sel]
            assert (src // t == i).all()
            if n_p:  # both completions' first token is predicted from the last prompt token
                assert int(src[0]) % t == n_p - 1
        # the position predicting a chosen token holds the token before it
        sel = batch["logp_sequence"] == i
        assert flat[batch["logp_source"][sel][1:] + 1].tolist() == batch["logp_target"][sel][1:].tolist()
    assert batch["chosen_token_counts"].tolist() == [len(p.chosen_ids) for p in pairs]
    assert batch["loss_mask"].sum(1).tolist() == [len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    mask = packed_attention_mask(batch["segment_ids"])
    assert mask.shape == (b, 1, t, t)
    seg = batch["segment_ids"][0]
    rej, cho = (seg == 2).nonzero()[0, 0], (seg == 1).nonzero()[0, 0]
    assert not mask[0, 0, rej, cho] and mask[0, 0, rej, 0] and mask[0, 0, cho, 0]
    assert not mask[0, 0, 0, 1]  # causal
    additive = packed_attention_mask(batch["segment_ids"], torch.float32)
    assert torch.equal(additive == 0, mask)


def test_extras_reach_the_batch(tok):
    ds = PreferenceDataset(
        chosen_data=["q: a", "q: b", "q: c"], rejected_data=["q: x", "q: y", "q: z"],
        math_correctness=[1.0, 0.5, 0], syntax_ok=[True, False, True], tag=["t1", "t2", "t3"],
    )
    batch = collate_preference(ds.tokenize(tok), pad_id=tok.pad_token_id)
    assert batch["math_correctness"].dtype == torch.float
    assert batch["math_correctness"].tolist() == [1.0, 0.5, 0.0]
    assert batch["syntax_ok"].tolist() == [1.0, 0.0, 1.0]
    assert batch["tag"] == ["t1", "t2", "t3"]
    partial = [TokenizedPair([1], [2], [3], {"s": 1.0}, "a", 0),
               TokenizedPair([1], [2], [3], {}, "b", 1)]
    assert collate_preference(partial, pad_id=0)["s"] == [1.0, None]


# ----------------------------------------------------------------------------- prompts


def test_prompt_dataset_rows_and_tokenization(tok, tmp_path):
    path = write(tmp_path / "p.jsonl", [
        {"prompt": "12+7=", "answer": "19"},
        {"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"},
    ])
    ds = PromptDataset.from_file(path)
    assert len(ds) == 2 and ds[0].extras == {"answer": "19"} and ds[1].location == f"{path}:2"
    ids = ds.tokenize(tok)
    assert tok.decode(ids[0]) == "12+7="
    assert tok.decode(ids[1]) == "<|user|>2+2?<|eos|><|assistant|>"
    assert tok.decode(tokenize_prompt(tok, ds[1], max_prompt_length=3)) == "?<|eos|><|assistant|>"
    assert tokenize_prompt(tok, "abcdef", max_prompt_length=3) == tok("def")["input_ids"]
    cols = PromptDataset(prompts=["1+1=", "2+3="], answer=["2", "5"])
    assert cols[1].prompt == "2+3=" and cols[1].extras == {"answer": "5"}
    with pytest.raises(DataError, match=r"missing key 'prompt' \(did you mean 'prompts'\?\)"):
        PromptDataset.from_rows([{"prompts": "x"}])
    with pytest.raises(DataError, match="'prompt' is empty"):
        PromptDataset(prompts=[""])


# ----------------------------------------------------------------------------- synthetic


def test_sort_preferences_are_well_formed_and_deterministic():
    rows = make_sort_preferences(50, seed=3)
    assert rows == make_sort_preferences(50, seed=3) and rows != make_sort_preferences(50, seed=4)
    for r in rows:
        letters = r["prompt"].removeprefix("sort: ").split()
        assert r["prompt"].endswith("\n") and 4 <= len(letters) <= 6
        assert len(set(letters)) == len(letters)
        assert r["chosen"].split() == sorted(letters)
        assert sorted(r["rejected"].split()) == sorted(letters)
        assert r["rejected"] != r["chosen"]
    assert len({r["prompt"] for r in rows}) == 50
    PreferenceDataset.from_rows(rows)  # valid rows


def test_addition_rows():
    rows = make_addition_prompts(30, seed=1, max_value=20)
    for r in rows:
        a, b = r["prompt"].removesuffix("=").split("+")
        assert r["answer"] == str(int(a) + int(b)) and int(a) <= 20 and int(b) <= 20
    sft = make_addition_sft(30, seed=1, max_value=20)
    assert [(r["prompt"], r["completion"]) for r in sft] == [(r["prompt"], r["answer"]) for r in rows]
    with pytest.raises(ConfigError, match="cannot draw"):
        make_addition_prompts(50, max_value=3)


def test_builtin_train_and_eval_splits_do_not_overlap():
    train = builtin_dataset("sort_preferences", "train", n=400, seed=0)
    evals = builtin_dataset("sort_preferences", "eval", n=60, seed=0)
    other_eval = builtin_dataset("sort_preferences", "eval", n=60, seed=7)
    letter_sets = {r["chosen"] for r in train}
    assert len(train) == 400 and len(evals) == 60
    assert not letter_sets & {r["chosen"] for r in evals + other_eval}
    add_train = builtin_dataset("addition", "train", n=300)
    add_eval = builtin_dataset("addition", "eval", n=50)
    assert not {r["prompt"] for r in add_train} & {r["prompt"] for r in add_eval}
    assert len(builtin_dataset("addition", "eval")) == 200
    with pytest.raises(ConfigError, match="did you mean 'addition'"):
        builtin_dataset("addtion")
    with pytest.raises(ConfigError, match="unknown split 'test'"):
        builtin_dataset("addition", "test")
