"""Checkpoints and the output directory under attack and damage (issue #15, items 2, 4, 5, 6).

Each test plays the attacker or the accident: a pickle payload planted in a checkpoint, flipped
and deleted files, two runs in one directory, a stale lock, a foreign run's directory, a model
gone non-finite, and a full disk or SIGTERM while ``final/`` is written.
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.algorithms.reference import _read_cache
from rlfoundry.cli import main
from rlfoundry.errors import CheckpointError, NonFiniteError, OutputError
from rlfoundry.export import export
from rlfoundry.training import checkpoint as ckpt
from rlfoundry.training import manifest, ownership, state_io
from tests.test_checkpoint_faults import dead_pid, tree
from tests.test_dpo_trainer import run_config

ROOT = Path(__file__).resolve().parents[1]


def train(cfg):
    t = DPOTrainer(config=cfg)
    t.train()
    return t


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """A finished 2-step run with checkpoints step_000001 and step_000002 (copied per test)."""
    out = tmp_path_factory.mktemp("pristine")
    train(run_config(out, max_steps=2, save_every=1, keep_last=None))
    return out


@pytest.fixture
def run_dir(two_step_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_step_run, out)
    (out / ownership.LOCK_FILE).unlink(missing_ok=True)
    return out


def yaml_config(path: Path, out: Path, **training) -> str:
    """run_config(out, **training) as a YAML file for the CLI."""
    import yaml

    path.write_text(yaml.safe_dump(run_config(out, **training)))
    return str(path)


def step(out, n):
    return out / "checkpoints" / f"step_{n:06d}"


def payload_pickle(path: Path, marker: Path) -> None:
    """A pickle that creates ``marker`` when it is loaded with weights_only=False."""
    code = f"open({str(marker)!r}, 'w').write('code ran')"
    subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import torch
        class Payload:
            def __reduce__(self):
                return (exec, ({code!r},))
        torch.save({{"step": 1, "evil": Payload()}}, {str(path)!r})
    """)], check=True)


def reseal(directory: Path) -> None:
    """What an attacker who can write the directory does: a manifest matching its changes."""
    info = manifest.read_manifest(directory)
    manifest.write_manifest(directory, {k: v for k, v in info.items()
                                        if k not in ("files", "format", "version")})


# ---- item 4: no unpickling ---------------------------------------------------------------------
def test_planted_pickle_state_runs_no_code_at_resume_or_export(run_dir, tmp_path, capsys):
    marker = tmp_path / "pwned"
    newest = step(run_dir, 2)
    for f in (ckpt.STATE_FILE, ckpt.OPTIMIZER_FILE, ckpt.RNG_FILE, manifest.MANIFEST):
        (newest / f).unlink()
    payload_pickle(newest / ckpt.LEGACY_STATE_FILE, marker)  # the pre-0.3 layout
    for n in (1,):  # and the older checkpoint too: nothing may be left to fall back to
        shutil.rmtree(step(run_dir, n))
    cfg = run_config(run_dir, max_steps=3, resume="auto")
    with pytest.raises(CheckpointError, match=r"trainer_state.pt: written by an older rlfoundry as "
                                              r"a pickle, which can run code"):
        train(cfg)
    assert main(["export", str(newest), str(tmp_path / "exported")]) == 2
    assert "pickle" in capsys.readouterr().err
    assert not marker.exists()


def test_pickle_bytes_in_the_new_state_file_are_rejected_not_run(run_dir, tmp_path):
    marker = tmp_path / "pwned"
    newest = step(run_dir, 2)
    payload_pickle(newest / ckpt.STATE_FILE, marker)  # same name, pickle inside
    reseal(newest)  # the manifest is no signature: the attacker rewrites it too
    assert ckpt.verify_checkpoint(newest) == []
    with pytest.raises(CheckpointError, match=r"trainer_state.safetensors' cannot be read"):
        ckpt.read_state(newest)
    with pytest.raises(CheckpointError, match="cannot be read"):
        train(run_config(run_dir, max_steps=3, resume=str(newest)))
    with pytest.raises(CheckpointError):
        export(newest, tmp_path / "exported")
    assert not marker.exists()


def test_reference_cache_is_not_unpickled(tmp_path):
    marker, cache = tmp_path / "pwned", tmp_path / "reference_logps_x.safetensors"
    payload_pickle(cache, marker)
    assert _read_cache(cache) is None  # unreadable -> recomputed
    assert not marker.exists()


def test_unsupported_state_is_refused_at_save_time_with_its_key_path(tmp_path):
    with pytest.raises(state_io.UnsupportedState, match=r"state\.extra\.buffer\[1\]: a value of "
                                                        r"type .*Path"):
        state_io.save_state({"extra": {"buffer": [1, Path("x")]}}, tmp_path / "s.safetensors")
    t = DPOTrainer(config=run_config(tmp_path, max_steps=2, save_every=1))
    t.extra_state = lambda: {"handle": object()}
    with pytest.raises(CheckpointError, match=r"checkpoint of step 1: state\.extra\.handle: .*object"):
        t.train()
    assert not any((tmp_path / "checkpoints").iterdir())  # no partial directory left


def test_state_round_trip_keeps_every_supported_type(tmp_path):
    import random

    gen = torch.Generator().manual_seed(7)
    value = {"py": random.getstate(), "gen": gen.get_state(), 3: {"t": torch.arange(4.0)},
             "floats": [float("inf"), float("-inf"), 1.5], "nan": float("nan"), "b": b"\x00\xff",
             "tuple": (1, None, True, "s"), "__tensor__": "not a tag", "big": 2**70,
             "bf16": torch.ones(2, dtype=torch.bfloat16)}
    state_io.save_state(value, tmp_path / "s.safetensors")
    back = state_io.load_state(tmp_path / "s.safetensors")
    assert back["py"] == value["py"] and torch.equal(back["gen"], value["gen"])
    assert torch.equal(back[3]["t"], value[3]["t"]) and back["nan"] != back["nan"]
    assert back["floats"] == value["floats"] and back["b"] == value["b"]
    assert back["tuple"] == value["tuple"] and back["__tensor__"] == "not a tag"
    assert back["big"] == 2**70 and back["bf16"].dtype == torch.bfloat16


# ---- item 5: integrity -------------------------------------------------------------------------
def test_flipped_weight_byte_falls_back_to_the_previous_checkpoint(run_dir, caplog):
    weights = step(run_dir, 2) / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # one bit of one weight: loads fine, silently wrong
    weights.write_bytes(bytes(data))
    t = train(run_config(run_dir, max_steps=3, save_every=1, keep_last=None, resume="auto"))
    assert "model/model.safetensors: checksum mismatch" in caplog.text
    assert "resuming from" in caplog.text and str(step(run_dir, 1)) in caplog.text
    log = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert t.step == 3 and [json.loads(x)["step"] for x in log if '"loss"' in x] == [1, 2, 3]


@pytest.mark.parametrize("name,reason", [
    ("model/model.safetensors", "model/model.safetensors: missing"),
    (ckpt.OPTIMIZER_FILE, "optimizer.safetensors: missing"),
    (ckpt.STATE_FILE, "trainer_state.safetensors: missing"),
    (ckpt.RNG_FILE, "rng_state.safetensors: missing"),
    (manifest.MANIFEST, "manifest.json: missing"),
])
def test_each_missing_file_is_named(run_dir, name, reason, caplog, capsys):
    newest = step(run_dir, 2)
    (newest / name).unlink()
    assert any(p.startswith(reason) for p in ckpt.verify_checkpoint(newest))
    with pytest.raises(CheckpointError, match=f"step_000002' is damaged or incomplete: .*{reason}"):
        ckpt.resolve_resume(str(newest), run_dir)
    assert "made with another model" not in caplog.text
    if name == manifest.MANIFEST:  # not published: resume: auto does not even consider it
        assert ckpt.resolve_resume("auto", run_dir) == step(run_dir, 1)
        return
    shutil.rmtree(step(run_dir, 1))  # nothing to fall back to: a clear error, exit 2
    config = yaml_config(run_dir.parent / "c.yaml", run_dir, max_steps=3, save_every=1, keep_last=None)
    assert main(["train", config, "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and reason in err and "Traceback" not in err


def test_unparseable_manifest_and_state_without_rng_are_clear(run_dir):
    newest = step(run_dir, 2)
    (newest / manifest.MANIFEST).write_text('{"format": "rlfoundry-checkpoint", ')
    assert ckpt.verify_checkpoint(newest)[0].startswith("manifest.json: unreadable (JSONDecodeError")
    older = step(run_dir, 1)  # a well-formed RNG file without the RNG state, resealed
    state_io.save_state({"ranks": None}, older / ckpt.RNG_FILE)
    reseal(older)
    t = DPOTrainer(config=run_config(run_dir, max_steps=3, resume=str(older)))
    with pytest.raises(CheckpointError, match=r"step_000001': the trainer state lacks \['rng'\]"):
        t.train()


def _edit_state(name, key, value):
    def edit(directory):
        state = state_io.load_state(directory / name)
        state[key] = value(state[key]) if callable(value) else value
        state_io.save_state(state, directory / name)
    return edit


@pytest.mark.parametrize("edit,message", [
    (_edit_state(ckpt.STATE_FILE, "step", "2"), r"malformed trainer state: step \(str, expected int\)"),
    (_edit_state(ckpt.STATE_FILE, "scheduler", "x"), r"scheduler \(str, expected dict\)"),
    (_edit_state(ckpt.RNG_FILE, "rng", lambda r: {**r, "torch": r["torch"].float()}),
     r"random-generator state \(rng_state.safetensors\) is malformed"),
    (_edit_state(ckpt.RNG_FILE, "rng", lambda r: {**r, "python": (3, (1, 2), None)}),
     r"random-generator state .* is malformed \(ValueError"),
    (lambda d: state_io.save_state([1, 2], d / ckpt.STATE_FILE), "holds no run config"),
    (lambda d: state_io.save_state({"optimizer": {"state": {}, "param_groups": []}},
                                   d / ckpt.OPTIMIZER_FILE), r"does not fit this run \(ValueError"),
])
def test_forged_but_well_formed_state_is_a_clear_error(run_dir, edit, message, capsys):
    """The attacker rewrites the state files and the manifest: no traceback, exit 2."""
    for n in (1, 2):
        edit(step(run_dir, n))
        reseal(step(run_dir, n))
    config = yaml_config(run_dir.parent / "c.yaml", run_dir, max_steps=3, save_every=1, keep_last=None)
    assert main(["train", config, "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    with pytest.raises(CheckpointError, match=message):
        train(run_config(run_dir, max_steps=3, save_every=1, keep_last=None, resume="auto"))


def test_something_else_in_place_of_the_lock_file_is_a_clear_error(tmp_path):
    (tmp_path / ownership.LOCK_FILE).mkdir()
    with pytest.raises(OutputError, match="cannot open the lock file .*Is a directory"):
        train(run_config(tmp_path, max_steps=1))


# ---- item 2: output directory ownership --------------------------------------------------------
HOLD = """
import sys, time
from rlfoundry.training.ownership import OutputLock
lock = OutputLock(sys.argv[1], command="holder test"); lock.acquire()
print("locked", flush=True); time.sleep(120)
"""


def test_second_run_in_the_same_directory_fails_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", f"training.output_dir={out}", "training.max_steps=1",
                     "logging.progress_bar=false"]) == 2
        err = capsys.readouterr().err
        assert f"PID {holder.pid} on host '{socket.gethostname()}'" in err and "in use" in err
        assert not (out / "checkpoints").exists() and not (out / "final").exists()
    finally:
        holder.kill()
        holder.wait()
    train(run_config(out, max_steps=1))  # the holder is gone: the directory is free again
    assert (out / "final").is_dir()


def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    gone = dead_pid()
    body = {"pid": gone, "host": socket.gethostname(), "started": "x", "command": "old run"}
    (out / ownership.LOCK_FILE).write_text(json.dumps(body))  # a run killed by SIGKILL
    train(run_config(out, max_steps=1))
    assert f"stale lock left by PID {gone}" in caplog.text
    assert (out / ownership.LOCK_FILE).read_text() == ""  # released cleanly this time


def test_lock_kept_by_an_orphaned_child_is_taken_over(tmp_path, caplog):
    """The trainer died; a forked helper inherited the flock and still runs."""
    out = tmp_path / "run"
    out.mkdir()
    gone = dead_pid()
    orphan = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, json, os, socket, time
        fd = os.open({str(out / ownership.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({{"pid": {gone}, "host": socket.gethostname()}}).encode())
        print("locked", flush=True); time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert orphan.stdout.readline().strip() == "locked"
        train(run_config(out, max_steps=1))
        assert f"taking over the lock of PID {gone}" in caplog.text
    finally:
        orphan.kill()
        orphan.wait()


def test_fresh_run_refuses_another_runs_directory_unless_overwrite(run_dir, capsys):
    before = tree(step(run_dir, 2))
    with pytest.raises(OutputError, match=r"already holds another run .*training.resume=auto.*"
                                          r"training.overwrite=true"):
        train(run_config(run_dir, max_steps=1, learning_rate=5e-4))
    assert tree(step(run_dir, 2)) == before  # untouched
    args = ["train", f"training.output_dir={run_dir}", "training.max_steps=1", "data.train_size=32",
            "data.eval_size=16", "logging.progress_bar=false", "--overwrite"]
    assert main(args) == 0
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_000001"]
    saved = ckpt.saved_config(step(run_dir, 1))
    assert saved["data"]["train_size"] == 32 and saved["training"]["batch_size"] != 8


def test_resume_with_another_config_is_refused_naming_the_keys(run_dir):
    cfg = run_config(run_dir, max_steps=3, resume="auto", learning_rate=5e-4, warmup_steps=1)
    with pytest.raises(CheckpointError, match=r"another config(.|\n)*training.learning_rate: 0.001 "
                                              r"-> 0.0005(.|\n)*training.warmup_steps: 0 -> 1"):
        train(cfg)
    # keys a resume may change: more steps, other logging, another keep_last
    t = train(run_config(run_dir, max_steps=3, resume="auto", keep_last=1, eval_every=1))
    assert t.step == 3


def test_keep_last_never_deletes_another_runs_checkpoints(run_dir, tmp_path):
    other = tmp_path / "other"
    train(run_config(other, max_steps=2, save_every=1, keep_last=None, learning_rate=5e-4))
    foreign = step(run_dir, 7)
    shutil.copytree(step(other, 2), foreign)  # a checkpoint of another run, copied in by hand
    fingerprint = ckpt._manifest_fingerprint(step(run_dir, 2))
    ckpt.prune_checkpoints(run_dir, 1, fingerprint)
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step_000002", "step_000007"]


# ---- item 1 (save side): never save a non-finite model -----------------------------------------
def test_non_finite_weights_are_never_saved(tmp_path):
    t = DPOTrainer(config=run_config(tmp_path, max_steps=3, save_every=1, keep_last=None))
    original = t.optimizer_step

    def poisoned(indices):
        metrics = original(indices)
        if t.step == 1:  # the update of step 2 leaves inf in the weights (as lr=inf did)
            with torch.no_grad():
                t.model.get_input_embeddings().weight[3, :2] = float("inf")
        return metrics

    t.optimizer_step = poisoned
    with pytest.raises(NonFiniteError, match=r"step 2: the model holds non-finite values, in "
                                             r"\S*embed\S*weight \(0 NaN, 2 inf.*step_000001, is "
                                             r"untouched"):
        t.train()
    first = step(tmp_path, 1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000001"]
    assert ckpt.verify_checkpoint(first) == [] and not (tmp_path / "final").exists()


# ---- item 6: final/ is atomic ------------------------------------------------------------------
def test_full_disk_while_writing_final_leaves_no_partial_final(run_dir, monkeypatch, capsys):
    old_final = tree(run_dir / "final")
    real = ckpt.save_pretrained

    def full_disk(model, tokenizer, directory):
        if "final" in Path(directory).name:
            model.save_pretrained(directory, safe_serialization=True)  # weights, no tokenizer
            raise OSError(errno.ENOSPC, "No space left on device")
        real(model, tokenizer, directory)

    monkeypatch.setattr(ckpt, "save_pretrained", full_disk)
    config = yaml_config(run_dir.parent / "c.yaml", run_dir, max_steps=3, save_every=1, keep_last=None)
    assert main(["train", config, "training.resume=auto"]) == 2
    err = capsys.readouterr().err
    assert "could not write the final model ('final')" in err and "The disk is full" in err
    assert tree(run_dir / "final") == old_final  # the older final/ stays whole
    assert not [p for p in run_dir.iterdir() if p.name.startswith((".tmp_", ".trash_"))]


SLOW_FINAL_PLUGIN = '''
import os, time
from pathlib import Path
from rlfoundry.training import checkpoint

original = checkpoint.save_pretrained

def save_pretrained(model, tokenizer, directory):
    if "final" in Path(directory).name:
        model.save_pretrained(directory, safe_serialization=True)  # weights written, tokenizer not
        Path(os.environ["RLF_TEST_MARKER"]).write_text("writing final")
        time.sleep(120)
    original(model, tokenizer, directory)

checkpoint.save_pretrained = save_pretrained
'''


@pytest.mark.slow
def test_sigterm_while_writing_final_leaves_no_partial_final(tmp_path):
    out, plugin, marker = tmp_path / "run", tmp_path / "plugin.py", tmp_path / "in_final"
    plugin.write_text(SLOW_FINAL_PLUGIN)
    overrides = [f"training.output_dir={out}", "training.max_steps=2", "logging.progress_bar=false",
                 "logging.tensorboard=false", "data.train_size=32", "training.batch_size=8"]
    proc = subprocess.Popen([sys.executable, "-m", "rlfoundry", "train", *overrides,
                             f"plugins=[{plugin}]"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "RLF_TEST_MARKER": str(marker)})
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # recorded: stop after the current step
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # the second one kills
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not (out / "final").exists()  # only the temporary sibling, never a partial final/
    assert [p.name.startswith(".tmp_final_") for p in out.iterdir() if p.name.startswith(".")
            and p.is_dir()] == [True]
    assert main(["train", *overrides, "training.resume=auto"]) == 0  # cleans up, writes final/
    assert ckpt.manifest.verify(out / "final") == []
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp_final_")]
