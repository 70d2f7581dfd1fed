"""Checkpoint utilities: weights_only loading, model rebuild, averaging, pruning, RNG."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from speechae.models import build_model
from speechae.train import checkpoint as ck
from speechae.train.config import experiment_config_from_dict
from speechae.train.testing import SMALL_MODEL


def _ckpt(step: int, model: nn.Module, avg: dict | None = None) -> dict:
    cfg = experiment_config_from_dict({"model": SMALL_MODEL}).to_dict()
    return {"version": 1, "config": cfg, "step": step, "model": model.state_dict(), "model_avg": avg,
            "avg_step": step, "rng": ck.rng_state()}


def test_checkpoint_loads_weights_only_and_rebuilds_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(SMALL_MODEL)
    path = ck.save_checkpoint(tmp_path / "checkpoints" / "ckpt-00000005.pt", _ckpt(5, model))
    state = torch.load(path, weights_only=True)  # no pickled classes anywhere
    assert state["step"] == 5 and isinstance(state["config"], dict)
    rebuilt, config = ck.load_model_from_checkpoint(tmp_path)  # experiment dir -> latest ckpt
    assert config["model"]["bottleneck"]["latent_dim"] == 8 and not rebuilt.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k]), k
    assert not list(tmp_path.glob("checkpoints/.*"))  # no temporary leftovers


def test_prune_keeps_newest(tmp_path: Path) -> None:
    for s in (1, 2, 3, 4):
        ck.save_checkpoint(ck.checkpoint_path(tmp_path, s), {"step": s})
    ck.prune_checkpoints(tmp_path, 2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [3, 4]
    assert ck.latest_checkpoint(tmp_path).name == "ckpt-00000004.pt"


def test_running_average_is_the_mean_of_snapshots() -> None:
    model = nn.Linear(3, 2)
    avg = ck.init_average(model)
    snapshots = []
    for step in range(2, 11, 2):  # period 2
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        ck.update_average(avg, model, step, 2)
    mean = ck.average_state_dicts(snapshots)
    for k in mean:
        torch.testing.assert_close(avg[k].float(), mean[k], atol=1e-6, rtol=0)


def test_average_checkpoints_plain_and_from_running_averages(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(SMALL_MODEL)
    avg = ck.init_average(model)
    paths, snaps = [], []
    for step in (2, 4, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        snaps.append({k: v.clone() for k, v in model.state_dict().items()})
        ck.update_average(avg, model, step, 2)
        paths.append(ck.save_checkpoint(tmp_path / f"ckpt-{step:08d}.pt",
                                        _ckpt(step, model, {k: v.clone() for k, v in avg.items()})))
    plain = ck.average_checkpoints(paths)
    want = ck.average_state_dicts(snaps)
    name = next(k for k, v in want.items() if v.is_floating_point() and v.numel() > 1)
    torch.testing.assert_close(plain["model"][name], want[name])
    # running averages at steps 2 and 6: the mean of the snapshots at steps 4 and 6
    ranged = ck.average_checkpoints([paths[0], paths[2]], use_averaged=True)
    torch.testing.assert_close(ranged["model"][name], ck.average_state_dicts(snaps[1:])[name],
                               atol=1e-6, rtol=0)


def test_rng_state_round_trip() -> None:
    state = ck.rng_state()
    a = (random.random(), float(np.random.rand()), float(torch.rand(())))
    ck.set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == a
