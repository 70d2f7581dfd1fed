"""Every recipe offers the same arms (none, kl, sigreg), and they differ only in the regularizer:
the same bottleneck normalisation, the same warm-up shape for every regularizer weight, the same
seed, data, model, optimiser and schedule (issue 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechae.losses.builder import build_losses
from speechae.train.config import load_experiment_config

EGS = Path(__file__).resolve().parents[1] / "egs"
RECIPES = sorted(p.parent.parent.parent.name for p in EGS.glob("*/ae/conf/train_base.yaml"))
ARMS = ("none", "kl", "sigreg")
BASELINE_ARMS = ("uniwav",)  # the system to beat (issue 14): its own task, the same data and schedule
# what an arm may change: the bottleneck kind, the regularizer and its own weight
ALLOWED = {"model.bottleneck.kind", "losses.regularizer", "losses.weights.kl", "losses.weights.sigreg"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _arm(recipe: str, arm: str) -> dict:
    return _flatten(load_experiment_config(EGS / recipe / "ae" / "conf" / "arms" / f"{arm}.yaml").to_dict())


def test_the_recipes_are_found() -> None:
    assert {"mini", "librispeech", "bengali"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_offers_the_same_arms(recipe: str) -> None:
    arms = sorted(p.stem for p in (EGS / recipe / "ae" / "conf" / "arms").glob("*.yaml"))
    assert arms == sorted(ARMS + BASELINE_ARMS)


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_baseline_arm_trains_on_the_same_data_and_schedule(recipe: str) -> None:
    """uniwav.yaml copies optim/data/train from train_base.yaml (it cannot inherit its
    autoencoder blocks): the copies must not drift."""
    ref, uni = _arm(recipe, "sigreg"), _arm(recipe, "uniwav")
    for block in ("optim.", "data.", "train."):
        keys = {k for k in set(ref) | set(uni) if k.startswith(block)}
        assert keys and {k for k in keys if ref.get(k) != uni.get(k)} == set(), (recipe, block)
    assert uni["task"] == "uniwav" and uni["model.preset"] == ref["model.preset"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_arms_differ_only_in_the_regularizer(recipe: str) -> None:
    cfgs = {arm: _arm(recipe, arm) for arm in ARMS}
    for a in ARMS:
        for b in ARMS:
            diff = {k for k in set(cfgs[a]) | set(cfgs[b]) if cfgs[a].get(k) != cfgs[b].get(k)}
            assert diff <= ALLOWED, (recipe, a, b, diff - ALLOWED)
    assert cfgs["none"]["losses.regularizer"] == "none"
    assert {cfgs[a]["model.bottleneck.norm"] for a in ARMS} == {"none"}
    assert cfgs["none"]["model.bottleneck.kind"] == cfgs["sigreg"]["model.bottleneck.kind"] == "deterministic"
    assert cfgs["kl"]["model.bottleneck.kind"] == "gaussian"


@pytest.mark.parametrize("recipe", RECIPES)
def test_regularizer_weights_share_one_warmup_shape(recipe: str) -> None:
    conf = EGS / recipe / "ae" / "conf" / "arms"
    weights = {}
    for arm, name in (("kl", "kl"), ("sigreg", "sigreg")):
        cfg = load_experiment_config(conf / f"{arm}.yaml")
        comp = build_losses(cfg.losses, cfg.model.bottleneck.latent_dim)
        steps = cfg.losses.regularizer_ramp["steps"]
        weights[arm] = [comp.weights(s)[name] / comp.weights(10 * steps)[name] for s in range(0, 2 * steps, max(1, steps // 8))]
        assert comp.weights(0)[name] == 0.0
    assert weights["kl"] == pytest.approx(weights["sigreg"], abs=1e-12)
    none = load_experiment_config(conf / "none.yaml")
    comp = build_losses(none.losses, none.model.bottleneck.latent_dim)
    assert "kl" not in comp.weights(0) and comp.weights(10**6)["sigreg"] == 0.0  # logged only
