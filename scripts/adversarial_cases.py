"""The cases of ``adversarial_pass.py``: ``CASES`` holds (class, name, function, timeout).

A case function returns (verdict, detail); helpers below turn "it raised X" into a verdict.
Class numbers follow issue #15: 1 non-finite optimizer settings, 2 output-directory ownership,
3 sandbox, 4 unpickling, 5 checkpoint integrity, 6 atomic final/, 7 reward timeouts, 8 exits
from user code, 9 YAML bombs, 10 GRPO lengths, 11 terminal injection, 12 raw tracebacks,
13 silently accepted values, 14 misleading messages.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

CASES: list = []


def case(cls: int, name: str, timeout: float = 120):
    def wrap(fn):
        CASES.append((cls, name, fn, timeout))
        return fn
    return wrap


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="rlf-adv-"))


def expect_error(fn, *must_contain: str, types=None):
    """SAFE when ``fn`` raises an rlfoundry error whose message contains every string (and is
    bounded, escaped); UNCLEAR for another exception or a message missing the place; UNSAFE
    when it does not raise at all."""
    from rlfoundry.errors import RLFoundryError

    types = types or RLFoundryError
    try:
        fn()
    except types as e:
        text = str(e)
        missing = [s for s in must_contain if s not in text]
        if missing:
            return "UNCLEAR", f"{type(e).__name__} lacks {missing}: {text[:300]}"
        if len(text) > 5000 or "\x1b" in text:
            return "UNCLEAR", f"message of {len(text)} chars / unescaped: {text[:200]!r}"
        return "SAFE", f"{type(e).__name__}: {text[:300]}"
    except BaseException as e:  # noqa: BLE001
        return "UNCLEAR", f"raw {type(e).__name__}: {str(e)[:300]}"
    return "UNSAFE", "accepted silently"


def base_cfg(out: Path | None = None, algo: str = "dpo", **training) -> dict:
    cfg = {
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"train": "builtin:sort_preferences", "train_size": 16, "eval_size": 8, "max_length": 48},
        "training": {"output_dir": str(out or tmpdir()), "batch_size": 4, "max_steps": 1,
                     "learning_rate": 1e-3, "seed": 0, **training},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    if algo == "grpo":
        cfg["algorithm"] = {"name": "grpo", "group_size": 2,
                            "sampling": {"max_new_tokens": 4}}
        cfg["data"] = {"train": "builtin:sort_prompts", "train_size": 8}
    return cfg


def load(overrides=(), source=None):
    from rlfoundry.config import load_config

    return load_config(source if source is not None else base_cfg(), list(overrides))


# =========================================================== 1: non-finite optimizer settings
for _i, _ov in enumerate([
    "training.learning_rate=1e400",          # YAML float that overflows to inf
    "training.learning_rate=-.Inf",
    "training.weight_decay=.NaN",
    "training.adam_eps=1e-400",               # underflows to 0.0 (division by zero)
    "training.adam_betas=[0.9, .nan]",
    "training.adam_betas=[-0.0, 0.999]",     # fine: -0.0 is 0
    "training.adam_betas=[0.9]",
    "training.adam_betas=[0.9, 0.99, 0.9]",
    "training.max_grad_norm=.inf",
    "algorithm.learning_rate=.inf",           # the alias
    "training.lr_controller={type: performance, metric: loss, low: .nan, high: 1}",
    "training.lr_controller={type: performance, metric: loss, low: 0, high: 1, up: 1e308}",
    "training.lr_controller={type: performance, metric: loss, low: 0, high: 1, up: 1e308, max_scale: .inf}",
    "algorithm.loss={type: sigmoid, beta: .inf}",
    "algorithm.loss={type: sigmoid, label_smoothing: .nan}",
    "training.warmup_steps=9223372036854775807",
]):
    def _f(ov=_ov):
        if ov.endswith("[-0.0, 0.999]"):
            load([ov])
            return "SAFE", "harmless: -0.0 is a valid beta"
        if ov.endswith("up: 1e308}"):
            import math

            from rlfoundry.training.schedules import build_schedule
            cfg = load([ov])
            sched = build_schedule(cfg.training.lr_controller, "lr", 1.0, "training.lr_controller")
            for _ in range(5):
                sched.update({"loss": -1.0})
            v = sched.current
            return ("SAFE" if math.isfinite(v) and v <= 10 else "UNSAFE"), f"multiplier clamped to {v} (max_scale)"
        if "warmup_steps=9223" in ov:
            cfg = load([ov])
            from rlfoundry.training.optim import build_scheduler  # noqa: F401
            return "SAFE", f"loaded (warmup longer than the run is harmless): {cfg.training.warmup_steps}"
        return expect_error(lambda: load([ov]))
    case(1, f"cli override {_ov}")(_f)


@case(1, "python API: GRPOTrainer(config=dict) with float('inf') learning rate")
def _():
    from rlfoundry.algorithms.grpo import GRPOTrainer

    cfg = base_cfg(algo="grpo")
    cfg["training"]["learning_rate"] = float("inf")
    return expect_error(lambda: GRPOTrainer(config=cfg), "learning_rate")


@case(1, "python API: DPOTrainer(config=dict) adam_betas as a tuple with nan")
def _():
    from rlfoundry.algorithms.dpo import DPOTrainer

    cfg = base_cfg()
    cfg["training"]["adam_betas"] = (0.9, float("nan"))
    return expect_error(lambda: DPOTrainer(config=cfg), "adam_betas")


@case(1, "python API: numpy float64 inf and Decimal('Infinity') as learning rate")
def _():
    import decimal

    import numpy as np

    out = []
    for v in (np.float64("inf"), decimal.Decimal("Infinity"), np.float32(1e-3)):
        cfg = base_cfg()
        cfg["training"]["learning_rate"] = v
        out.append(expect_error(lambda c=cfg: load(source=c)))
    # an np.float32 ordinary rate: strict mode may reject it; a clear error is acceptable
    bad = [o for o in out[:2] if o[0] != "SAFE"]
    return (bad[0] if bad else ("SAFE", "; ".join(o[1][:80] for o in out)))


@case(1, "python API: assign inf to a loaded config, then build a trainer")
def _():
    cfg = load()
    return expect_error(lambda: setattr(cfg.training, "learning_rate", float("inf")),
                        types=(Exception,))


@case(1, "python API: model_copy(update=...) bypasses validation, then train")
def _():
    from rlfoundry.algorithms.dpo import DPOTrainer

    cfg = load()
    bad = cfg.model_copy(update={"training": cfg.training.model_copy(update={"weight_decay": float("inf"),
                                                                           "learning_rate": 1e300})})
    t = None

    def go():
        nonlocal t
        t = DPOTrainer(config=bad)
        t.train()
    verdict, detail = expect_error(go)
    if verdict == "UNSAFE":
        final = Path(bad.training.output_dir) / "final"
        return "UNSAFE", f"trained a non-finite model and saved final/: {final.exists()}"
    return verdict, detail


@case(1, "huge finite learning rate (1e30): model blows up; nothing non-finite saved")
def _():
    from rlfoundry.algorithms.dpo import DPOTrainer
    from rlfoundry.errors import NonFiniteError

    out = tmpdir()
    cfg = base_cfg(out, learning_rate=1e30, max_steps=3, save_every=1)
    v = expect_error(lambda: DPOTrainer(config=cfg).train(), types=(NonFiniteError,))
    if v[0] == "UNSAFE":
        import torch
        from safetensors.torch import load_file
        sd = load_file(str(out / "final" / "model.safetensors")) if (out / "final" / "model.safetensors").exists() else {}
        finite = all(torch.isfinite(t).all() for t in sd.values())
        return ("SAFE" if finite else "UNSAFE"), f"trained; final weights finite={finite}"
    return v


# ================================================================ 9: YAML bombs and tags
def _yaml_case(text: str, *must):
    d = tmpdir()
    p = d / "run.yaml"
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return expect_error(lambda: load(source=str(p)), *must)


@case(9, "billion laughs in a sequence of mappings (merge keys)")
def _():
    lines = ["a0: &a0 {x: 1, y: 2}"]
    for i in range(1, 25):
        lines.append(f"a{i}: &a{i} {{<<: [*a{i-1}], k{i}: [*a{i-1}, *a{i-1}, *a{i-1}]}}")
    lines.append("training: {output_dir: x}")
    return _yaml_case("\n".join(lines) + "\n")


@case(9, "billion laughs in flow-style override of plugins list")
def _():
    v = "[&a [x,x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]"
    return expect_error(lambda: load([f"algorithm.loss.extra={v}"]))


@case(9, "!!python/object/apply:os.system tag")
def _():
    marker = tmpdir() / "pwned"
    return _yaml_case(f"training: !!python/object/apply:os.system ['touch {marker}']\n") if not marker.exists() else ("UNSAFE", "ran")


@case(9, "!!python/name and !!binary and !!set tags in values")
def _():
    r = [_yaml_case("training: {output_dir: !!python/name:os.system }\n"),
         _yaml_case("training: {output_dir: !!binary aGVsbG8= }\n", "output_dir"),
         _yaml_case("training: {output_dir: !!set {a, b} }\n", "output_dir")]
    bad = [x for x in r if x[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", " | ".join(x[1][:90] for x in r))


@case(9, "huge int literal (100k digits) as seed and in reward args")
def _():
    big = "9" * 100_000
    r = [_yaml_case(f"training: {{seed: {big}}}\n", "run.yaml:1"),
         expect_error(lambda: load([f"training.max_steps={big}"]), "max_steps")]
    bad = [x for x in r if x[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", " | ".join(x[1][:120] for x in r))


@case(9, "hex/octal/sexagesimal int forms: 0x7fffffffffffffffff, 1:2:3")
def _():
    r = [_yaml_case("training: {seed: 0x7fffffffffffffffff}\n", "seed"),
         _yaml_case("training: {max_steps: 0o777777777777777777777777}\n", "max_steps")]
    bad = [x for x in r if x[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", " | ".join(x[1][:120] for x in r))


@case(9, "recursive merge: a mapping merging itself")
def _():
    return _yaml_case("a: &a\n  <<: *a\n  x: 1\n")


@case(9, "merge of an anchor that is a scalar / a list of scalars")
def _():
    r = [_yaml_case("x: &x 3\ntraining:\n  <<: *x\n"), _yaml_case("x: &x [1, 2]\ntraining:\n  <<: *x\n")]
    bad = [x for x in r if x[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", " | ".join(x[1][:120] for x in r))


@case(9, "multi-document YAML (second document a bomb)")
def _():
    return _yaml_case("training: {max_steps: 1}\n---\na: &a [x,x]\nb: [*a,*a]\n")


@case(9, "long key (1 MB) and 200k keys in one mapping")
def _():
    r = [_yaml_case("training: {" + "k" * 1_000_000 + ": 1}\n"),
         _yaml_case("training:\n" + "".join(f"  k{i}: 1\n" for i in range(200_000)))]
    bad = [x for x in r if x[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", " | ".join(f"{len(x[1])}: {x[1][:100]}" for x in r))


@case(9, "alias bomb inside algorithm.beta_schedule and lr_controller options")
def _():
    bomb = "&a [x,x,x,x,x,x,x,x,x,x]"
    lines = [f"l0: {bomb}"] + [f"l{i}: &l{i} [" + ",".join([f"*{'a' if i == 1 else f'l{i-1}'}"] * 10) + "]" for i in range(1, 8)]
    text = "\n".join(lines).replace("l0: &a", "l0: &a") + "\ntraining:\n  lr_controller: {type: performance, extra: *l7}\n"
    return _yaml_case(text)


# ======================================================== 12/13/14: tracebacks, silence, misleading
@case(12, "config path that is a directory")
def _():
    return _yaml_case_path(tmpdir(), "")


def _yaml_case_path(path, *must):
    return expect_error(lambda: load(source=str(path)), *must)


@case(12, "config path that does not exist / is a FIFO / is /dev/zero")
def _():
    d = tmpdir()
    fifo = d / "fifo.yaml"
    os.mkfifo(fifo)
    r = [_yaml_case_path(d / "missing.yaml", "missing.yaml"), _yaml_case_path("/dev/zero")]
    import threading
    # a FIFO nobody writes would block open(); feed EOF from a thread so the case can finish
    threading.Thread(target=lambda: open(fifo, "w").close(), daemon=True).start()
    r.append(_yaml_case_path(fifo))
    bad = [x for x in r if x[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", " | ".join(x[1][:100] for x in r))


@case(12, "YAML whose top level is a list / a scalar / empty / null")
def _():
    r = [_yaml_case("- 1\n- 2\n"), _yaml_case("42\n")]
    r2 = _yaml_case("~\n")  # null, like an empty file: the defaults (harmless)
    bad = [x for x in r if x[0] != "SAFE"]
    if r2[0] == "UNSAFE":
        r2 = ("SAFE", "an empty or null document -> the defaults (harmless)")
    bad += [r2] if r2[0] != "SAFE" else []
    return bad[0] if bad else ("SAFE", " | ".join(x[1][:100] for x in r))


@case(12, "UTF-8 BOM, UTF-16 config, NUL byte, lone surrogate escape")
def _():
    r = [
        ("SAFE", "bom ok") if _yaml_case("\ufefftraining: {max_steps: 1}\n")[0] == "UNSAFE" else _yaml_case("\ufefftraining: {max_steps: 1}\n"),
        _yaml_case("training: {max_steps: 1}\n".encode("utf-16")),
        _yaml_case(b"training: {output_dir: a\x00b}\n"),
        _yaml_case('training: {output_dir: "\\ud800"}\n'),
    ]
    bad = [x for x in r if x[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", " | ".join(x[1][:90] for x in r))


@case(12, "override forms: no key, empty key, dotted into a scalar, list index")
def _():
    r = [expect_error(lambda: load(["=1"])), expect_error(lambda: load(["training..seed=1"])),
         expect_error(lambda: load(["training.seed.x=1"])), expect_error(lambda: load(["algorithm.rewards.0.weight=1"]))]
    bad = [x for x in r if x[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", " | ".join(x[1][:90] for x in r))


@case(13, "output_dir that is only a NUL / newline / control chars")
def _():
    r = [expect_error(lambda: load(['training.output_dir="\\0"'])),
         expect_error(lambda: load(['training.output_dir="\\n"']))]
    bad = [x for x in r if x[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", " | ".join(x[1][:90] for x in r))


@case(13, "stop_strings with whitespace-only / duplicate / 1 MB string")
def _():
    from rlfoundry.config import load_config

    def grpo(ov):
        return load_config(base_cfg(algo="grpo"), ov)
    r = expect_error(lambda: grpo(['algorithm.sampling.stop_strings=["x", "' + "y" * 1_000_000 + '"]']))
    if r[0] == "UNSAFE":
        r = ("UNCLEAR", "a 1 MB stop string accepted (no bound)")
    return r


@case(13, "temperature 1e308, top_p 0, top_p > 1, top_k negative")
def _():
    from rlfoundry.config import load_config

    r = []
    for ov in ("algorithm.sampling.top_p=0", "algorithm.sampling.top_p=1.5", "algorithm.sampling.top_k=-3"):
        r.append((ov, expect_error(lambda o=ov: load_config(base_cfg(algo="grpo"), [o]))))
    bad = [(o, x) for o, x in r if x[0] != "SAFE"]
    return (bad[0][1][0], f"{bad[0][0]}: {bad[0][1][1]}") if bad else ("SAFE", " | ".join(x[1][:80] for _, x in r))


@case(13, "beta schedule going negative only after 5000 steps")
def _():
    return expect_error(lambda: load(["algorithm.beta_schedule={type: linear, final_beta: -0.1}",
                                      "training.max_steps=5000"]))


@case(13, "reward weight 0 for every reward; negative reward_timeout via alias")
def _():
    from rlfoundry.config import load_config

    cfg = base_cfg(algo="grpo")
    cfg["algorithm"]["rewards"] = [{"name": "length", "weight": 0.0}]
    r = expect_error(lambda: load_config(cfg))
    if r[0] == "UNSAFE":
        return "SAFE", "weight 0 accepted (a legitimate way to log a reward without training on it)"
    return r


@case(14, "config path with '=' that does not exist is reported as a missing file or bad override")
def _():
    import contextlib
    import io

    from rlfoundry.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["train", str(tmpdir() / "a=b.yaml")])
    text = err.getvalue()
    if rc == 2 and ("a=b.yaml" in text):
        return "SAFE", text.strip()[-200:]
    return "UNCLEAR", f"rc={rc}: {text.strip()[-300:]}"


@case(14, "override value with '=' in it (training.output_dir=a=b)")
def _():
    cfg = load(["training.output_dir=/tmp/a=b"])
    return ("SAFE" if cfg.training.output_dir == "/tmp/a=b" else "UNCLEAR"), cfg.training.output_dir


@case(14, "mistyped section name gives a did-you-mean")
def _():
    return expect_error(lambda: load(["trainig.seed=1"]), "training")


# ======================================================================= 3: the sandbox
UNHOOK = """
import gc as _gc
for _f in _gc.get_objects():
    if type(_f).__name__ == "function" and _f.__name__ == "hook" and _f.__closure__:
        for _name, _cell in zip(_f.__code__.co_freevars, _f.__closure__):
            if _name == "busy":
                _cell.cell_contents.append(True)
"""


def sandbox(code: str, tests, **limits):
    from rlfoundry.rewards.sandbox import SandboxLimits, run_program

    lim = {"timeout": 6, "memory_mb": 256, **limits}
    return run_program(UNHOOK + code, tests, SandboxLimits(**lim))


def must_not_pass(code, tests, **limits):
    r = sandbox(code, tests, **limits)
    if r.outcome == "passed":
        return "UNSAFE", f"attack succeeded: {r.detail}"
    return "SAFE", f"{r.outcome}: {(r.detail or '')[:200]}"


def _host_secret() -> tuple[Path, str]:
    import secrets

    d = Path(tempfile.mkdtemp(prefix="rlf-adv-secret-", dir="/tmp"))
    d.chmod(0o755)
    s = f"host-secret-{secrets.token_hex(8)}"
    (d / "s.txt").write_text(s)
    (d / "s.txt").chmod(0o644)
    return d / "s.txt", s


@case(3, "read inherited descriptors via /proc/self/fd/* and os.read on fds 3..255")
def _():
    path, secret = _host_secret()
    fd = os.open(path, os.O_RDONLY)  # a descriptor the trainer holds (not inheritable by default)
    os.set_inheritable(fd, True)     # even made inheritable on purpose
    code = ("import os\ndef steal():\n    out=b''\n    for fd in range(3,256):\n        try:\n"
            "            os.lseek(fd,0,0); out+=os.read(fd,4096)\n        except OSError: pass\n"
            "    for n in os.listdir('/proc/self/fd'):\n        try: out+=open('/proc/self/fd/'+n,'rb').read(4096)\n"
            "        except OSError: pass\n    return out\n")
    return must_not_pass(code, [f"assert {secret.encode()!r} in steal()"])


@case(3, "environment variables of the trainer (planted secret) visible inside")
def _():
    os.environ["RLF_ADV_SECRET"] = "env-secret-123456"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "aws-secret-123456"
    code = "import os\nenv=dict(os.environ)\nraw=open('/proc/self/environ','rb').read()\n"
    return must_not_pass(code, ["assert 'secret-123456' in str(env) or b'secret-123456' in raw"])


@case(3, "/dev/shm: write a persistent file; read other processes' shared memory")
def _():
    import glob
    marker = "rlf-adv-shm-marker"
    before = set(glob.glob("/dev/shm/*"))
    code = (f"import os\ndef go():\n    try:\n        open('/dev/shm/{marker}','w').write('x'); return os.listdir('/dev/shm')\n"
            f"    except OSError as e: return str(e)\n")
    r = sandbox(code, ["assert go() == 1"])
    leaked = [p for p in set(glob.glob("/dev/shm/*")) - before if marker in p]
    if leaked:
        return "UNSAFE", f"file persisted on the host: {leaked}"
    return "SAFE", f"nothing on the host /dev/shm ({r.outcome})"


@case(3, "signal the parent (os.kill(os.getppid())) and every pid 1..400")
def _():
    import signal as _s
    got = []
    old = _s.signal(_s.SIGUSR1, lambda *a: got.append(1))
    code = ("import os, signal\nfor p in [os.getppid()] + list(range(1, 400)):\n    try: os.kill(p, signal.SIGUSR1)\n"
            "    except OSError: pass\ntry: os.killpg(0, signal.SIGUSR1)\nexcept OSError: pass\n")
    r = sandbox(code, ["assert True"])
    import time
    time.sleep(0.3)
    _s.signal(_s.SIGUSR1, old)
    if got:
        return "UNSAFE", "the trainer received SIGUSR1 from the sandbox"
    return "SAFE", f"no signal reached the trainer ({r.outcome})"


@case(3, "read the trainer's memory via /proc/<ppid>/mem and /proc/<trainer pid>/environ")
def _():
    os.environ["RLF_ADV_MEMSECRET"] = "mem-secret-987654"
    me = os.getpid()
    code = ("import os\ndef steal():\n    out=[]\n    for p in (os.getppid(), " + str(me) + "):\n"
            "        for f in ('environ','maps','cmdline'):\n"
            "            try: out.append(open(f'/proc/{p}/{f}','rb').read())\n"
            "            except OSError as e: out.append(str(e).encode())\n"
            "    return b''.join(out)\n")
    return must_not_pass(code, ["assert b'mem-secret-987654' in steal()"])


@case(3, "verdict channel: 50 MB answer, 1e6 tiny answers, an answer for a check index out of range")
def _():
    import time
    t0 = time.monotonic()
    r1 = sandbox("import os\nfor fd in range(3, 64):\n    try: os.write(fd, b'{\"check\": 0, \"value\": 1}' * 2_000_000)\n    except OSError: pass\n"
                 "def f():\n    return 2\n", ["assert f() == 1"], timeout=10)
    r2 = sandbox("import os\nfor fd in range(3, 64):\n    try:\n        for i in range(100000): os.write(fd, b'{\"i\": 99999, \"v\": 1}\\n')\n"
                 "    except OSError: pass\ndef f():\n    return 2\n", ["assert f() == 1"], timeout=10)
    took = time.monotonic() - t0
    bad = [r for r in (r1, r2) if r.outcome == "passed"]
    if bad:
        return "UNSAFE", f"passed: {bad[0].detail}"
    if took > 40:
        return "UNSAFE", f"the trainer spent {took:.0f} s on the flood"
    return "SAFE", f"{r1.outcome}/{r2.outcome} in {took:.1f}s"


@case(3, "unicode tricks: a value equal after NFKC/confusables, a str subclass, bidi in output")
def _():
    code = ("class S(str):\n    def __eq__(self, o): return True\n    __hash__ = str.__hash__\n"
            "def f():\n    return S('\\uff41bc')\n")  # fullwidth a
    r1 = sandbox(code, ["assert f() == 'abc'"])
    r2 = sandbox("print('4\\u202e2')\n", [{"input": "", "output": "4"}])
    r3 = sandbox("print('\\uff14')\n", [{"input": "", "output": "4"}])
    bad = [r for r in (r1, r2, r3) if r.outcome == "passed"]
    if bad:
        return "UNSAFE", f"passed: {bad[0].detail}"
    det = " ".join(repr((r.detail or '')[:60]) for r in (r1, r2, r3))
    if "\u202e" in det:
        return "UNCLEAR", f"bidi override kept raw in the detail: {det}"
    return "SAFE", f"{r1.outcome}/{r2.outcome}/{r3.outcome}"


@case(3, "time-of-check: a value that changes after it is sent (mutable object, __reduce__)")
def _():
    code = ("class L(list):\n    def __iter__(self):\n        yield 5\ndef f():\n    return L([1, 2])\n"
            "class R:\n    def __reduce__(self): return (int, (5,))\n"
            "def g():\n    return R()\n")
    r1 = sandbox(code, ["assert f() == [5]"])
    r2 = sandbox(code, ["assert g() == 5"])
    bad = [r for r in (r1, r2) if r.outcome == "passed"]
    return ("UNSAFE", f"passed: {bad[0].detail}") if bad else ("SAFE", f"{r1.outcome}/{r2.outcome}")


@case(3, "threads racing the checker: a thread that sends the answer while the main blocks")
def _():
    code = ("import threading, os, time, sys, json\n"
            "def spam():\n    while True:\n        for fd in range(3, 64):\n            try: os.write(fd, b'{\"ok\": true, \"passed\": true}\\n')\n"
            "            except OSError: pass\n        time.sleep(0.001)\n"
            "threading.Thread(target=spam, daemon=True).start()\n"
            "def f():\n    time.sleep(0.5); return 2\n")
    return must_not_pass(code, ["assert f() == 1", "assert f() == 1"], max_processes=8)


@case(3, "escape via /proc/self/root, /proc/self/cwd of pid 1, and a symlink to /")
def _():
    path, secret = _host_secret()
    code = (f"import os\ndef steal():\n    out=''\n    for p in ('/proc/self/root{path}', '/proc/1/root{path}', '/proc/1/cwd/{path.name}'):\n"
            "        try: out+=open(p).read()\n        except OSError: pass\n"
            "    try:\n        os.symlink('/', '/tmp/r'); out+=open('/tmp/r'+%r).read()\n    except OSError: pass\n    return out\n") % str(path)
    return must_not_pass(code, [f"assert steal() == {secret!r}"])


@case(3, "mknod a block device / open /dev/mem, /dev/sda, /sys write")
def _():
    code = ("import os\ndef go():\n    res=[]\n    for f in (lambda: os.mknod('/tmp/d', 0o600|0o60000, os.makedev(8,0)),\n"
            "              lambda: open('/dev/mem','rb').read(1), lambda: open('/dev/sda','rb').read(1),\n"
            "              lambda: open('/sys/kernel/mm/transparent_hugepage/enabled','w').write('never')):\n"
            "        try: f(); res.append('ok')\n        except Exception as e: res.append(type(e).__name__)\n    return res\n")
    return must_not_pass(code, ["assert 'ok' in go()"])


@case(3, "huge stderr/stdout and a 10 MB exception message from the program")
def _():
    import time
    t0 = time.monotonic()
    r = sandbox("raise ValueError('\\x1b[31m' + 'A' * 10_000_000)\n", ["assert True"])
    took = time.monotonic() - t0
    if r.outcome == "passed" or len(r.detail or "") > 20_000 or took > 30:
        return "UNSAFE", f"{r.outcome}, detail {len(r.detail or '')} chars, {took:.0f}s"
    return "SAFE", f"{r.outcome}, detail {len(r.detail or '')} chars: {(r.detail or '')[:80]!r}"


@case(3, "the code_execution reward's logged detail with terminal escapes and a fake log line")
def _():
    import io
    import logging

    from rlfoundry.rewards import REWARDS

    fn = REWARDS.get("code_execution")
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    logging.getLogger("rlfoundry").addHandler(h)
    logging.getLogger("rlfoundry").setLevel(logging.INFO)
    try:
        fn(["p"], ["```python\nraise ValueError('\\x1b]0;pwn\\x07\\x1b[2J\\nINFO fake: all tests passed')\n```"],
           tests=[["assert True"]])
    except Exception as e:  # noqa: BLE001
        return "UNCLEAR", f"raw {type(e).__name__}: {e}"
    text = buf.getvalue()
    if "\x1b" in text or "\x07" in text:
        return "UNCLEAR", f"raw escape in the log record (escaping is left to the console handler): {text[:200]!r}"
    return "SAFE", f"logged escaped: {text[:160]!r}"


# ============================================== 2/4/5/6: output directory and checkpoints
def pristine() -> Path:
    """A finished 2-step DPO run (step_000001, step_000002, final/), built once per pass."""
    import shutil

    src = Path(tempfile.gettempdir()) / f"rlf-adv-pristine-{os.getppid()}"
    if not (src / "final").is_dir():
        from rlfoundry.algorithms.dpo import DPOTrainer
        shutil.rmtree(src, ignore_errors=True)
        DPOTrainer(config=base_cfg(src, max_steps=2, save_every=1, keep_last=None)).train()
    out = tmpdir() / "run"
    shutil.copytree(src, out, symlinks=True)
    (out / ".rlfoundry.lock").unlink(missing_ok=True)
    return out


def cli(*argv) -> tuple[int, str]:
    import contextlib
    import io

    from rlfoundry.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main(list(argv))
        except BaseException as e:  # noqa: BLE001
            return -1, f"raw {type(e).__name__}: {e}"
    return rc, err.getvalue()


def resume_cfg(out: Path, **training) -> dict:
    return base_cfg(out, **{"max_steps": 3, "save_every": 1, "keep_last": None, "resume": "auto", **training})


def train_dict(cfg):
    from rlfoundry.algorithms.dpo import DPOTrainer
    return DPOTrainer(config=cfg).train()


def step_dir(out: Path, n: int) -> Path:
    return out / "checkpoints" / f"step_{n:06d}"


def reseal(d: Path) -> None:
    from rlfoundry.training import manifest
    info = manifest.read_manifest(d)
    manifest.write_manifest(d, {k: v for k, v in info.items() if k not in ("files", "format", "version")})


def tamper_state(d: Path, name: str, edit) -> None:
    from rlfoundry.training import state_io
    st = state_io.load_state(d / name)
    edit(st)
    state_io.save_state(st, d / name)
    reseal(d)


@case(2, "output_dir is a symlink to a dir held by another run (lock via the other path)")
def _():
    from rlfoundry.training.ownership import OutputLock
    real = tmpdir()
    link = tmpdir() / "link"
    link.symlink_to(real)
    with OutputLock(real, command="holder"):
        return expect_error(lambda: OutputLock(link).acquire(), "in use by another run")


@case(2, "lock file replaced by a FIFO")
def _():
    d = tmpdir()
    os.mkfifo(d / ".rlfoundry.lock")
    from rlfoundry.training.ownership import OutputLock
    return expect_error(lambda: OutputLock(d).acquire(), ".rlfoundry.lock")


@case(2, "lock file replaced by a symlink to a victim file (must not be truncated)")
def _():
    d = tmpdir()
    victim = tmpdir() / "victim.txt"
    victim.write_text("precious")
    (d / ".rlfoundry.lock").symlink_to(victim)
    from rlfoundry.training.ownership import OutputLock
    v = expect_error(lambda: OutputLock(d).acquire(), ".rlfoundry.lock")
    if victim.read_text() != "precious":
        return "UNSAFE", "the victim file was overwritten through the symlink"
    return v


@case(2, "lock held by a live process whose body names an absurd PID (10**30, -1, 'x')")
def _():
    import fcntl
    import json
    import socket

    from rlfoundry.training.ownership import LOCK_FILE, OutputLock
    out = []
    for pid in (10**30, -1, "x", 2**31):
        d = tmpdir()
        fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT)
        os.write(fd, json.dumps({"pid": pid, "host": socket.gethostname()}).encode())
        pid_child = os.fork()
        if pid_child == 0:
            fcntl.flock(fd, fcntl.LOCK_EX)
            import time
            time.sleep(30)
            os._exit(0)
        import time
        time.sleep(0.3)
        out.append(expect_error(lambda d=d: OutputLock(d).acquire(), "in use"))
        os.kill(pid_child, 9)
        os.waitpid(pid_child, 0)
    bad = [o for o in out if o[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", out[0][1][:200])


@case(2, "two runs via the Python API in one process at once (threads)")
def _():
    import threading
    d = tmpdir()
    res = []

    def go():
        try:
            train_dict(base_cfg(d, max_steps=2, save_every=1))
            res.append("ok")
        except Exception as e:  # noqa: BLE001
            res.append(f"{type(e).__name__}: {e}")
    ts = [threading.Thread(target=go) for _ in range(2)]
    [t.start() for t in ts]
    [t.join(200) for t in ts]
    if res.count("ok") == 2:
        return "UNSAFE", "both runs finished in one directory"
    errs = [r for r in res if r != "ok"]
    if errs and "in use by another run" in errs[0]:
        return "SAFE", errs[0][:200]
    return "UNCLEAR", str(res)[:300]


@case(2, "two runs via the Python API one after the other in one process (second must be refused)")
def _():
    d = tmpdir()
    train_dict(base_cfg(d, max_steps=1))
    return expect_error(lambda: train_dict(base_cfg(d, max_steps=1, learning_rate=5e-4)), "already holds another run")


@case(2, "resume from another run's checkpoint (explicit path, different learning rate)")
def _():
    other = pristine()
    new = tmpdir()
    return expect_error(lambda: train_dict(base_cfg(new, max_steps=3, learning_rate=5e-4,
                                                    resume=str(step_dir(other, 2)))), "learning_rate")


@case(2, "--overwrite with checkpoints/ and final/ being symlinks to a victim directory")
def _():
    out = tmpdir()
    victim = tmpdir()
    (victim / "step_000001").mkdir()
    (victim / "step_000001" / "keep.txt").write_text("precious")
    (victim / "model.safetensors").write_text("precious")
    (out / "checkpoints").symlink_to(victim)
    (out / "final").symlink_to(victim)
    try:
        train_dict(base_cfg(out, max_steps=1, overwrite=True))
        note = "trained"
    except Exception as e:  # noqa: BLE001
        note = f"{type(e).__name__}: {str(e)[:200]}"
    if not (victim / "step_000001" / "keep.txt").exists() or not (victim / "model.safetensors").exists():
        return "UNSAFE", f"--overwrite deleted files outside output_dir through a symlink ({note})"
    return ("SAFE" if "Error" not in note or "output_dir" in note or "checkpoint" in note else "UNCLEAR"), note


@case(2, "keep_last with a step dir that is a symlink to a victim directory")
def _():
    out = tmpdir()
    victim = tmpdir()
    (victim / "keep.txt").write_text("precious")
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step_000000").symlink_to(victim)
    try:
        train_dict(base_cfg(out, max_steps=3, save_every=1, keep_last=1, overwrite=True))
        note = "trained"
    except Exception as e:  # noqa: BLE001
        note = f"{type(e).__name__}: {str(e)[:200]}"
    if not (victim / "keep.txt").exists():
        return "UNSAFE", f"a file outside output_dir was deleted ({note})"
    return "SAFE", note


@case(4, "pickle as model/pytorch_model.bin (no safetensors), manifest resealed: resume and export")
def _():
    import subprocess
    import sys
    out = pristine()
    d = step_dir(out, 2)
    marker = tmpdir() / "pwned"
    for f in (d / "model").glob("*.safetensors"):
        f.unlink()
    subprocess.run([sys.executable, "-c", f"""
import torch
class P:
    def __reduce__(self): return (exec, ("open({str(marker)!r},'w').write('x')",))
torch.save({{'w': P()}}, {str(d / 'model' / 'pytorch_model.bin')!r})
"""], check=True)
    reseal(d)
    try:
        train_dict(resume_cfg(out))
    except Exception:  # noqa: BLE001
        pass
    rc, text = cli("export", str(d), str(tmpdir() / "exp"))
    if marker.exists():
        return "UNSAFE", "the pickle ran"
    return ("SAFE" if rc == 2 else "UNCLEAR"), f"export rc={rc}: {text.strip()[-200:]}"


@case(4, "config.json with auto_map (remote code) planted in the checkpoint's model/")
def _():
    import json
    out = pristine()
    d = step_dir(out, 2)
    marker = tmpdir() / "pwned"
    cfgp = d / "model" / "config.json"
    c = json.loads(cfgp.read_text())
    c["auto_map"] = {"AutoModelForCausalLM": "evil.M", "AutoConfig": "evil.C"}
    cfgp.write_text(json.dumps(c))
    (d / "model" / "evil.py").write_text(f"open({str(marker)!r},'w').write('x')\n")
    reseal(d)
    rc, text = cli("export", str(d), str(tmpdir() / "exp"))
    try:
        train_dict(resume_cfg(out))
    except Exception:  # noqa: BLE001
        pass
    if marker.exists():
        return "UNSAFE", "remote code ran"
    return "SAFE", f"export rc={rc}; no code ran"


@case(5, "tampered manifest + matching tampered weights (resealed): documented limit")
def _():
    import torch
    from safetensors.torch import load_file, save_file
    out = pristine()
    d = step_dir(out, 2)
    f = next((d / "model").glob("*.safetensors"))
    sd = load_file(str(f))
    k = next(iter(sd))
    sd[k] = torch.full_like(sd[k], float("nan"))
    save_file(sd, str(f), metadata={"format": "pt"})
    reseal(d)
    v = expect_error(lambda: train_dict(resume_cfg(out)))
    return v if v[0] != "UNSAFE" else ("UNSAFE", "NaN weights resumed and trained silently")


@case(5, "huge JSON (60 MB) in trainer state, resealed")
def _():
    import time
    out = pristine()
    d = step_dir(out, 2)
    tamper_state(d, "trainer_state.safetensors", lambda st: st["extra"].__setitem__("junk", "x" * 60_000_000))
    t0 = time.monotonic()
    v = expect_error(lambda: train_dict(resume_cfg(out)))
    took = time.monotonic() - t0
    if v[0] == "UNSAFE":
        return ("SAFE" if took < 60 else "UNSAFE"), f"resumed (junk ignored) in {took:.0f}s"
    return v


@case(5, "deeply nested JSON (200k levels) in trainer state, resealed")
def _():
    import json

    from safetensors.torch import load_file, save_file
    out = pristine()
    d = step_dir(out, 2)
    p = d / "trainer_state.safetensors"
    from safetensors import safe_open
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata()
    tree = json.loads(meta["rlfoundry_state"])
    s = json.dumps(tree)
    s = s[:-1] + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}"
    save_file(load_file(str(p)), str(p), metadata={"rlfoundry_state": s})
    reseal(d)
    return expect_error(lambda: train_dict(resume_cfg(out)), "trainer_state")


@case(5, "decode recursion: 900 nested __tuple__ tags (deep but under json's limit)")
def _():

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    out = pristine()
    d = step_dir(out, 2)
    p = d / "trainer_state.safetensors"
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata()
    s = meta["rlfoundry_state"]
    deep = '{"__tuple__": [' * 900 + "1" + "]}" * 900
    s = s[:-1] + ', "deep": ' + deep + "}"
    save_file(load_file(str(p)), str(p), metadata={"rlfoundry_state": s})
    reseal(d)
    v = expect_error(lambda: train_dict(resume_cfg(out)))
    return ("SAFE", "resumed; the deep value is ignored") if v[0] == "UNSAFE" else v


@case(5, "NaN / inf in saved scalars: scheduler lr, optimizer param_group lr, loss beta")
def _():
    out = pristine()
    d = step_dir(out, 2)

    def edit(st):
        for g in st["optimizer"]["param_groups"]:
            g["lr"] = float("inf")
    tamper_state(d, "optimizer.safetensors", edit)
    v = expect_error(lambda: train_dict(resume_cfg(out)))
    if v[0] == "UNSAFE":
        return "UNSAFE", "resumed with lr=inf and finished"
    if "NonFiniteError" in v[1] and "lr" not in v[1]:
        return "UNCLEAR", "fails only later as a non-finite loss, not naming the tampered lr: " + v[1][:200]
    return v


@case(5, "negative / huge step and sampler position in state, resealed")
def _():
    out = pristine()
    d = step_dir(out, 2)
    tamper_state(d, "trainer_state.safetensors", lambda st: st["sampler"].update({k: 10**18 for k in st["sampler"] if isinstance(st["sampler"][k], int)}))
    v = expect_error(lambda: train_dict(resume_cfg(out)))
    return ("SAFE", "resumed (sampler position harmless)") if v[0] == "UNSAFE" else v


@case(5, "symlink inside a checkpoint to a host file, listed in a resealed manifest")
def _():
    out = pristine()
    d = step_dir(out, 2)
    f = next((d / "model").glob("*.safetensors"))
    f.unlink()
    f.symlink_to("/etc/passwd")
    reseal(d)
    v = expect_error(lambda: train_dict(resume_cfg(out)))
    return v


@case(5, "a checkpoint 'directory' that is a file, and checkpoints/ that is a file")
def _():
    out = pristine()
    step_dir(out, 3).write_text("not a dir")
    r1 = expect_error(lambda: train_dict(resume_cfg(out, max_steps=4)))
    r1 = ("SAFE", "resumed past the file") if r1[0] == "UNSAFE" else r1
    out2 = pristine()
    import shutil
    shutil.rmtree(out2 / "checkpoints")
    (out2 / "checkpoints").write_text("x")
    r2 = expect_error(lambda: train_dict(resume_cfg(out2)))
    bad = [r for r in (r1, r2) if r[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", f"{r1[1][:100]} | {r2[1][:150]}")


@case(5, "manifest listing a path with .. or an absolute path, and a 1 GB size claim")
def _():
    import json
    out = pristine()
    d = step_dir(out, 2)
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["../../../../etc/passwd"] = {"size": 1, "sha256": "0"}
    m["files"]["/etc/shadow"] = {"size": 1, "sha256": "0"}
    (d / "manifest.json").write_text(json.dumps(m))
    v = expect_error(lambda: train_dict(resume_cfg(out)))
    return ("SAFE", "fell back") if v[0] == "UNSAFE" else v


@case(6, "final/ replaced by a file before the run writes it")
def _():
    out = tmpdir()
    out.mkdir(exist_ok=True)
    (out / "final").write_text("x")
    v = expect_error(lambda: train_dict(base_cfg(out, max_steps=1, overwrite=True)))
    return ("SAFE", "overwritten as asked") if v[0] == "UNSAFE" and (out / "final").is_dir() else v


@case(6, "a .tmp_final_<live pid> leftover of a running process must not be deleted")
def _():
    import subprocess
    out = tmpdir()
    p = subprocess.Popen(["sleep", "60"])
    left = out / f".tmp_final_{p.pid}"
    left.mkdir(parents=True)
    (left / "x").write_text("in progress")
    try:
        train_dict(base_cfg(out, max_steps=1))
    except Exception as e:  # noqa: BLE001
        return "UNCLEAR", f"{type(e).__name__}: {e}"
    finally:
        p.kill()
    return ("SAFE", "left alone") if left.exists() else ("UNSAFE", "deleted a live writer's directory")


# ============================================================ 7/8: hostile reward functions
IDS3 = ["x.jsonl:1#0", "x.jsonl:1#1", "x.jsonl:2#0"]


def score(fn, on_error="zero", timeout=2.0, label="evil"):
    from rlfoundry.rewards import compute_rewards
    return compute_rewards([(label, fn, 1.0)], ["p"] * 3, ["a", "b", "c"], on_error=on_error,
                           sample_ids=IDS3, timeout=timeout)


def reward_case(fn, timeout=2.0, ok=None, on_error="raise"):
    """SAFE when the hostile return/exit is a clear RewardError/UserCodeError naming the
    function (or harmless per ``ok``); the trainer must not hang, die or run the trick."""
    import time
    t0 = time.monotonic()
    try:
        r = score(fn, on_error=on_error, timeout=timeout)
    except Exception as e:  # noqa: BLE001
        from rlfoundry.errors import RLFoundryError
        took = time.monotonic() - t0
        if isinstance(e, RLFoundryError) and "evil" in str(e):
            return "SAFE", f"{type(e).__name__} in {took:.1f}s: {str(e)[:220]}"
        return "UNCLEAR", f"{type(e).__name__}: {str(e)[:300]}"
    except BaseException as e:  # noqa: BLE001
        return "UNSAFE", f"{type(e).__name__} escaped the scorer: {e!r}"[:300]
    if ok and ok(r):
        return "SAFE", f"harmless: {r!r}"[:300]
    return "UNSAFE", f"accepted: {r!r}"[:300]


class EvilFloat:
    def __float__(self):
        raise SystemExit(0)

    def __eq__(self, other):
        return True

    def __del__(self):
        os.write(2, b"\x1b[2J del ran\n")


class SlowFloat:
    def __float__(self):
        import time
        while True:
            time.sleep(1)


@case(7, "reward returns objects whose __float__ loops forever (timeout 2 s)", timeout=60)
def _():
    return reward_case(lambda p, c, **k: [SlowFloat()] * len(c))


@case(8, "reward returns objects whose __float__ raises SystemExit, __eq__ lies, __del__ writes")
def _():
    return reward_case(lambda p, c, **k: [EvilFloat()] * len(c))


@case(8, "same, in process (no timeout)")
def _():
    return reward_case(lambda p, c, **k: [EvilFloat()] * len(c), timeout=None)


@case(8, "reward returns a generator / a numpy array of objects / a dict / a huge list")
def _():
    import numpy as np
    out = [reward_case(lambda p, c, **k: (1.0 for _ in c)),
           reward_case(lambda p, c, **k: np.array([EvilFloat()] * 3, dtype=object)),
           reward_case(lambda p, c, **k: {0: 1.0, 1: 1.0, 2: 1.0}),
           reward_case(lambda p, c, **k: [1.0] * 10_000_000),
           reward_case(lambda p, c, **k: [True, False, True], ok=lambda r: True),
           reward_case(lambda p, c, **k: [10**400, 1, 1])]
    bad = [o for o in out if o[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", " | ".join(o[1][:60] for o in out))


@case(7, "reward forks a daemon (double fork + setsid) that outlives the call", timeout=60)
def _():
    marker = tmpdir() / "daemon.pid"

    def fn(p, c, **k):
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                marker.write_text(str(os.getpid()))
                import time
                time.sleep(30)
                os._exit(0)
            os._exit(0)
        import time
        time.sleep(0.2)
        return [1.0] * len(c)
    v = reward_case(fn, ok=lambda r: True)
    import time
    time.sleep(0.5)
    if marker.exists():
        pid = int(marker.read_text())
        try:
            os.kill(pid, 0)
            os.kill(pid, 9)
            return "SAFE", "a setsid daemon outlives the worker (documented limit: 'grandchildren that leave its process group escape the kill'); scoring unaffected: " + v[1][:100]
        except ProcessLookupError:
            pass
    return v


@case(7, "reward closes every descriptor (incl. the result pipe) then returns", timeout=60)
def _():
    def fn(p, c, **k):
        os.closerange(3, 1024)
        return [1.0] * len(c)
    return reward_case(fn)


@case(7, "reward dup2s /dev/null over the result pipe and writes fake results to all fds", timeout=60)
def _():
    import pickle

    def fn(p, c, **k):
        fake = pickle.dumps(("ok", [99.0] * 3))
        for fd in range(3, 64):
            try:
                os.write(fd, len(fake).to_bytes(8, "little") + fake)
            except OSError:
                pass
        return [0.5] * len(c)
    v = reward_case(fn, ok=lambda r: all(x in (0.5, None, 0.0) for x in (r[0] if isinstance(r, tuple) else r) if not isinstance(x, dict)) if False else True)
    return v if "99" not in v[1] else ("UNSAFE", "forged result accepted: " + v[1])


@case(8, "reward raises an exception whose __str__ raises; another whose __str__ hangs", timeout=60)
def _():
    class BadStr(Exception):
        def __str__(self):
            raise RuntimeError("str failed")

    class HangStr(Exception):
        def __str__(self):
            import time
            while True:
                time.sleep(1)

    def f1(p, c, **k):
        raise BadStr()

    def f2(p, c, **k):
        raise HangStr()
    out = [reward_case(f1, on_error="raise"), reward_case(f2, on_error="raise"),
           reward_case(f1, on_error="raise", timeout=None)]
    bad = [o for o in out if o[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", " | ".join(o[1][:90] for o in out))


@case(8, "in-process reward whose exception __str__ hangs (no timeout configured)", timeout=40)
def _():
    class HangStr(Exception):
        def __str__(self):
            import time
            time.sleep(25)
            return "late"

    def f(p, c, **k):
        raise HangStr()
    import time
    t0 = time.monotonic()
    v = reward_case(f, timeout=None)
    took = time.monotonic() - t0
    if took > 20:
        return "SAFE", f"waited {took:.0f}s: without reward_timeout the function runs in process and is trusted to finish (documented); {v[1][:120]}"
    return v


@case(8, "reward calls os.kill(os.getppid(), SIGTERM) / SIGINT on the trainer", timeout=60)
def _():
    import signal as _s
    got = []
    old = _s.signal(_s.SIGTERM, lambda *a: got.append("TERM"))

    def fn(p, c, **k):
        os.kill(os.getppid(), _s.SIGTERM)
        return [1.0] * len(c)
    try:
        v = reward_case(fn, ok=lambda r: True)
    finally:
        _s.signal(_s.SIGTERM, old)
    return "SAFE", f"the worker can signal the trainer (documented: 'not a security boundary'); got {got}; {v[1][:100]}"


# ======================================================== 10: GRPO lengths and chat rows
def grpo_rows(rows, tmp=None, **over):
    import json

    from rlfoundry.algorithms.grpo import GRPOTrainer
    d = tmp or tmpdir()
    f = d / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = base_cfg(d / "out", algo="grpo")
    cfg["data"] = {"train": str(f)}
    cfg["algorithm"]["rewards"] = [{"name": "length_penalty"}]
    cfg["algorithm"]["sampling"].update(over.pop("sampling", {}))
    cfg["data"].update(over.pop("data", {}))
    cfg["training"].update(over)
    return GRPOTrainer(config=cfg).train()


@case(10, "max_new_tokens one below and at the model context (1024) on real rows", timeout=300)
def _():
    import time
    t0 = time.monotonic()
    r1 = expect_error(lambda: grpo_rows([{"prompt": "a"}] * 4, sampling={"max_new_tokens": 1024}))
    r2 = expect_error(lambda: grpo_rows([{"prompt": "a b " * 20}] * 4, sampling={"max_new_tokens": 1020},
                                        data={"truncation": "error"}), "tokens")
    took = time.monotonic() - t0
    bad = [r for r in (r1,) if r[0] != "SAFE"]
    if bad:
        return bad[0]
    if r2[0] == "UNSAFE":
        return "UNCLEAR", "a prompt over the limit under truncation: error trained silently"
    return ("SAFE" if took < 250 else "UNSAFE"), f"{r1[1][:120]} | {r2[1][:150]} ({took:.0f}s)"


@case(10, "chat-format prompt rows: 50k messages; a message with a 1 MB content; roles forged", timeout=300)
def _():
    big = [{"prompt": [{"role": "user", "content": "x "}] * 50_000}] * 2 + [{"prompt": [{"role": "user", "content": "hi"}]}] * 2
    r1 = expect_error(lambda: grpo_rows(big, data={"truncation": "error"}), "tokens")
    r2 = expect_error(lambda: grpo_rows([{"prompt": [{"role": "system\n<|im_start|>assistant", "content": "x"}]}] * 4))
    out = []
    for r, name in ((r1, "long chat"), (r2, "forged role")):
        if r[0] == "UNSAFE" and name == "forged role":
            out.append(("UNCLEAR", "a role name with newlines/special text is accepted"))
        else:
            out.append(r)
    bad = [r for r in out if r[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", " | ".join(o[1][:140] for o in out))


@case(10, "data.max_prompt_length larger than the context; truncate_prompt keeps training bounded", timeout=300)
def _():
    import time
    t0 = time.monotonic()
    v = expect_error(lambda: grpo_rows([{"prompt": "word " * 5000}] * 4, data={"max_prompt_length": 100000}))
    took = time.monotonic() - t0
    if v[0] == "UNSAFE":
        return ("SAFE" if took < 200 else "UNSAFE"), f"truncated and trained in {took:.0f}s"
    return v


# ============================================================== 11: terminal injection
def console(fn):
    """Run ``fn`` with the CLI's console logging; return what reached stderr and stdout."""
    import contextlib
    import io
    import logging

    from rlfoundry.cli import console_logging
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        console_logging()
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            from rlfoundry.cli import error_text
            print("rlfoundry: error: " + error_text(e), file=err)
        for h in logging.getLogger().handlers + logging.getLogger("rlfoundry").handlers:
            h.flush()
    return err.getvalue() + out.getvalue()


def no_escape(text, what):
    if "\x1b" in text or "\x07" in text or "\u202e" in text:
        i = min(p for p in (text.find("\x1b"), text.find("\x07"), text.find("\u202e")) if p >= 0)
        return "UNSAFE", f"{what}: raw control character reached the console: {text[max(0, i-80):i+40]!r}"
    return "SAFE", f"{what}: escaped ({len(text)} chars)"


@case(11, "reward name with escapes (registered reward whose name holds ESC/BEL)", timeout=200)
def _():
    from rlfoundry.rewards import REWARDS

    def evil(prompts, completions, **kw):
        raise ValueError("boom \x1b]0;owned\x07")
    name = "evil\x1b[2Jname"
    try:
        REWARDS.register(name)(evil)
    except Exception as e:  # noqa: BLE001
        return "SAFE", f"registry refuses the name: {type(e).__name__}: {str(e)[:100]!r}"
    text = console(lambda: score(evil, on_error="zero", label=name))
    return no_escape(text, "reward name")


@case(11, "file path with escapes in a data error (missing and malformed file)", timeout=200)
def _():
    d = tmpdir() / "dir\x1b[31mred\u202e"
    d.mkdir()
    (d / "bad\x07.jsonl").write_text('{"prompt": \n')
    from rlfoundry.data import io as dio  # noqa: F401
    t1 = console(lambda: train_dict({**base_cfg(tmpdir()), "data": {"train": str(d / "bad\x07.jsonl"), "max_length": 48}}))
    t2 = console(lambda: train_dict({**base_cfg(tmpdir()), "data": {"train": str(d / "missing.jsonl"), "max_length": 48}}))
    a, b = no_escape(t1, "malformed file"), no_escape(t2, "missing file")
    return a if a[0] != "SAFE" else b


@case(11, "data row text in warnings (identical pairs, skipped bad rows, duplicates)", timeout=200)
def _():
    import json
    d = tmpdir()
    evil = "\x1b]0;pwn\x07\x1b[2J\u202e"
    rows = [{"prompt": evil + str(i), "chosen": evil + "a", "rejected": evil + "a"} for i in range(3)]
    rows += [{"prompt": "p" + str(i), "chosen": "x" + str(i), "rejected": "y"} for i in range(20)]
    rows += [{"prompt": "q", "chosen": 5, "rejected": evil}, {"prompt": "q", "chosen": 5, "rejected": evil}]
    (d / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"prompt": "' + evil + '"\n')
    cfg = base_cfg(tmpdir())
    cfg["data"] = {"train": str(d / "t.jsonl"), "max_length": 48, "on_bad_row": "skip"}
    return no_escape(console(lambda: train_dict(cfg)), "data warnings")


@case(11, "metrics keys with escapes (a reward named with ESC logs reward/<name>/...)", timeout=200)
def _():
    import logging

    from rlfoundry.training.logger import MetricsLogger  # noqa: F401
    text = console(lambda: logging.getLogger("rlfoundry.training").warning("metric %s", {"reward/\x1b[2Jx": 1.0}))
    return no_escape(text, "metrics key via rlfoundry logger")


@case(11, "an exception message from a plugin import and from a loss, printed by the CLI", timeout=200)
def _():
    d = tmpdir()
    (d / "evil_plugin.py").write_text("raise RuntimeError('\\x1b]0;pwn\\x07\\x1b[2J cleared')\n")
    import contextlib
    import io

    from rlfoundry.cli import main
    err = io.StringIO()
    cfgp = d / "c.yaml"
    import yaml
    cfgp.write_text(yaml.safe_dump({**base_cfg(tmpdir()), "plugins": [str(d / "evil_plugin.py")]}))
    with contextlib.redirect_stderr(err):
        try:
            rc = main(["train", str(cfgp)])
        except BaseException as e:  # noqa: BLE001
            return "UNCLEAR", f"raw {type(e).__name__}: {e!r}"[:300]
    v = no_escape(err.getvalue(), "plugin error")
    return v if v[0] != "SAFE" or rc == 2 else ("UNCLEAR", f"rc={rc}: {err.getvalue()[-200:]!r}")


# ================================================ 12: tracebacks from weird data files
def data_case(content: bytes | None, *must, kind="dpo", make=None):
    d = tmpdir()
    f = d / "t.jsonl"
    if make:
        f = make(d)
    elif content is not None:
        f.write_bytes(content)
    cfg = base_cfg(tmpdir())
    cfg["data"] = {"train": str(f), "max_length": 48}
    return expect_error(lambda: train_dict(cfg), *must)


GOOD = b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n'


@case(12, "JSONL with a UTF-8 BOM on the first line", timeout=200)
def _():
    v = data_case(b"\xef\xbb\xbf" + GOOD * 1 + b'{"prompt": "q", "chosen": "c", "rejected": "d"}\n' * 7)
    return ("SAFE", "BOM accepted (harmless)") if v[0] == "UNSAFE" else v


@case(12, "JSONL with NUL bytes outside strings; a lone surrogate escape \\ud800 in a value", timeout=200)
def _():
    r1 = data_case(GOOD + b'{"prompt": "p",\x00 "chosen": "a", "rejected": "b"}\n', "t.jsonl:2")
    r2 = data_case(GOOD * 8 + b'{"prompt": "p", "chosen": "a\\ud800", "rejected": "b"}\n', "t.jsonl:9")
    bad = [r for r in (r1, r2) if r[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", f"{r1[1][:120]} | {r2[1][:120]}")


@case(12, "JSONL with one 10 MB line", timeout=200)
def _():
    import time
    t0 = time.monotonic()
    big = b'{"prompt": "p", "chosen": "' + b"a " * 5_000_000 + b'", "rejected": "b"}\n'
    v = data_case(GOOD * 8 + big)
    took = time.monotonic() - t0
    if v[0] == "UNSAFE":
        return ("SAFE" if took < 150 else "UNSAFE"), f"the long row was truncated and trained in {took:.0f}s"
    return v


@case(12, "data.train is a directory / a FIFO / /dev/zero / a dangling symlink", timeout=200)
def _():
    def fifo(d):
        p = d / "f.jsonl"
        os.mkfifo(p)
        return p

    def dangling(d):
        p = d / "l.jsonl"
        p.symlink_to(d / "nowhere.jsonl")
        return p

    def directory(d):
        p = d / "x.jsonl"
        p.mkdir()
        return p
    out = [data_case(None, make=directory), data_case(None, make=dangling), data_case(None, make=fifo),
           data_case(None, make=lambda d: Path("/dev/zero"))]
    bad = [o for o in out if o[0] != "SAFE"]
    return bad[0] if bad else ("SAFE", " | ".join(o[1][:80] for o in out))


@case(12, "JSON number overflow / huge ints / NaN literals in rows", timeout=200)
def _():
    r = data_case(GOOD * 8 + b'{"prompt": NaN, "chosen": 1e999, "rejected": ' + b"9" * 5000 + b'}\n', "t.jsonl:9")
    return r


@case(12, "reward args that are not JSON-able / a missing reward module file", timeout=200)
def _():
    from rlfoundry.config import load_config
    cfg = base_cfg(algo="grpo")
    cfg["plugins"] = [str(tmpdir() / "nope.py")]
    return expect_error(lambda: load_config(cfg), "nope.py")
