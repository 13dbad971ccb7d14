"""Curves from ``metrics.jsonl``: one PNG per metric family, several runs overlaid.

``rlfoundry plot RUN_DIR [RUN_DIR ...]`` draws, for each family below that any run logged,
every matching key of every run on one set of axes (legend: the run directory's name, and
"no <family> logged" for a run without it); series logged every step as lines, sparse ones
(``eval/...`` every N steps) as markers only, so no line suggests values between them. The
y-axis is labelled, and the loss title says when a run's loss includes a KL penalty (GRPO
with ``reference_policy_kl_penalty`` > 0, read from the run's config.yaml). ``--metrics`` picks
families or exact keys (``loss,eval/accuracy,grad_norm``). Uses matplotlib's object API with
the Agg canvas, so no display and no global pyplot state are involved.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from rlfoundry.errors import DataError, RLFoundryError
from rlfoundry.registry import did_you_mean

# family -> the keys plotted in its figure, in legend order
METRIC_FAMILIES: dict[str, tuple[str, ...]] = {
    "loss": ("loss", "eval/loss"),
    "reward": ("reward_mean", "eval/reward_mean", "chosen_rewards_mean", "rejected_rewards_mean",
               "reward_gap", "eval/reward_gap"),
    "kl": ("kl", "eval/kl"),
    "accuracy": ("accuracy", "eval/accuracy"),
    "length": ("completion_length_mean", "completion_length_max"),
}

# family -> y-axis label
Y_LABELS: dict[str, str] = {
    "loss": "loss (training objective)", "reward": "reward", "kl": "KL(policy || reference)",
    "accuracy": "accuracy", "length": "completion length (tokens)",
}

Records = list[dict[str, Any]]


def metrics_path(run: str | Path) -> Path:
    """``run``'s metrics.jsonl (``run`` is a run directory or the file itself)."""
    path = Path(run)
    return path if path.suffix == ".jsonl" else path / "metrics.jsonl"


def read_metrics(run: str | Path) -> Records:
    """The records of a run's metrics.jsonl. A torn last line (a run killed mid-write, or
    still writing) is skipped with a warning; any other bad line is a DataError."""
    path = metrics_path(run)
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass a run directory (a training.output_dir) "
                        f"that contains metrics.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    records: Records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                warnings.warn(f"{path}:{number}: skipped an incomplete last line", stacklevel=2)
                continue
            raise DataError(f"{path}:{number}: not a JSON object ({e.msg})") from None
        if not isinstance(record, dict) or "step" not in record:
            raise DataError(f"{path}:{number}: expected an object with a 'step' key")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records yet")
    return records


def series(records: Records, key: str) -> tuple[list[int], list[float]]:
    """Steps and values of ``key`` (non-numeric values are left out; NaN stays, as a gap)."""
    steps, values = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            steps.append(int(r["step"]))
            values.append(float(value))
    return steps, values


def available_keys(records: Records) -> list[str]:
    """Every numeric metric key of a run, in first-seen order."""
    keys: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.setdefault(k, None)
    return list(keys)


def select_plots(runs: Sequence[Records], metrics: Sequence[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Figure name -> keys to draw. ``metrics`` are family names or exact keys (default: every
    family some run has); an unknown name is a DataError listing what there is."""
    present = set().union(*(available_keys(r) for r in runs))
    if not metrics:
        return {f: keys for f, keys in METRIC_FAMILIES.items() if present & set(keys)}
    plots: dict[str, tuple[str, ...]] = {}
    for name in metrics:
        if name in METRIC_FAMILIES:
            plots[name] = METRIC_FAMILIES[name]
        elif name in present:
            plots[name] = (name,)
        else:
            choices = [*METRIC_FAMILIES, *sorted(present)]
            raise DataError(f"--metrics: '{name}' is neither a metric family nor a key any run "
                            f"logged{did_you_mean(name, choices)}; families: "
                            f"{', '.join(METRIC_FAMILIES)}; keys: {', '.join(sorted(present))}")
    return plots


def run_labels(runs: Sequence[str | Path]) -> list[str]:
    """Legend labels: each run directory's name, or its full path where names repeat."""
    names = [Path(r).resolve().name if Path(r).suffix != ".jsonl" else Path(r).resolve().parent.name
             for r in runs]
    return [n if names.count(n) == 1 else str(r) for n, r in zip(names, runs)]


def default_out_dir(runs: Sequence[str | Path]) -> Path:
    """Where ``rlfoundry plot`` writes without ``--out``: ``RUN/plots`` for one run; for
    several, ``plots_A_vs_B`` in the working directory, named after the runs (so comparing
    other runs does not overwrite it)."""
    if len(runs) == 1:
        return Path(runs[0]) / "plots"
    names = [re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "run" for label in run_labels(runs)]
    name = "plots_" + "_vs_".join(names)
    if len(name) > 100:  # many or long names: keep it a usable file name, still unique
        digest = hashlib.sha1("\0".join(map(str, runs)).encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = f"{name[:90]}_{digest}"
    return Path(name)


def kl_in_loss(run: str | Path) -> float | None:
    """The KL penalty coefficient inside the run's plotted loss (GRPO's
    ``reference_policy_kl_penalty`` > 0), from its config.yaml; None when the loss has no KL
    term or the run has no readable config (DPO's beta scales its loss, it adds no KL term)."""
    path = Path(run)
    config = (path.parent if path.suffix == ".jsonl" else path) / "config.yaml"
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # no config, or not one of ours: no note
        return None
    algorithm = data.get("algorithm") if isinstance(data, dict) else None
    if not isinstance(algorithm, dict) or algorithm.get("name") != "grpo":
        return None
    loss = algorithm.get("loss") if isinstance(algorithm.get("loss"), dict) else {}
    beta = loss.get("reference_policy_kl_penalty", loss.get("beta"))
    return float(beta) if isinstance(beta, (int, float)) and not isinstance(beta, bool) and beta > 0 else None


def is_sparse(steps: Sequence[int]) -> bool:
    """Whether a series skips steps (evaluations every N steps, a single point): drawn as
    markers, since a line would suggest values between the points."""
    return len(steps) < 2 or any(b - a > 1 for a, b in zip(steps, steps[1:]))


def _figure_file(name: str) -> str:
    return name.replace("/", "_") + ".png"


def _draw(ax, records: Records, keys: Sequence[str], label: str | None, show_key: bool) -> bool:
    """Plot ``records``' series of ``keys`` on ``ax``; legend text is the run label, the key,
    or both. Returns whether anything was drawn."""
    drawn = False
    for key in keys:
        steps, values = series(records, key)
        if not steps or all(math.isnan(v) for v in values):
            continue
        text = key if label is None else (f"{label}: {key}" if show_key else label)
        style = dict(linestyle="none", marker="o", markersize=4) if is_sparse(steps) else {}
        ax.plot(steps, values, label=text, **style)
        drawn = True
    return drawn


def build_figures(runs: Sequence[str | Path], metrics: Sequence[str] | None = None,
                  labels: Sequence[str] | None = None, panels: bool = False) -> dict[str, Any]:
    """Figure name -> matplotlib ``Figure`` for the runs' metric families (or chosen keys).

    Runs are overlaid on one set of axes, or with ``panels`` drawn side by side (one panel per
    run that has the metric; for stages of one pipeline whose step scales differ).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # matplotlib is a dependency; a broken install still gets a clear hint
        raise RLFoundryError(f"plots need matplotlib ({e}); pip install matplotlib") from e
    if not runs:
        raise DataError("no run directories given to plot")
    records = [read_metrics(r) for r in runs]
    labels = list(labels) if labels is not None else run_labels(runs)
    kl = [kl_in_loss(r) for r in runs]
    figures = {}
    for name, keys in select_plots(records, metrics).items():
        having = [i for i, r in enumerate(records) if set(keys) & set(available_keys(r))]
        if not having:
            continue
        groups = [[i] for i in having] if panels else [having]
        fig = Figure(figsize=(max(6.0, 4.2 * len(groups)), 4.0), layout="constrained")
        axes = fig.subplots(1, len(groups), squeeze=False)[0]
        for ax, group in zip(axes, groups):
            drawn = False
            for i in group:
                present = [k for k in keys if k in available_keys(records[i])]
                label = None if panels else labels[i]
                drawn |= _draw(ax, records[i], keys, label, show_key=len(present) > 1)
            if not panels:  # say which runs are missing from this overlay
                for i in sorted(set(range(len(records))) - set(having)):
                    ax.plot([], [], linestyle="none", marker="x", color="grey",
                            label=f"{labels[i]}: no {name} logged")
                    drawn = True
            ax.set_xlabel("step")
            ax.set_ylabel(Y_LABELS.get(name, name))
            title = f"{labels[group[0]]}: {name}" if panels else name
            ax.set_title(title + _kl_note(name, [(labels[i], kl[i]) for i in group], panels))
            ax.grid(alpha=0.3)
            if drawn:
                ax.legend(fontsize="small")
        figures[name] = fig
    return figures


def _kl_note(name: str, runs: Sequence[tuple[str, float | None]], panels: bool) -> str:
    """" (includes ...KL)" for a loss figure whose runs' losses include a KL penalty."""
    if name != "loss":
        return ""
    with_kl = [(label, beta) for label, beta in runs if beta is not None]
    if not with_kl:
        return ""
    if panels or len(runs) == 1:
        return f" (includes {with_kl[0][1]:g} x KL to the reference)"
    return " (includes a KL penalty: " + ", ".join(f"{label} {beta:g} x KL" for label, beta in with_kl) + ")"


def plot_runs(runs: Sequence[str | Path], out_dir: str | Path, metrics: Sequence[str] | None = None,
              labels: Sequence[str] | None = None, panels: bool = False) -> list[Path]:
    """Write :func:`build_figures` as PNGs to ``out_dir`` (``loss.png``, ``eval_accuracy.png``,
    ...); return their paths."""
    figures = build_figures(runs, metrics, labels, panels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        path = out / _figure_file(name)
        fig.savefig(path, dpi=100)
        written.append(path)
    return written
