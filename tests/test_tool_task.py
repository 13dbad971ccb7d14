"""The built-in tool task end to end (slow): after multi-turn GRPO with the calculator, the
tool-using policy beats its SFT start and the policy trained without tools."""

import pytest

# The tool policy's SFT stage as in the recipe (the gain needs it) and 20 of its 30 GRPO steps
# (constant learning rate, so the same first 20 steps; measured 0.93 at step 20); the no-tool
# baseline, which can only guess, with fewer steps; 64 held-out problems. About 8 minutes on
# 2 cores.
FAST_GAIN = ["grpo_tools.training.max_steps=20", "sft_no_tools.training.max_steps=100",
             "sft_no_tools.training.eval_every=100", "grpo_no_tools.training.max_steps=5",
             "grpo_tools.data.eval_size=64", "grpo_no_tools.data.eval_size=64",
             "grpo_tools.training.eval_every=100", "grpo_no_tools.training.eval_every=100",
             "sft_tools.training.eval_every=1000"]


@pytest.mark.slow
def test_tools_help_after_grpo(tmp_path):
    """The issue's acceptance: after multi-turn GRPO with the calculator, the tool-using policy
    beats its SFT start and the no-tool policy by a clear margin, and calls the tool."""
    from rlfoundry.tool_task import run_tool_task

    summary = run_tool_task(tmp_path, progress=False, log=lambda _: None, overrides=FAST_GAIN)
    rows = {(r["policy"], r["moment"]): r for r in summary["results"]}
    tools_after = rows["tools", "after GRPO"]["accuracy"]
    assert tools_after >= rows["tools", "SFT start"]["accuracy"] + 0.2, summary["results"]
    assert tools_after >= rows["no tools", "after GRPO"]["accuracy"] + 0.2, summary["results"]
    assert rows["tools", "after GRPO"]["tool_calls"] >= 0.9  # it learned to call the calculator
    assert rows["tools", "after GRPO"]["tool_calls"] > rows["tools", "SFT start"]["tool_calls"]
    assert rows["no tools", "after GRPO"]["tool_calls"] == 0.0 and rows["no tools", "after GRPO"]["turns"] == 1.0
    assert (tmp_path / "report.md").read_text().startswith("| policy | moment |")


def test_stage_configs_wire_the_two_policies(tmp_path):
    from rlfoundry.tool_task import stage_configs

    cfg = stage_configs(tmp_path, ["grpo_tools.training.max_steps=3", "training.seed=2"])
    assert cfg["grpo_tools"].environment.args["tools"] == ["calculator"]
    assert cfg["grpo_no_tools"].environment.args["tools"] == []
    assert cfg["sft_no_tools"].data.builtin_options["tools"] is False
    assert cfg["grpo_tools"].model.name_or_path == str(tmp_path / "sft_tools" / "final")
    assert cfg["grpo_no_tools"].model.name_or_path == str(tmp_path / "sft_no_tools" / "final")
    assert cfg["grpo_tools"].training.max_steps == 3 and cfg["grpo_no_tools"].training.max_steps != 3
    assert {c.training.seed for c in cfg.values()} == {2}


def test_the_table_reads_the_eval_metrics():
    from rlfoundry.tool_task import render_table, results

    ev = {"accuracy": 0.5, "env/tool_calls": 1.0, "env/turns": 2.0}
    stages = {name: {"before": ev, "after": {**ev, "accuracy": 0.9}, "seconds": 1.0}
              for name in ("sft_tools", "grpo_tools", "sft_no_tools", "grpo_no_tools")}
    table = render_table({"results": results(stages), "stages": stages, "date": "D", "machine": "M",
                          "threads": 1, "total_seconds": 4.0, "fast": False})
    assert "| tools | after GRPO | 0.90 | 1.00 | 2.00 |" in table
    assert "| no tools | SFT start | 0.50 |" in table and "D; M; 1 torch thread(s)" in table
