import pytest

from rlfoundry.config import load_config
from rlfoundry.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_defaults_are_valid():
    cfg = load_config(None)
    assert cfg.algorithm.name == "dpo"
    assert cfg.algorithm.loss["type"] == "dpo"


def test_dotted_overrides_and_scientific_floats(tmp_path):
    p = write(tmp_path, "training:\n  learning_rate: 1e-4\n")
    cfg = load_config(p, ["training.learning_rate=1e-5", "algorithm.loss.type=ipo",
                          "training.batch_size=4"])
    assert cfg.training.learning_rate == pytest.approx(1e-5)
    assert cfg.training.batch_size == 4
    assert cfg.algorithm.loss["type"] == "ipo"


def test_unknown_key_has_path_and_hint(tmp_path):
    p = write(tmp_path, "training:\n  learnig_rate: 1e-4\n")
    with pytest.raises(ConfigError, match=r"training\.learnig_rate: unknown key \(did you mean 'learning_rate'\?\)"):
        load_config(p)


def test_unknown_section_has_hint():
    with pytest.raises(ConfigError, match=r"trainng: unknown key \(did you mean 'training'\?\)"):
        load_config({"trainng": {}})


def test_wrong_type_names_path():
    with pytest.raises(ConfigError, match=r"training\.batch_size"):
        load_config({"training": {"batch_size": "eight"}})
    with pytest.raises(ConfigError, match=r"training\.batch_size"):
        load_config({"training": {"batch_size": 0}})


def test_override_typo_is_rejected():
    with pytest.raises(ConfigError, match=r"training\.max_step: unknown key \(did you mean 'max_steps'\?\)"):
        load_config(None, ["training.max_step=3"])


def test_incompatible_combinations_rejected_at_load():
    with pytest.raises(ConfigError, match="multiple of"):
        load_config({"training": {"batch_size": 6, "micro_batch_size": 4}})
    with pytest.raises(ConfigError, match=r"algorithm\.clip_ratio is a GRPO option"):
        load_config({"algorithm": {"name": "dpo", "clip_ratio": 0.2}})
    with pytest.raises(ConfigError, match="disagree"):
        load_config({"algorithm": {"learning_rate": 1e-5}, "training": {"learning_rate": 1e-4}})


def test_loss_options_validated_at_load():
    with pytest.raises(ConfigError, match="did you mean 'reference_policy_kl_penalty'"):
        load_config({"algorithm": {"loss": {"type": "sigmoid", "refrence_policy_kl_penalty": 0.1}}})
    with pytest.raises(ConfigError, match="did you mean 'ipo'"):
        load_config({"algorithm": {"loss": {"type": "ipoo"}}})
    with pytest.raises(ConfigError, match=r"algorithm\.name: unknown algorithm 'dpoo' \(did you mean 'dpo'\?\)"):
        load_config({"algorithm": {"name": "dpoo"}})


def test_seed_aliases_mean_what_they_say():
    cfg = load_config({"algorithm": {"name": "dpo", "beta": 0.2, "learning_rate": 1e-5,
                                     "max_grad_norm": 0.5, "warmup_steps": 7}})
    assert cfg.training.learning_rate == pytest.approx(1e-5)
    assert cfg.training.max_grad_norm == 0.5 and cfg.training.warmup_steps == 7
    assert cfg.algorithm.loss["reference_policy_kl_penalty"] == 0.2
    # the seed's `loss_function:` section is the same as algorithm.loss
    cfg = load_config({"loss_function": {"type": "ipo", "reference_policy_kl_penalty": 0.3}})
    assert cfg.algorithm.loss == {"type": "ipo", "reference_policy_kl_penalty": 0.3}


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "training: [\n"))
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["training.max_steps"])


def test_plugin_registers_loss_by_name(tmp_path):
    plugin = tmp_path / "my_losses.py"
    plugin.write_text(
        "from rlfoundry.algorithms.loss_functions import DPOLossFn, LossFunctionRegistry\n"
        "@LossFunctionRegistry.register('plugin_test_dpo')\n"
        "class PluginDPO(DPOLossFn):\n"
        "    '''A test loss.'''\n"
    )
    cfg = load_config({"plugins": [str(plugin)], "algorithm": {"loss": {"type": "plugin_test_dpo", "my_weight": 2}}})
    assert cfg.algorithm.loss["type"] == "plugin_test_dpo"
    with pytest.raises(ConfigError, match="plugins: file"):
        load_config({"plugins": [str(tmp_path / "missing.py")]})


def test_configuration_reference_is_up_to_date():
    import subprocess
    import sys
    from pathlib import Path

    # a fresh process: other tests register (and override) names in the shared registries
    rendered = subprocess.run([sys.executable, "-m", "rlfoundry.config.reference"], check=True,
                              capture_output=True, text=True).stdout
    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text() == rendered, (
        "docs/configuration.md is stale: run `python -m rlfoundry.config.reference > docs/configuration.md`")
