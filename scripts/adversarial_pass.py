"""Round-2 adversarial pass over issue #15's fourteen classes (run against this tree's code).

Every case plays the attacker or the careless user with an input *not* already covered by
``tests/test_hostile_inputs.py``, ``test_checkpoint_security.py``, ``test_user_code_failures.py``
or ``test_sandbox_attacks.py``. Each runs in a forked child with a time limit (a hang is a
finding, not a stuck harness) and is classified:

* SAFE: a clear rlfoundry error naming the place, or the attack is harmless;
* UNSAFE: code execution, data loss, a hang, corruption or an escape;
* UNCLEAR: a raw traceback or a misleading message.

Usage: ``PYTHONPATH=src python scripts/adversarial_pass.py [--only CLASS] [-v]``; prints one
line per case and the counts per class. Exit status 1 when anything is not SAFE.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adversarial_cases import CASES  # noqa: E402


def _child(fn, result: str) -> None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            verdict, detail = fn()
    except BaseException as e:  # noqa: BLE001 - a raw escape is itself the finding
        verdict, detail = "UNCLEAR", "raw " + "".join(traceback.format_exception_only(type(e), e))[-600:]
    # the verdict goes to a file opened only now: a case's hostile code (a reward worker
    # inherits the descriptors) cannot write into it while it runs
    with open(result, "w") as f:
        json.dump([verdict, str(detail)[:600]], f)
    os._exit(0)


def run_case(fn, timeout: float) -> tuple[str, str, float]:
    import tempfile

    ctx = mp.get_context("fork")
    fd, result = tempfile.mkstemp(prefix="rlf-adv-verdict-")
    os.close(fd)
    proc = ctx.Process(target=_child, args=(fn, result))
    start = time.monotonic()
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(5)
        verdict, detail = "UNSAFE", f"hang: no verdict after {timeout:.0f} s"
    else:
        try:
            verdict, detail = json.loads(Path(result).read_text())
        except ValueError:
            verdict, detail = "UNSAFE", f"the case's process died without a verdict (exit {proc.exitcode})"
    os.unlink(result)
    return verdict, detail, time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="run one class (its number)")
    ap.add_argument("--case", help="run cases whose name contains this")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    # imported once here so that every forked case starts warm
    import rlfoundry.algorithms.dpo  # noqa: F401
    import rlfoundry.algorithms.grpo  # noqa: F401
    import rlfoundry.config  # noqa: F401
    import rlfoundry.rewards.sandbox  # noqa: F401
    counts: dict[str, Counter] = defaultdict(Counter)
    results = []
    for cls, name, fn, timeout in CASES:
        if args.only and str(cls) != args.only:
            continue
        if args.case and args.case not in name:
            continue
        verdict, detail, secs = run_case(fn, timeout)
        counts[cls][verdict] += 1
        results.append({"class": cls, "case": name, "verdict": verdict, "detail": detail,
                        "seconds": round(secs, 2)})
        line = f"[{cls:>2}] {verdict:<7} {name} ({secs:.1f}s)"
        if args.verbose or verdict != "SAFE":
            line += f"\n        {detail.strip()[:400]}"
        print(line, flush=True)
    print("\nclass  run  safe  unsafe  unclear")
    for cls in sorted(counts, key=int):
        c = counts[cls]
        print(f"{cls:>5} {sum(c.values()):>4} {c['SAFE']:>5} {c['UNSAFE']:>7} {c['UNCLEAR']:>8}")
    total = Counter()
    for c in counts.values():
        total.update(c)
    print(f"total {sum(total.values()):>4} {total['SAFE']:>5} {total['UNSAFE']:>7} {total['UNCLEAR']:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if total["SAFE"] == sum(total.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
