"""Checkpoint utilities: weights_only loading, model rebuild, averaging, pruning, RNG, integrity
(checksum, fall-back past damaged files, full disk, stale temporary files, file modes)."""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
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


def test_running_average_of_float64_weights_is_a_copy() -> None:
    """init_average must copy float64 tensors too (.double() would return the live tensor, and
    update_average would then overwrite the weights with the average)."""
    model = nn.Linear(2, 2).double()
    avg = ck.init_average(model)
    assert all(avg[k].data_ptr() != v.data_ptr() for k, v in model.state_dict().items())
    with torch.no_grad():
        model.weight.fill_(3.0)
    ck.update_average(avg, model, step=2, period=1)
    assert model.weight.eq(3.0).all() and not avg["weight"].eq(3.0).all()


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


# ----------------------------------------------------------------------------- integrity


KINDS = ("truncated", "garbage", "empty", "flipped_bit")


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_checkpoint_is_named_not_loaded(tmp_path: Path, kind: str, corrupt) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    path = ck.save_checkpoint(tmp_path / "ckpt-00000005.pt", _ckpt(5, build_model(SMALL_MODEL)))
    assert ck.load_checkpoint(path)["step"] == 5
    corrupt(path, kind)
    with pytest.raises(ck.CheckpointError) as info:
        ck.load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "weights_only" not in msg, msg
    if kind == "flipped_bit":
        assert "checksum" in msg


def test_resume_falls_back_to_newest_valid_and_sets_bad_one_aside(tmp_path: Path, caplog,  # noqa: ANN001
                                                                   corrupt) -> None:  # noqa: ANN001
    for s in (2, 4, 6):
        ck.save_checkpoint(ck.checkpoint_path(tmp_path, s), {"step": s, "w": torch.full((64,), float(s))})
    corrupt(ck.checkpoint_path(tmp_path, 6), "flipped_bit")
    corrupt(ck.checkpoint_path(tmp_path, 4), "empty")
    with caplog.at_level("WARNING", logger="speechae.train"):
        path, state = ck.find_resumable(tmp_path, quarantine=True)
    assert path == ck.checkpoint_path(tmp_path, 2) and state["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000002.pt", "ckpt-00000004.pt.corrupt",
                                                          "ckpt-00000006.pt.corrupt"]
    assert "ckpt-00000006.pt: checksum mismatch" in caplog.text and "ckpt-00000004.pt: the file is empty" in caplog.text
    # evaluation reads past a bad newest checkpoint without touching the directory
    ck.save_checkpoint(ck.checkpoint_path(tmp_path, 8), {"step": 8})
    corrupt(ck.checkpoint_path(tmp_path, 8), "garbage")
    assert ck.load_checkpoint(tmp_path)["step"] == 2 and ck.checkpoint_path(tmp_path, 8).exists()


def test_checkpoints_without_checksum_still_load(tmp_path: Path) -> None:
    path = tmp_path / "ckpt-00000001.pt"
    torch.save({"step": 1, "model": {"w": torch.ones(3)}}, path)  # the format before the checksum
    assert ck.load_checkpoint(path)["step"] == 1


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos "
                                                "20875200 vs 20875088")])
def test_full_disk_names_the_path(tmp_path: Path, monkeypatch, error: BaseException) -> None:  # noqa: ANN001
    path = ck.checkpoint_path(tmp_path, 4)
    ck.save_checkpoint(path, {"step": 4, "w": torch.zeros(8)})
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        Path(f).write_bytes(b"partial")
        raise error

    monkeypatch.setattr(torch, "save", full_disk)
    if isinstance(error, RuntimeError):  # torch's writer gives no errno: free space tells
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ck.CheckpointWriteError) as info:
        ck.save_checkpoint(path, {"step": 4, "w": torch.zeros(10**5)})
    assert str(path) in str(info.value) and "no space left on device" in str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    keep = ["ckpt-00000003.pt", "ckpt-00000002.pt.corrupt", ".notes.tmpabc.pt", "ckpt-x.tmp1.pt"]
    stale = [".ckpt-00000006.tmpa1b2_c3d.pt", ".ckpt-00000009.tmpzz9.pt"]
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"x")
    removed = ck.remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_checkpoint_file_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = ck.save_checkpoint(tmp_path / "ckpt-00000001.pt", {"step": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
