"""Experiment configs: strict parsing, overrides, and the tiny recipe's arms."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechae.config import ConfigError, load_yaml
from speechae.train.config import ExperimentConfig, dump_config, experiment_config_from_dict, load_experiment_config

CONF = Path(__file__).resolve().parents[2] / "egs" / "mini" / "ae" / "conf"


@pytest.mark.parametrize("name", sorted(p.name for p in (CONF / "arms").glob("*.yaml")))
def test_every_recipe_config_loads(name: str) -> None:
    from speechae.train.task import task_class

    cfg = load_experiment_config(CONF / "arms" / name)
    assert isinstance(cfg, task_class(cfg.task).config_class)
    assert isinstance(cfg, ExperimentConfig) or cfg.task != "autoencoder"
    again = experiment_config_from_dict(cfg.to_dict())  # the resolved form round-trips
    assert again == cfg
    assert dump_config(cfg).startswith(f"task: {cfg.task}\n")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_unknown_keys_and_bad_values_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        experiment_config_from_dict({"train": {"max_step": 5}})
    with pytest.raises(ConfigError, match="not one of"):
        experiment_config_from_dict({"train": {"amp": "fp8"}})
    with pytest.raises(ConfigError, match=">= 1"):
        experiment_config_from_dict({"train": {"accum_grad": 0}})


def test_overrides_and_base_chain(tmp_path: Path) -> None:
    cfg = load_experiment_config(CONF / "arms" / "kl.yaml", ["train.max_steps=7", "optim.lr=0.001"])
    assert cfg.train.max_steps == 7 and cfg.optim.lr == 0.001
    assert cfg.model.bottleneck.kind == "gaussian"
    assert "base" not in load_yaml(CONF / "arms" / "kl.yaml")


def test_imports_register_a_projects_own_regularizer_before_the_config_is_parsed(tmp_path, monkeypatch) -> None:
    import pytest

    from speechae.config import ConfigError
    from speechae.losses import build_losses
    from speechae.train.config import experiment_config_from_dict

    (tmp_path / "my_ext_reg.py").write_text(
        "import dataclasses, torch\n"
        "@dataclasses.dataclass\n"
        "class Opts:\n"
        "    scale: float = 1.0\n"
        "from speechae.losses.semantic import REGULARIZERS, register_term\n"
        "class MyL1(torch.nn.Module):\n"
        "    def forward(self, inp):\n"
        "        return inp.z.abs().mean(), {}\n"
        "@register_term(REGULARIZERS, 'my_l1', default_weight=0.01, options=Opts)\n"
        "def build(settings, ctx):\n"
        "    return MyL1()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = {"losses": {"regularizer": "my_l1"}}
    with pytest.raises(ConfigError, match="unknown regularizer 'my_l1'"):
        build_losses(experiment_config_from_dict(data).losses, 8)  # not registered yet
    cfg = experiment_config_from_dict({**data, "imports": ["my_ext_reg"]})
    assert cfg.imports == ["my_ext_reg"]
    composer = build_losses(cfg.losses, 8)
    assert "my_l1" in composer.regularizers and composer.weights(0)["my_l1"] == 0.01
    with pytest.raises(ConfigError, match="cannot import 'no_such_ext'"):
        experiment_config_from_dict({"imports": ["no_such_ext"]})
