"""The quickstart's markdown: the before/after table (also printed) and ``report.md``.

Pure functions of the summary dict that :func:`rlfoundry.quickstart.run_quickstart` writes
to ``summary.json``.
"""

from __future__ import annotations

from typing import Any

from rlfoundry.safe_text import escape_control

Summary = dict[str, Any]


def cell(value: Any) -> str:
    """A value as one markdown table cell (code-formatted text on one line, pipes and control
    characters escaped)."""
    if value is None:
        return "-"
    text = escape_control(str(value).strip().replace("\n", " "), keep_newlines=False).replace("|", "\\|")
    return f"`{text}`" if text else "(empty)"


def number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def change(stage: dict[str, Any]) -> str:
    """After minus before: accuracy points for accuracies, plain difference otherwise."""
    before, after = stage["before"], stage["after"]
    if before is None or after is None:
        return "-"
    if stage["metric"] == "accuracy":
        return f"{100 * (after - before):+.1f} pts"
    return f"{after - before:+.3f}"


def results_table(summary: Summary) -> str:
    """Markdown table: per stage, the held-out metric before and after, steps and wall time."""
    lines = ["| stage | task | held-out metric | before | after | change | steps | time |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary["stages"]:
        lines.append(f"| {s['title']} | {s['task']} | {s['metric_title']} | {number(s['before'])} | "
                     f"{number(s['after'])} | {change(s)} | {s['steps']} | {s['seconds']:.0f} s |")
    lines.append(f"| total | | | | | | | {summary['total_seconds']:.0f} s |")
    return "\n".join(lines)


def headline(summary: Summary) -> str:
    """One sentence with the two figures the quickstart is judged by."""
    stages = {s["name"]: s for s in summary["stages"]}
    grpo, dpo = stages.get("grpo"), stages.get("dpo")
    parts = []
    if grpo and grpo["before"] is not None and grpo["after"] is not None:
        parts.append(f"GRPO moves held-out exact match from {grpo['before']:.1%} (the SFT warm "
                     f"start) to {grpo['after']:.1%} ({change(grpo)})")
    if dpo and dpo["after"] is not None:
        parts.append(f"DPO reaches {dpo['after']:.1%} held-out preference accuracy "
                     f"(from {dpo['before']:.1%})")
    return "; ".join(parts) + "." if parts else ""


# Held-out figures of the default quickstart (no overrides) vary across CPUs by a few points
# (floating-point sums differ): measured GRPO 0.280 -> 0.705, 0.320 -> 0.710 and 0.295 -> 0.725,
# DPO 1.000, 0.984 and 0.984 on three machines (README, "What you will see"). Each machine
# repeats its own figures.
EXPECTED_RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("grpo", "before"): (0.20, 0.40),
    ("grpo", "after"): (0.60, 0.80),
    ("dpo", "after"): (0.94, 1.00),
}


def out_of_range(summary: Summary) -> list[str]:
    """The figures of ``summary`` outside :data:`EXPECTED_RANGES`, as messages (none: all in)."""
    stages = {s["name"]: s for s in summary["stages"]}
    problems = []
    for (name, when), (low, high) in EXPECTED_RANGES.items():
        value = stages.get(name, {}).get(when)
        if value is None or not low <= value <= high:
            problems.append(f"{name} {when} = {number(value)} is outside {low:.2f}-{high:.2f}")
    return problems


def expected_range_text(summary: Summary, default_settings: bool = True) -> str:
    """The expected ranges and whether this run's figures fall in them."""
    ranges = ", ".join(f"{name.upper()} {when} {low:.2f}-{high:.2f}"
                       for (name, when), (low, high) in EXPECTED_RANGES.items())
    head = (f"expected with the default settings: {ranges} (figures vary across CPUs by a few "
            f"points; the same machine repeats its own)")
    if summary.get("fast") or not default_settings:
        return head + ". This run changed the settings (--fast or overrides), so the range does not apply."
    problems = out_of_range(summary)
    return head + (": this run is in range." if not problems else
                   ": this run is NOT in range (" + "; ".join(problems) + "); please report it "
                   "with the output of `rlfoundry env`.")


def _samples(summary: Summary) -> list[str]:
    lines = ["| prompt | answer | after SFT | after GRPO |", "|---|---|---|---|"]
    for s in summary["grpo_samples"]:
        lines.append(f"| {cell(s['prompt'])} | {cell(s['answer'])} | {cell(s['sft'])} | {cell(s['grpo'])} |")
    return lines


def _pairs(summary: Summary) -> list[str]:
    lines = ["| prompt | chosen | rejected | margin |", "|---|---|---|---|"]
    for p in summary["dpo_pairs"]:
        lines.append(f"| {cell(p['prompt'])} | {cell(p['chosen'])} | {cell(p['rejected'])} | "
                     f"{p['margin']:+.2f} |")
    return lines


def _settings(summary: Summary) -> list[str]:
    lines = ["| stage | model | data | batch | learning rate | loss | seed | config |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary["stages"]:
        c = s["settings"]
        lines.append(f"| {s['name']} | {cell(c['model'])} | {cell(c['data'])} | {c['batch_size']} | "
                     f"{c['learning_rate']:g} | {cell(c['loss'])} | {c['seed']} | "
                     f"[{s['name']}/config.yaml]({s['name']}/config.yaml) |")
    return lines


def render_report(summary: Summary) -> str:
    """The full ``report.md``."""
    out = ["# rlfoundry quickstart", ""]
    if summary.get("fast"):
        out += ["> `--fast`: a smoke run with a few steps per stage; its figures are not meaningful.", ""]
    out += [
        "The built-in demonstration on the tiny random-init model (`builtin:tiny`, about 1.6M "
        "parameters): a supervised warm start and GRPO on a verifiable task (name the largest "
        "digit of a list), and DPO on synthetic preferences (letters in sorted order).", "",
        "## Results", "", results_table(summary), "", headline(summary),
        f"Times are wall-clock seconds with {summary.get('threads', 1)} torch thread(s).", "",
        "## Curves", "",
        "One figure per metric family, one panel per stage that logs it; dashed lines are "
        "held-out (`eval/`) values. `rlfoundry plot RUN_DIR [RUN_DIR ...]` draws them for any "
        "runs, overlaid.", "",
    ]
    out += [f"![{p.rsplit('/', 1)[-1][:-4]}]({p})" for p in summary["plots"]]
    out += ["", "## Sample generations", "",
            "Held-out prompts, greedy decoding, before (the SFT model) and after GRPO:", "",
            *_samples(summary), "",
            "## DPO on held-out pairs", "",
            "Implicit-reward margin after DPO, beta-free: (log pi - log pi_ref)(chosen) - "
            "(log pi - log pi_ref)(rejected); above 0 the model prefers the chosen answer.", "",
            *_pairs(summary), "",
            "## Stages", "", *_settings(summary), "",
            "Rerun a stage with `rlfoundry train <stage>/config.yaml`; score a model with "
            "`rlfoundry eval <stage>/final --prompts builtin:max` or `--pairs "
            "builtin:sort_preferences`.", ""]
    return "\n".join(out)
