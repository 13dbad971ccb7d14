"""Checkpoints under faults: atomic writes, keep_last, resume: auto, half-written checkpoints,
a full disk, an unwritable output directory, torn logs."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.cli import main
from rlfoundry.errors import CheckpointError, OutputError
from rlfoundry.training import checkpoint as ckpt
from tests.test_dpo_trainer import params, read_metrics, run_config

TINY = {"model": {"name_or_path": "builtin:tiny"}}


def train(cfg, **kw):
    t = DPOTrainer(config=cfg, **kw)
    t.train()
    return t


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def tree(path):
    """{relative file: bytes} of a directory."""
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def test_resume_auto_takes_the_newest_complete_checkpoint_and_deletes_leftovers(tmp_path):
    train(run_config(tmp_path, max_steps=2, save_every=1, keep_last=None))
    root = tmp_path / "checkpoints"
    leftover = root / f".tmp_step_000003_{dead_pid()}"  # a writer killed mid-checkpoint
    (leftover / "model").mkdir(parents=True)
    (leftover / "model" / "model.safetensors").write_bytes(b"\0" * 10)
    half = root / "step_000004"  # a directory copied by hand, never finished
    (half / "model").mkdir(parents=True)
    assert ckpt.resolve_resume("auto", tmp_path) == root / "step_000002"
    cfg = run_config(tmp_path, max_steps=3, save_every=1, keep_last=None, resume="auto")
    t = train(cfg)
    assert t.step == 3 and not leftover.exists()
    assert sorted(p.name for p in root.iterdir()) == ["step_000001", "step_000002", "step_000003",
                                                      "step_000004"]


def test_keep_last_prunes_without_leaving_trash(tmp_path):
    train(run_config(tmp_path, max_steps=4, save_every=1, keep_last=2))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000003", "step_000004"]


def disk_full_errors():
    from safetensors import SafetensorError

    return {
        "OSError": OSError(errno.ENOSPC, "No space left on device"),
        "state": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos"),
        "safetensors": SafetensorError("Error while serializing: I/O error: No space left on "
                                       "device (os error 28)"),
    }


@pytest.mark.parametrize("kind", ["OSError", "state", "safetensors"])
def test_disk_full_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, kind):
    cfg = run_config(tmp_path, max_steps=3, save_every=1, keep_last=1)
    t = DPOTrainer(config=cfg)
    real_save, real_pretrained = ckpt.state_io.save_state, ckpt.save_pretrained
    state = {"saves": 0}

    def failing_pretrained(model, tokenizer, directory):
        state["saves"] += 1
        real_pretrained(model, tokenizer, directory)
        if state["saves"] == 2 and kind == "safetensors":
            raise disk_full_errors()[kind]

    def failing_save(obj, f, *a, **kw):
        if state["saves"] == 2 and kind != "safetensors":
            Path(f).write_bytes(b"partial")  # a half-written file, as a full disk leaves it
            raise disk_full_errors()[kind]
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ckpt, "save_pretrained", failing_pretrained)
    monkeypatch.setattr(ckpt.state_io, "save_state", failing_save)
    first = tmp_path / "checkpoints" / "step_000001"
    with pytest.raises(CheckpointError) as info:
        t.train()
    message = str(info.value)
    assert "could not write the checkpoint of step 2" in message and str(tmp_path) in message
    assert "free on that disk" in message and "training.resume=auto" in message
    if kind != "state":  # a writer's message that does not say why; the free space does
        assert "The disk is full" in message
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000001"]
    monkeypatch.undo()
    assert ckpt.resolve_resume("auto", tmp_path) == first
    assert ckpt.load_checkpoint(first, DPOTrainer(config=run_config(tmp_path)).model)["step"] == 1


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 24 MiB file system: room for one tiny-model checkpoint, not for two."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_real_full_disk_keeps_the_previous_checkpoint(small_tmpfs):
    out = small_tmpfs / "run"
    cfg = run_config(out, max_steps=2, save_every=1, keep_last=1)
    with pytest.raises(CheckpointError, match=r"checkpoint of step 2.*The disk is full") as info:
        train(cfg)
    assert isinstance(info.value.__cause__, Exception)
    first = out / "checkpoints" / "step_000001"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000001"]
    assert ckpt.resolve_resume("auto", out) == first
    before = tree(first)
    model = DPOTrainer(config=run_config(out)).model
    assert ckpt.load_checkpoint(first, model)["step"] == 1 and tree(first) == before


def test_unwritable_output_dir_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    cfg = run_config(blocker / "run")
    t = DPOTrainer(config=cfg)
    t.setup_data = lambda *a: pytest.fail("data was loaded before the output dir was checked")
    with pytest.raises(OutputError, match=r"training\.output_dir: cannot write to .*a_file/run"):
        t.train()
    assert main(["train", f"training.output_dir={blocker / 'run'}", "training.max_steps=1"]) == 2
    assert "training.output_dir: cannot write" in capsys.readouterr().err


def test_read_only_output_dir_fails_before_training(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        with pytest.raises(OutputError, match=r"Read-only file system.*not writable"):
            DPOTrainer(config=run_config(ro / "run")).train()
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=True)


def test_unreadable_newest_checkpoint_falls_back_then_is_a_clear_error(tmp_path, caplog):
    train(run_config(tmp_path, max_steps=2, save_every=1, keep_last=None))
    newest = tmp_path / "checkpoints" / "step_000002"
    (newest / ckpt.STATE_FILE).write_bytes(b"truncated")
    assert ckpt.resolve_resume("auto", tmp_path) == tmp_path / "checkpoints" / "step_000001"
    assert f"{ckpt.STATE_FILE}: size 9 bytes" in caplog.text
    (tmp_path / "checkpoints" / "step_000001" / ckpt.STATE_FILE).write_bytes(b"truncated")
    t = DPOTrainer(config=run_config(tmp_path, max_steps=3, resume="auto"))
    before = params(t.model).clone()
    with pytest.raises(CheckpointError, match=r"no intact checkpoint(.|\n)*step_000002: "
                       r"trainer_state.safetensors: size 9(.|\n)*step_000001: trainer_state"):
        t.train()
    assert torch.equal(before, params(t.model))  # nothing half-loaded


def test_checkpoint_of_another_run_is_rejected(tmp_path):
    train(run_config(tmp_path, max_steps=1))
    cfg = run_config(tmp_path, max_steps=2, resume="auto")
    cfg["data"]["train_size"] = 40
    with pytest.raises(CheckpointError, match=r"another config(.|\n)*data.train_size: 32 -> 40"):
        train(cfg)


def test_torn_metrics_line_is_dropped_on_resume(tmp_path, caplog):
    train(run_config(tmp_path, max_steps=2, save_every=1))
    log = tmp_path / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed mid-write of step 2
    (tmp_path / "checkpoints" / "step_000002").rename(tmp_path / "checkpoints" / ".gone")
    train(run_config(tmp_path, max_steps=2, save_every=1, resume="auto"))
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert "dropped a torn record" in caplog.text
    assert json.loads(log.read_text().splitlines()[1]) == json.loads(lines[1])


def test_timings_are_kept_apart_from_metrics(tmp_path):
    train(run_config(tmp_path, max_steps=2))
    metrics = read_metrics(tmp_path)
    timings = [json.loads(x) for x in (tmp_path / "timings.jsonl").read_text().splitlines()]
    assert [t["step"] for t in timings] == [1, 2] and all(t["step_seconds"] > 0 for t in timings)
    assert not any(k.endswith(("_seconds", "_per_s")) for r in metrics for k in r)


def test_os_replace_is_the_only_publisher(tmp_path, monkeypatch):
    """Kill between writing and renaming: nothing named step_N exists yet."""
    class Killed(BaseException):
        pass

    def killed(*a):
        raise Killed()

    monkeypatch.setattr(ckpt, "_publish", killed)
    with pytest.raises(Killed):
        train(run_config(tmp_path, max_steps=1))
    root = tmp_path / "checkpoints"
    assert [p.name.startswith(".tmp_step_000001_") for p in root.iterdir()] == [True]
    assert ckpt.resolve_resume("auto", tmp_path) is None
    assert len(ckpt.remove_incomplete(tmp_path)) == 1 and os.listdir(root) == []
