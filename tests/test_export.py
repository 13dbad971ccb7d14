import pytest
import torch

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.cli import main
from rlfoundry.errors import CheckpointError
from rlfoundry.export import export, resolve_checkpoint


def run_config(tmp_path):
    return {
        "data": {"train": "builtin:sort_preferences", "train_size": 16, "eval_size": 8, "max_length": 48},
        "training": {"output_dir": str(tmp_path), "batch_size": 8, "max_steps": 2, "save_every": 1,
                     "learning_rate": 1e-3, "seed": 0},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def test_export_of_a_checkpoint_reloads_with_transformers_and_matches(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    trainer = DPOTrainer(config=run_config(run))
    trainer.train()
    assert resolve_checkpoint(run).name == "step_000002"  # a run dir means its newest checkpoint
    out = tmp_path / "hf"
    assert main(["export", str(run / "checkpoints" / "step_000001"), str(out)]) == 0
    assert "step_000001" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("sort: c a b\n", return_tensors="pt")["input_ids"]
    export(run, tmp_path / "hf_last")
    last = AutoModelForCausalLM.from_pretrained(tmp_path / "hf_last")
    with torch.no_grad():
        assert torch.equal(last(ids).logits, trainer.model.eval()(ids).logits)
        assert not torch.equal(model(ids).logits, last(ids).logits)  # step 1 is an earlier model


def test_export_names_what_is_missing(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="does not exist"):
        export(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty_run").mkdir()
    assert main(["export", str(tmp_path / "empty_run"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "neither a checkpoint" in err and "empty_run" in err
