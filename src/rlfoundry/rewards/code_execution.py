"""The ``code_execution`` reward: run model-written Python against test cases, in a sandbox.

Each completion's code (the last fenced ```python block, else the whole completion) runs in
its own sandboxed process (:mod:`rlfoundry.rewards.sandbox`) against the sample's test cases,
read from a data column (``tests`` by default). A test case is

- a string of Python run after the program in its namespace (``"assert add(2, 3) == 5"``),
  which passes when it raises nothing; or
- ``{"input": "...", "output": "..."}``: the program runs as ``__main__`` with that stdin and
  passes when its stdout equals ``output`` (trailing whitespace ignored).

The column holds a list of test cases, a JSON string of one, an APPS-style
``{"inputs": [...], "outputs": [...]}``, or one string of asserts. The reward is 1.0 when
all tests pass; when some fail, 0.0 (or the fraction passed, with ``partial_credit``); and
``failure_reward`` (default 0.0; null: no reward) when the program misbehaves: ``error``
(it raised or does not compile), ``timeout``, ``memory``, ``output_limit``, ``blocked`` (it
tried a forbidden operation), ``killed``. Every sample's reason is returned
(:class:`~rlfoundry.rewards.runner.Scores`) and counted in the metrics as
``reward/code_execution/<reason>``; samples with no tests get None (reason ``no_tests``).

The verdict is computed here, in the trainer: the sandbox never sees an expected value, it
only sends back answers (each assert's probe value, each stdin/stdout test's output; see
:mod:`rlfoundry.rewards.sandbox_checks`). ``isolation`` picks the sandbox: ``namespaces``
(default; refused with a clear error where the host cannot create namespaces) or
``process`` (a weaker fallback you must ask for). docs/reliability.md says what each isolates.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

from rlfoundry.errors import ConfigError, DataError
from rlfoundry.rewards.runner import REWARDS, Scores
from rlfoundry.rewards.sandbox import (
    MODES,
    SandboxError,
    SandboxLimits,
    check_mode,
    detect_isolation,
    run_programs,
)
from rlfoundry.rewards.sandbox_checks import prepare_tests

FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_code(completion: str) -> str:
    """The last fenced Python block of ``completion`` (an unclosed last fence runs to the end),
    else the whole completion."""
    blocks = FENCE.findall(completion)
    return blocks[-1] if blocks else completion


def parse_tests(value: Any, where: str) -> list[str | dict[str, str]] | None:
    """A sample's test cases as a list of assert strings and ``{"input", "output"}`` dicts
    (None when it has none); :class:`DataError` naming ``where`` for anything else."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = [value]  # one block of asserts
        if isinstance(value, str):
            value = [value]
    if isinstance(value, dict) and {"inputs", "outputs"} <= set(value):
        if len(value["inputs"]) != len(value["outputs"]):
            raise DataError(f"{where}: tests has {len(value['inputs'])} inputs but "
                            f"{len(value['outputs'])} outputs")
        value = [{"input": i, "output": o} for i, o in zip(value["inputs"], value["outputs"])]
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: tests must be a list of assert strings or "
                        f"{{'input', 'output'}} objects, got {type(value).__name__}")
    return [_check_test(t, f"{where}: tests[{k}]") for k, t in enumerate(value)]


def _check_test(test: Any, where: str) -> str | dict[str, str]:
    if isinstance(test, str):
        try:
            compile(test, where, "exec")
        except SyntaxError as e:
            raise DataError(f"{where} is not valid Python: {e.msg} (line {e.lineno})") from e
        return test
    if isinstance(test, dict) and set(test) >= {"input", "output"}:
        return {"input": _as_text(test["input"]), "output": _as_text(test["output"])}
    raise DataError(f"{where} must be an assert string or an {{'input', 'output'}} object, "
                    f"got {type(test).__name__} {str(test)[:80]!r}")


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


@REWARDS.register("code_execution")
def code_execution(
    prompts: Sequence[Any],
    completions: Sequence[str],
    *,
    tests: Sequence[Any] | None = None,
    tests_column: str = "tests",
    timeout: float = 5.0,
    cpu_seconds: int | None = None,
    memory_mb: int = 512,
    max_processes: int = 1,
    max_output_bytes: int = 1 << 16,
    max_file_bytes: int = 1 << 20,
    workers: int | None = None,
    partial_credit: bool = False,
    failure_reward: float | None = 0.0,
    require_isolation: bool = False,
    audit_hook: bool = True,
    preload: Sequence[str] | None = None,
    isolation: str = "namespaces",
    open_checks: str = "allow",
    tmp_mb: int = 16,
    **columns: Any,
) -> Scores:
    """1.0 if the completion's Python passes its test cases, run in a sandboxed process.

    See the module docs for test formats, outcomes and rewards.

    Limits per sample: ``timeout`` wall seconds, ``cpu_seconds`` (default: the timeout),
    ``memory_mb`` of address space, ``max_processes`` (1: no fork), ``max_output_bytes``
    of stdout + stderr, ``max_file_bytes`` per file written, ``tmp_mb`` for its working
    directory and ``/tmp`` together. At most ``workers`` samples run at once (default: the CPU
    count, at most 8). ``isolation``: ``namespaces`` (default: private namespaces and root
    filesystem, refused where the host has none) or ``process`` (the weaker fallback).
    ``require_isolation`` also insists on the seccomp filter and, as root, the switch to
    ``nobody``. ``open_checks``: ``allow`` (default) or ``reject`` tests whose reference is
    computed inside the sandbox (``assert f(x) == g(y)``, ``assert f(x)``), which a hostile
    program can satisfy without solving the task. ``audit_hook: false`` drops the diagnostic
    audit hook. ``preload``: standard modules imported before the switch to ``nobody``
    (default: none with namespaces, a common set in ``process`` mode, where ``nobody`` may
    not be able to read the standard library).
    """
    values = columns.get(tests_column) if tests_column != "tests" else tests
    if values is None:
        values = [None] * len(completions)
    if len(values) != len(completions):
        raise DataError(f"code_execution: {len(values)} '{tests_column}' values for "
                        f"{len(completions)} completions")
    limits = SandboxLimits(timeout, cpu_seconds, memory_mb, max_processes, max_output_bytes,
                           max_file_bytes, tmp_mb=tmp_mb)
    if isolation not in MODES:
        raise ConfigError(f"code_execution: isolation={isolation!r} must be one of "
                          f"{', '.join(MODES)}")
    if open_checks not in ("allow", "reject"):
        raise ConfigError(f"code_execution: open_checks={open_checks!r} must be allow or reject")
    parsed = [parse_tests(v, f"sample {i}") for i, v in enumerate(values)]
    todo = [i for i, t in enumerate(parsed) if t]
    for i in todo:
        prepare_tests(parsed[i], f"sample {i}", open_checks)  # DataError naming the sample
    if todo:
        check_mode(isolation, detect_isolation())
        if require_isolation:
            _require_isolation(isolation)
    results = run_programs([(extract_code(completions[i]), parsed[i]) for i in todo], limits,
                           workers=workers, audit_hook=audit_hook, mode=isolation,
                           preload=None if preload is None else tuple(preload))
    rewards: list[float | None] = [None] * len(completions)
    reasons = ["no_tests"] * len(completions)
    details: list[str | None] = [None] * len(completions)
    for i, r in zip(todo, results):
        reasons[i], details[i] = r.outcome, r.detail
        if r.outcome == "passed":
            rewards[i] = 1.0
        elif r.outcome == "failed":
            rewards[i] = r.passed / r.total if partial_credit else 0.0
        else:
            rewards[i] = failure_reward
    return Scores(rewards, reasons, details)


def _require_isolation(mode: str) -> None:
    iso = detect_isolation()
    missing = [name for name, ok in (("isolation: namespaces", mode == "namespaces"),
                                     ("namespaces", iso.namespaces),
                                     ("the seccomp filter", iso.seccomp),
                                     ("dropping root", iso.drop_privileges or os.geteuid() != 0))
               if not ok]
    if missing:
        raise SandboxError(f"code_execution: require_isolation is set but {', '.join(missing)} "
                           f"is not available here ({iso.notes}); {iso.describe()}")

