"""Render the configuration reference (docs/configuration.md) from the schema itself.

``python -m rlfoundry.config.reference > docs/configuration.md``; a test fails when the
checked-in file and the schema disagree.
"""

from __future__ import annotations

import typing

from pydantic import BaseModel

from rlfoundry.config.schema import RunConfig

HEADER = """# Configuration reference

Generated from `rlfoundry/config/schema.py` by `python -m rlfoundry.config.reference`; do not
edit by hand. Unknown keys are errors. Any key can be overridden on the command line as
`section.key=value`. Loss options (`algorithm.loss.*`) are documented with each loss class
(`rlfoundry list` names them).
"""


def _type_name(annotation) -> str:
    text = str(annotation).replace("typing.", "")
    return text.replace("<class '", "").replace("'>", "").replace("|", "\\|")


def _sub_model(annotation):
    for cand in (annotation, *typing.get_args(annotation)):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def render(model: type[BaseModel] = RunConfig, prefix: str = "") -> str:
    rows, sections = [], []
    for name, field in model.model_fields.items():
        sub = _sub_model(field.annotation)
        is_list = typing.get_origin(field.annotation) is list
        if sub is not None and not is_list:
            sections.append(render(sub, f"{prefix}{name}."))
            continue
        if sub is not None:  # a list of sections: a row for the list, a section for an item
            sections.append(render(sub, f"{prefix}{name}[]."))
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            if is_list and sub is not None:
                value = [item.model_dump() for item in value]
            default = repr(value)
        doc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | `{_type_name(field.annotation)}` | `{default}` | {doc} |")
    out = ""
    if rows:
        title = prefix.rstrip(".") or "top level"
        out += f"\n## `{title}`\n\n| key | type | default | meaning |\n|---|---|---|---|\n"
        out += "\n".join(rows) + "\n"
    return out + "".join(sections)


def render_registered() -> str:
    """The built-in loss types and advantage estimators (``algorithm.loss.type``,
    ``algorithm.advantage.estimator``), one line each from their docstrings. Names that user
    code registers are left out, so the document depends only on the library."""
    from rlfoundry.algorithms.advantages import ADVANTAGE_ESTIMATORS
    from rlfoundry.algorithms.loss_functions import LossFunctionRegistry

    out = ""
    for title, registry in (("algorithm.loss.type", LossFunctionRegistry),
                            ("algorithm.advantage.estimator", ADVANTAGE_ESTIMATORS)):
        rows = [f"| `{name}` | {doc.replace('|', chr(92) + '|')} |"
                for name, doc in registry.describe().items()
                if getattr(registry.get(name), "__module__", "").startswith("rlfoundry.")]
        out += f"\n## Values of `{title}`\n\n| name | what it is |\n|---|---|\n"
        out += "\n".join(rows) + "\n"
    return out


KIND_USE = {"preference": "DPO (preference pairs)", "prompt": "GRPO (prompts with an answer)",
            "sft": "SFT (prompt + completion)"}


def render_builtin_datasets() -> str:
    """The ``builtin:NAME`` data sets (``data.train`` / ``data.eval``), from the generators."""
    import inspect

    from rlfoundry.algorithms.grpo_config import DEFAULT_REWARDS
    from rlfoundry.data.synthetic import BUILTIN_DATASETS

    rows = []
    for name, (make, kind, size) in sorted(BUILTIN_DATASETS.items()):
        doc = " ".join((inspect.getdoc(make) or "").split("\n\n")[0].split()).replace("|", "\\|")
        rewards = ", ".join(r["name"] for r in DEFAULT_REWARDS.get(name, [])) or "-"
        rows.append(f"| `builtin:{name}` | {KIND_USE[kind]} | {size} / {max(1, size // 10)} | "
                    f"{rewards} | {doc} |")
    return ("\n## Built-in data sets\n\nSynthetic tasks generated on the fly (no download): give "
            "`data.train: builtin:NAME`; the eval split is generated too (never overlapping). "
            "`data.train_size` / `data.eval_size` set the row counts, `data.builtin_options` the "
            "generator's options. GRPO runs on a built-in prompt set get its default rewards when "
            "`algorithm.rewards` is empty.\n\n"
            "| name | for | rows (train / eval by default) | default GRPO rewards | rows look like |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def render_document() -> str:
    return HEADER + render() + render_registered() + render_builtin_datasets()


if __name__ == "__main__":
    print(render_document(), end="")
