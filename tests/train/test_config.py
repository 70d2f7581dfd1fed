"""Experiment configs: strict parsing, overrides, and the tiny recipe's arms."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechae.config import ConfigError, load_yaml
from speechae.train.config import ExperimentConfig, dump_config, experiment_config_from_dict, load_experiment_config

CONF = Path(__file__).resolve().parents[2] / "egs" / "mini" / "ae" / "conf"


@pytest.mark.parametrize("name", sorted(p.name for p in (CONF / "arms").glob("*.yaml")))
def test_every_recipe_config_loads(name: str) -> None:
    cfg = load_experiment_config(CONF / "arms" / name)
    assert isinstance(cfg, ExperimentConfig)
    again = experiment_config_from_dict(cfg.to_dict())  # the resolved form round-trips
    assert again == cfg
    assert dump_config(cfg).startswith("task: autoencoder\nmodel:")


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
