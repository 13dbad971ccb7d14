"""`rlfoundry plot`: PNG curves from metrics.jsonl, runs overlaid; clear errors on bad input."""

import json

import pytest
from PIL import Image

from rlfoundry.cli import main
from rlfoundry.errors import DataError
from rlfoundry.plotting import build_figures, plot_runs, read_metrics, run_labels, select_plots


def write_run(path, records):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def grpo_like(path, scale=1.0):
    records = [{"step": 0, "eval/accuracy": 0.3}]
    for step in range(1, 6):
        records.append({"step": step, "loss": scale / step, "reward_mean": 0.1 * step, "kl": 0.01 * step,
                        "completion_length_mean": 2.0, "grad_norm": 1.0, "lr": 1e-3})
    records.append({"step": 5, "eval/accuracy": 0.6})
    return write_run(path, records)


def dpo_like(path):
    return write_run(path, [{"step": s, "loss": 0.7 - 0.1 * s, "accuracy": 0.5 + 0.1 * s, "reward_gap": 0.2 * s}
                            for s in range(1, 4)])


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_one_png_per_family_that_a_run_logged(tmp_path):
    a, b = grpo_like(tmp_path / "a"), dpo_like(tmp_path / "b")
    written = plot_runs([a, b], tmp_path / "out")
    assert [p.name for p in written] == ["loss.png", "reward.png", "kl.png", "accuracy.png", "length.png"]
    for path in written:
        assert_png(path)
    only_dpo = plot_runs([b], tmp_path / "dpo_out")
    assert [p.name for p in only_dpo] == ["loss.png", "reward.png", "accuracy.png"]


def legend(figure, panel=0):
    return figure.axes[panel].get_legend_handles_labels()[1]


def test_runs_are_overlaid_or_drawn_in_panels(tmp_path):
    a, b = grpo_like(tmp_path / "a"), dpo_like(tmp_path / "b")
    overlaid = build_figures([a, b])
    assert legend(overlaid["loss"]) == ["a", "b"]  # one key per run: the run names
    assert legend(overlaid["accuracy"]) == ["a", "b"]  # a's eval/accuracy, b's train accuracy
    assert legend(overlaid["reward"]) == ["a", "b"]
    line = overlaid["loss"].axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5] and line.get_ydata()[-1] == pytest.approx(0.2)
    panels = build_figures([a, b], labels=["grpo", "dpo"], panels=True)
    assert [ax.get_title() for ax in panels["loss"].axes] == ["grpo: loss", "dpo: loss"]
    assert [ax.get_title() for ax in panels["kl"].axes] == ["grpo: kl"]  # only runs that log it


def test_metric_selection_by_family_or_exact_key(tmp_path):
    runs = [read_metrics(grpo_like(tmp_path / "a"))]
    assert select_plots(runs, ["loss", "grad_norm", "eval/accuracy"]) == {
        "loss": ("loss", "eval/loss"), "grad_norm": ("grad_norm",), "eval/accuracy": ("eval/accuracy",)}
    with pytest.raises(DataError, match=r"'grad_nrom' is neither .*did you mean 'grad_norm'"):
        select_plots(runs, ["grad_nrom"])


def test_labels_are_run_names_or_paths_where_names_repeat(tmp_path):
    assert run_labels([tmp_path / "x" / "grpo", tmp_path / "y" / "dpo"]) == ["grpo", "dpo"]
    twins = [tmp_path / "x" / "grpo", tmp_path / "y" / "grpo"]
    assert run_labels(twins) == [str(p) for p in twins]


def test_bad_metrics_files_are_reported_with_their_line(tmp_path):
    run = write_run(tmp_path / "r", [{"step": 1, "loss": 1.0}])
    with (run / "metrics.jsonl").open("a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"step": 2, "loss": 0.5}) + "\n")
    with pytest.raises(DataError, match=r"metrics\.jsonl:2: not a JSON object"):
        read_metrics(run)
    torn = write_run(tmp_path / "torn", [{"step": 1, "loss": 1.0}])
    with (torn / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "lo')
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert read_metrics(torn) == [{"step": 1, "loss": 1.0}]


def test_plot_cli_overlays_runs_and_names_a_missing_metrics_file(tmp_path, capsys):
    a, b = grpo_like(tmp_path / "run_a"), grpo_like(tmp_path / "run_b", scale=2.0)
    assert main(["plot", str(a), str(b), "--out", str(tmp_path / "cmp"), "--metrics", "loss,grad_norm"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "cmp" / "loss.png"), str(tmp_path / "cmp" / "grad_norm.png")]
    for path in printed:
        assert_png(tmp_path / path)
    assert main(["plot", str(a)]) == 0  # one run: next to it, under RUN/plots
    assert_png(a / "plots" / "accuracy.png")

    assert main(["plot", str(a), str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nowhere' / 'metrics.jsonl'}: no such file" in err
