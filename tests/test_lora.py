import json

import pytest
import torch

import rlfoundry.algorithms.reference as reference
from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.algorithms.grpo import GRPOTrainer
from rlfoundry.algorithms.reference import AdapterDisabled, sequence_logps
from rlfoundry.cli import main
from rlfoundry.errors import ConfigError
from rlfoundry.models import build_model, build_tokenizer

LORA = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def lora_config(tmp_path, **training):
    return {
        "model": {"name_or_path": "builtin:tiny", "dtype": "float64", "lora": LORA},
        "data": {"train": "builtin:sort_preferences", "train_size": 32, "eval_size": 8, "max_length": 48},
        "training": {"output_dir": str(tmp_path), "batch_size": 8, "max_steps": 4, "learning_rate": 1e-2,
                     "seed": 0, "eval_every": 4, "save_every": 2, **training},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def named(model, adapter: bool) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if ("lora_" in k) == adapter}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LoRA DPO run (4 steps, checkpoints at 2 and 4), with its weights before training."""
    out = tmp_path_factory.mktemp("lora_dpo")
    with pytest.MonkeyPatch.context() as mp:  # the reference must not be a copy of the model
        mp.setattr(reference, "frozen_copy", lambda m: pytest.fail("LoRA run copied the model"))
        trainer = DPOTrainer(config=lora_config(out))
        base = named(trainer.model, adapter=False)
        adapters = named(trainer.model, adapter=True)
        trainer.train()
    return trainer, base, adapters, out


def test_lora_dpo_learns_and_only_adapters_change(trained):
    trainer, base, adapters, _ = trained
    assert trainer.last_eval["loss"] < trainer.initial_eval["loss"] - 0.02
    assert trainer.last_eval["accuracy"] > trainer.initial_eval["accuracy"]
    after_base = named(trainer.model, adapter=False)
    assert all(torch.equal(base[k], after_base[k]) for k in base)
    after_adapters = named(trainer.model, adapter=True)
    assert all(not torch.equal(adapters[k], after_adapters[k]) for k in adapters)


def test_lora_reference_is_the_base_model_with_the_adapter_off(trained):
    trainer, *_ = trained
    assert isinstance(trainer.ref_model, AdapterDisabled) and trainer.ref_model.model is trainer.model
    fresh = build_model("tiny", build_tokenizer(), seed=0).double().eval()
    batch = trainer.collate([0, 1, 2])
    assert torch.allclose(sequence_logps(trainer.ref_model, batch), sequence_logps(fresh, batch),
                          rtol=0, atol=1e-10)
    assert trainer.model.training  # the reference pass restores the policy's mode


def test_lora_checkpoint_holds_the_adapter_and_resumes_exactly(trained, tmp_path):
    trainer, _, _, out = trained
    step2 = out / "checkpoints" / "step_000002"
    assert (step2 / "model" / "adapter_config.json").is_file()
    assert not (step2 / "model" / "model.safetensors").exists()
    resumed = DPOTrainer(config=lora_config(tmp_path, resume=str(step2)))
    resumed.train()
    assert resumed.step == 4
    a, b = named(trainer.model, adapter=True), named(resumed.model, adapter=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_final_and_export_are_merged_plain_models(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer, _, _, out = trained
    assert not (out / "final" / "adapter_config.json").exists()
    assert main(["export", str(out), str(tmp_path / "exported")]) == 0
    ids = torch.tensor([[7, 60, 61, 62, 8, 63]])
    with torch.no_grad():
        expected = trainer.model.eval()(input_ids=ids).logits
        for directory in (out / "final", tmp_path / "exported"):
            plain = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float64)
            assert not any("lora" in k for k in plain.state_dict())
            assert torch.allclose(plain(ids).logits, expected, rtol=0, atol=1e-9)
    trainer.model.train()


def test_lora_grpo_kl_is_against_the_base_model(tmp_path):
    cfg = {
        "algorithm": {"name": "grpo", "group_size": 4, "sampling": {"max_new_tokens": 4},
                      "rewards": [{"name": "length_penalty", "args": {"target_length": 2}}],
                      "loss": {"reference_policy_kl_penalty": 0.1}},
        "model": {"name_or_path": "builtin:tiny", "dtype": "float64", "lora": LORA},
        "data": {"train": "builtin:addition", "train_size": 16, "eval_size": 4},
        "training": {"output_dir": str(tmp_path), "batch_size": 2, "max_steps": 2, "learning_rate": 1e-2,
                     "seed": 0},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    t = GRPOTrainer(config=cfg)
    assert isinstance(t.ref_model, AdapterDisabled)
    t.train()
    kl = [json.loads(line)["kl"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kl[0] == pytest.approx(0.0, abs=1e-12)  # the zero-initialised adapter: policy == base
    assert kl[1] > 1e-8  # after one update the policy has moved away from the base


def test_bad_lora_target_is_a_config_error(tmp_path):
    cfg = lora_config(tmp_path)
    cfg["model"]["lora"] = {"target_modules": ["no_such_proj"]}
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules"):
        DPOTrainer(config=cfg)
