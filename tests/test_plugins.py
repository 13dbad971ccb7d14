"""User extensions from outside the package: plugin files, entry points, `rlfoundry list`."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
from rlfoundry.plugins import import_entry_point_plugins

USER_LOSS = textwrap.dedent('''
    import torch.nn.functional as F
    from rlfoundry.algorithms.loss_functions import LossFunctionRegistry

    @LossFunctionRegistry.register("user_margin_dpo")
    class UserMarginDPO:
        """DPO with a margin: -logsigmoid(beta * h - margin)."""
        def __init__(self, cfg):
            self.reference_policy_kl_penalty = cfg.get("beta", 0.1)
            self.margin = cfg.get("margin", 0.0)
            self.calls = 0
        def __call__(self, batch, model_outputs):
            self.calls += 1
            h = (model_outputs["policy_chosen_logps"] - batch["reference_chosen_logps"]) - (
                model_outputs["policy_rejected_logps"] - batch["reference_rejected_logps"])
            loss = -F.logsigmoid(self.reference_policy_kl_penalty * h - self.margin).mean()
            return loss, {"margin_loss": loss.detach(), "calls": float(self.calls)}
''')


def _env(*paths):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), *sys.path])
    return env


@pytest.mark.slow
def test_loss_from_user_file_named_only_in_yaml_trains_end_to_end(tmp_path):
    (tmp_path / "my_losses.py").write_text(USER_LOSS)
    (tmp_path / "run.yaml").write_text(textwrap.dedent(f"""
        plugins: [./my_losses.py]
        model: {{name_or_path: "builtin:tiny"}}
        data: {{train: "builtin:sort_preferences", train_size: 64, eval_size: 32}}
        algorithm:
          loss: {{type: user_margin_dpo, beta: 0.2, margin: 0.5}}
        training: {{max_steps: 12, batch_size: 8, learning_rate: 2.0e-3, eval_every: 12,
                    output_dir: {tmp_path / "run"}}}
        logging: {{tensorboard: false, progress_bar: false}}
    """))
    out = subprocess.run([sys.executable, "-m", "rlfoundry", "train", "run.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, env=_env(), timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "margin_loss" in r]
    assert len(train) == 12 and train[-1]["margin_loss"] < train[0]["margin_loss"]
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def _install_entry_point(tmp_path):
    pkg = tmp_path / "site"
    (pkg / "ep_plugin-1.0.dist-info").mkdir(parents=True)
    (pkg / "ep_plugin-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 1.0\n")
    (pkg / "ep_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[rlfoundry.plugins]\nep_losses = ep_plugin_losses\n")
    (pkg / "ep_plugin_losses.py").write_text(USER_LOSS.replace("user_margin_dpo", "entry_point_dpo"))
    return pkg


def test_entry_point_plugins_are_imported(tmp_path, monkeypatch):
    site = _install_entry_point(tmp_path)
    monkeypatch.syspath_prepend(str(site))
    assert "ep_losses" in import_entry_point_plugins()
    assert "entry_point_dpo" in LossFunctionRegistry.names()


def test_list_prints_every_kind_and_plugins(tmp_path):
    site = _install_entry_point(tmp_path)
    (tmp_path / "extra.py").write_text(USER_LOSS)
    out = subprocess.run([sys.executable, "-m", "rlfoundry", "list", "--plugins", str(tmp_path / "extra.py")],
                         capture_output=True, text=True, env=_env(site), timeout=300)
    assert out.returncode == 0, out.stderr
    for kind in ("algorithms:", "losses:", "advantage estimators:", "grouping strategies:",
                 "rewards:", "schedules:"):
        assert kind in out.stdout
    for name in ("entry_point_dpo", "user_margin_dpo", "composite", "warmup_cosine", "rloo", "by_prompt"):
        assert name in out.stdout
    assert "DPO with a margin" in out.stdout  # the one-line doc
