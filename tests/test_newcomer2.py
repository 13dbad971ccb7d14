"""Issue 18, newcomer experience round 2 (items 1-8): threads, honest figures, no silent
defaults, the right diagnosis for /proc, run records, no warning noise, readable plots,
discoverable commands."""

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from rlfoundry.cli import DEFAULT_RECIPE, build_parser, demo_notice, main
from rlfoundry.config import load_config
from rlfoundry.errors import ConfigError, OutputError
from rlfoundry.report import EXPECTED_RANGES, expected_range_text, out_of_range
from rlfoundry.training.storage import check_writable
from rlfoundry.training.threads import apply_threads, resolve_threads

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FAST_DPO = ["data.train_size=32", "data.eval_size=8", "training.batch_size=8", "training.max_steps=2",
            "training.eval_every=2", "training.save_every=null", "logging.progress_bar=false",
            "logging.backends=[jsonl]"]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---- 1. threads ----------------------------------------------------------------------------

def test_thread_count_defaults_to_one_on_cpu_and_is_validated(restore_threads):
    assert resolve_threads(None, "cpu") == 1 and resolve_threads(3, "cpu") == 3
    torch.set_num_threads(2)
    assert apply_threads(None, torch.device("cpu")) == 1 and torch.get_num_threads() == 1
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
            resolve_threads(bad, "cpu")
    assert load_config(DEFAULT_RECIPE, ["training.num_threads=2"]).training.num_threads == 2
    with pytest.raises(ConfigError, match="training.num_threads"):
        load_config(DEFAULT_RECIPE, ["training.num_threads=0"])
    parser = build_parser()
    for command in (["train", "--threads", "2"], ["eval", "builtin:tiny", "--threads", "2"],
                    ["quickstart", "--threads", "2"]):
        assert parser.parse_args(command).threads == 2


# ---- 3 and 5. the demo says so; the run records its config and how it ran ------------------

def test_train_without_config_announces_the_demo_and_records_the_run(tmp_path, capsys, restore_threads):
    out = tmp_path / "demo"
    torch.set_num_threads(2)
    assert main(["train", "--threads", "1", f"training.output_dir={out}", *FAST_DPO]) == 0
    err = capsys.readouterr().err
    assert "no config file given: training the built-in demo (dpo_tiny.yaml" in err
    assert "pass a YAML config" in err and torch.get_num_threads() == 1
    # the resolved config, overrides included, reruns as it was
    saved = load_config(out / "config.yaml")
    assert saved == load_config(DEFAULT_RECIPE, [f"training.output_dir={out}", *FAST_DPO,
                                                 "training.num_threads=1"])
    info = json.loads((out / "run_info.json").read_text())
    assert info["num_threads"] == 1 and info["device"] == "cpu" and info["algorithm"] == "dpo"
    assert info["torch_version"] == torch.__version__
    assert info["transformers_version"] and info["rlfoundry_version"]
    assert "git_commit" in info and re.match(r"\d{4}-\d\d-\d\dT", info["start_time"])
    assert info["config"]["training"]["max_steps"] == 2 and info["resumed_from"] is None
    assert info["hardware"]["cpu_count"] >= 1
    assert not (out / "manifest.json").exists()  # checkpoints keep theirs; no clash at the top
    # the written config reruns; a resumed run says from where
    assert main(["train", str(out / "config.yaml"), "training.max_steps=3", "--resume", "auto"]) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["resumed_from"].endswith("step_000002") and "--resume auto" in info["command_line"]
    assert load_config(out / "config.yaml").training.max_steps == 3


def test_demo_notice_names_what_it_trains():
    text = demo_notice(load_config(DEFAULT_RECIPE))
    assert "dpo on builtin:tiny with builtin:sort_preferences, 60 steps, into runs/dpo_tiny" in text


@pytest.mark.parametrize("content", ["", "# only a comment\n", "{}\n"])
def test_empty_config_file_is_an_error_not_a_default_run(tmp_path, capsys, monkeypatch, content):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.yaml").write_text(content)
    assert main(["train", "empty.yaml"]) == 2
    err = capsys.readouterr().err
    assert "empty.yaml: the config file is empty" in err and "examples/configs/" in err
    assert not (tmp_path / "runs").exists()


def test_version_and_env(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and re.fullmatch(r"rlfoundry \S+\n", capsys.readouterr().out)
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for word in ("- rlfoundry:", "- python:", "- torch: " + torch.__version__, "- transformers:",
                 "- cpu_count:", "- cuda_available:"):
        assert word in out, word


# ---- 4. /proc and /sys are not full disks ---------------------------------------------------

@pytest.mark.parametrize("path", ["/proc/rlfoundry_run/out", "/sys/rlfoundry_run"])
def test_output_dir_on_a_kernel_file_system_is_not_writable_not_full(path):
    if not Path("/" + path.split("/")[1]).is_dir():
        pytest.skip("no such file system on this machine")
    with pytest.raises(OutputError) as error:
        check_writable(path)
    assert "not writable" in str(error.value) and "disk is full" not in str(error.value)


# ---- 6. no warning on a GRPO step -----------------------------------------------------------

def test_grpo_step_writes_no_warning(tmp_path, capfd):
    from rlfoundry.algorithms.grpo import GRPOTrainer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GRPOTrainer(config={
            "algorithm": {"name": "grpo", "group_size": 2, "sampling": {"max_new_tokens": 3}},
            "data": {"train": "builtin:max", "train_size": 8, "eval_size": 4},
            "training": {"output_dir": str(tmp_path), "batch_size": 2, "max_steps": 1},
            "logging": {"backends": ["jsonl"], "progress_bar": False}}).train()
    assert [str(w.message) for w in caught] == []
    assert "deprecated" not in capfd.readouterr().err


def test_sampler_passes_the_cache_under_the_name_the_model_declares(tokenizer):
    """transformers >= 5.24 renamed forward's past_key_values to cache and warns on the old
    name; the sampler must use whichever name the model's forward declares."""
    from rlfoundry.models import build_model
    from rlfoundry.rollout import HFSampler, SamplingParams
    from rlfoundry.rollout.hf_sampler import cache_argument

    class NewStyle(torch.nn.Module):  # the >= 5.24 signature over a model of this install
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                    use_cache=None, **kwargs):
            if "past_key_values" in kwargs:
                warnings.warn("`past_key_values` is deprecated. Use `cache` instead.", FutureWarning,
                              stacklevel=2)
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids, past_key_values=cache, use_cache=use_cache)

    inner = build_model("tiny", tokenizer, seed=0)
    assert cache_argument(inner) in ("cache", "past_key_values")
    assert cache_argument(NewStyle(inner)) == "cache"
    prompts = [tokenizer("max: 3 9 2\n")["input_ids"]]
    params = SamplingParams(0.0, 1.0, 0, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = HFSampler(NewStyle(inner), tokenizer).generate(prompts, 2, params, torch.Generator())
    old = HFSampler(inner, tokenizer).generate(prompts, 2, params, torch.Generator())
    assert new.completion_ids == old.completion_ids


# ---- 7. plots -------------------------------------------------------------------------------

def _run(path, records, config=None):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if config is not None:
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def test_plots_label_axes_mark_sparse_points_and_say_what_is_missing_or_included(tmp_path):
    from rlfoundry.plotting import build_figures

    grpo = _run(tmp_path / "grpo", [{"step": 0, "eval/accuracy": 0.3}]
                + [{"step": s, "loss": 1.0 / s, "kl": 0.01 * s} for s in range(1, 6)]
                + [{"step": 5, "eval/accuracy": 0.6}],
                {"algorithm": {"name": "grpo", "loss": {"reference_policy_kl_penalty": 0.04}}})
    dpo = _run(tmp_path / "dpo", [{"step": s, "loss": 0.7 - 0.1 * s} for s in range(1, 4)],
               {"algorithm": {"name": "dpo", "loss": {"reference_policy_kl_penalty": 0.1}}})
    figures = build_figures([grpo, dpo])
    loss_ax = figures["loss"].axes[0]
    assert loss_ax.get_ylabel() == "loss (training objective)"
    assert loss_ax.get_title() == "loss (includes a KL penalty: grpo 0.04 x KL)"
    accuracy_ax = figures["accuracy"].axes[0]
    assert accuracy_ax.get_ylabel() == "accuracy"
    eval_line = next(line for line in accuracy_ax.get_lines() if line.get_label() == "grpo")
    assert eval_line.get_linestyle() == "None" and eval_line.get_marker() == "o"
    legend = [t.get_text() for t in accuracy_ax.get_legend().get_texts()]
    assert legend == ["grpo", "dpo: no accuracy logged"]
    train_line = next(line for line in loss_ax.get_lines() if line.get_label() == "grpo")
    assert train_line.get_linestyle() == "-"
    assert build_figures([grpo])["loss"].axes[0].get_title() == "loss (includes 0.04 x KL to the reference)"
    assert build_figures([dpo])["loss"].axes[0].get_title() == "loss"  # DPO's beta adds no KL term


def test_plot_of_several_runs_defaults_to_a_folder_named_after_them(tmp_path, monkeypatch, capsys):
    from rlfoundry.plotting import default_out_dir

    monkeypatch.chdir(tmp_path)
    a = _run(tmp_path / "run a", [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}])
    b = _run(tmp_path / "b", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}])
    assert main(["plot", str(a), str(b)]) == 0
    assert (tmp_path / "plots_run-a_vs_b" / "loss.png").is_file() and not (tmp_path / "plots").exists()
    assert capsys.readouterr().out.strip().endswith("loss.png")
    assert default_out_dir([a]) == a / "plots"
    many = default_out_dir([tmp_path / f"a_rather_long_run_name_{i}" for i in range(9)])
    assert len(many.name) <= 100 and many.name.startswith("plots_a_rather_long_run_name_0_vs_")


# ---- 8. discoverability ---------------------------------------------------------------------

def test_plain_rlfoundry_lists_the_commands_and_train_help_points_to_the_reference(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("train", "quickstart", "eval", "plot", "list", "export", "env"):
        assert re.search(rf"^\s+{command}\s", out, re.MULTILINE), command
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "docs/configuration.md" in " ".join(capsys.readouterr().out.split())


def test_list_shows_builtin_datasets_and_models_in_full(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "datasets:" in out and "models:" in out
    assert re.search(r"builtin:sort_preferences +\(preference\) .*letter-sorting", out)
    assert "builtin:max_sft" in out and re.search(r"builtin:small +random-init", out)
    # a summary that wraps over several docstring lines is printed whole, on one line
    process = next(line for line in out.splitlines() if line.strip().startswith("process "))
    assert process.rstrip().endswith("it never reaches the loss.")
    assert main(["list", "datasets"]) == 0 and "algorithms:" not in capsys.readouterr().out


def test_eval_pairs_shows_sample_generations(capsys):
    assert main(["eval", "builtin:tiny", "--pairs", "builtin:sort_preferences", "--limit", "8",
                 "--show", "2", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    shown = re.findall(r"^  \[\d\] prompt '.*' -> '.*' \(chosen '.*', rejected '.*', margin [-+]\d", out,
                       re.MULTILINE)
    assert len(shown) == 2, out


def test_missing_data_names_the_key_and_where_relative_paths_are_read(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(DEFAULT_RECIPE), "data.train=data/prefs.jsonl",
                 f"training.output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "data.train: 'data/prefs.jsonl' does not exist" in err
    assert f"relative paths are read from the working directory, {tmp_path}" in err
    (tmp_path / "data").mkdir()
    assert main(["train", str(DEFAULT_RECIPE), "data.train=builtin:sort_preferences", "data.eval=data",
                 f"training.output_dir={tmp_path / 'out'}"]) == 2
    assert "data.eval: 'data' is a directory, not a data file" in capsys.readouterr().err


def test_torch_floor_agrees_across_pyproject_constraints_and_readme():
    floor = re.search(r'^\s*"torch>=([\d.]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    constraints = (ROOT / "constraints.txt").read_text()
    pin = re.search(r"^torch==([\d.]+)", constraints, re.MULTILINE).group(1)
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(pin) >= as_tuple(floor)
    assert re.findall(r"torch>=([\d.]+)", constraints) == [floor]
    assert set(re.findall(r"torch>=([\d.]+)", README)) == {floor}
    assert f"torch=={pin}" in README


# ---- 2. honest README figures ---------------------------------------------------------------

def _summary(grpo, dpo, fast=False):
    return {"fast": fast, "stages": [{"name": "grpo", "before": grpo[0], "after": grpo[1]},
                                     {"name": "dpo", "before": 0.5, "after": dpo}]}


def test_expected_range_covers_the_measured_machines_and_flags_the_rest():
    for grpo, dpo in (((0.280, 0.705), 1.0), ((0.320, 0.710), 0.984), ((0.295, 0.725), 0.984)):
        assert out_of_range(_summary(grpo, dpo)) == []
        assert "this run is in range" in expected_range_text(_summary(grpo, dpo))
    bad = _summary((0.3, 0.45), 0.99)
    assert out_of_range(bad) == ["grpo after = 0.450 is outside 0.60-0.80"]
    assert "NOT in range" in expected_range_text(bad) and "rlfoundry env" in expected_range_text(bad)
    assert "does not apply" in expected_range_text(_summary((0.3, 0.45), 0.99, fast=True))


def test_readme_says_what_you_will_see_with_machine_date_and_the_range():
    section = README[README.index("## What you will see"):]
    section = section[:section.index("\n## ", 1)]
    assert re.search(r"\b20\d\d-\d\d-\d\d\b", section) and "CPU" in section
    assert "vary" in section and "few points" in section
    for (name, when), (low, high) in EXPECTED_RANGES.items():
        assert f"{name.upper()} {when} {low:.2f}-{high:.2f}" in section, (name, when)
    table = re.findall(r"\| (GRPO|DPO) \|[^|]*\|[^|]*\| ([\d.]+) \| ([\d.]+) \|", README)
    figures = {(n, w): float(v) for n, b, a in table for w, v in (("before", b), ("after", a))}
    for key, (low, high) in EXPECTED_RANGES.items():
        assert low <= figures[(key[0].upper(), key[1])] <= high, key
