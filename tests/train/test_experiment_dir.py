"""The experiment directory under faults: one run at a time, config changes on resume, damaged
checkpoints, killed writers, and a metrics log with exactly one record per step."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import yaml

from speechae.config import ConfigError
from speechae.train import checkpoint as ck
from speechae.train.config import RESUME_SAFE_KEYS, ExperimentConfig, experiment_config_from_dict
from speechae.train.distributed import DistEnv
from speechae.train.faults import EXIT_OK
from speechae.train.run import ExperimentLock, ExperimentLockedError, check_inputs, run_training
from speechae.train.trainer import Trainer, build_dataloaders


def _cfg(make_config, **train) -> ExperimentConfig:
    base = {"max_steps": 6, "save_every": 3, "keep_last_k": 0, "valid_every": 0, "tensorboard": False}
    return experiment_config_from_dict(make_config(train={**base, **train}))


def _train_steps(exp: Path, split: str | None = None) -> list[int]:
    recs = [json.loads(x) for x in (exp / "log" / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in recs if r.get("split") == split]


# ----------------------------------------------------------------------------- lock


def test_second_run_into_a_locked_directory_stops_with_the_holder(tmp_path: Path, make_config) -> None:
    exp = tmp_path / "exp"
    with ExperimentLock(exp):
        with pytest.raises(ExperimentLockedError) as info:
            run_training(_cfg(make_config), exp)
    msg = str(info.value)
    assert str(exp) in msg and f"pid {os.getpid()} on {socket.gethostname()}" in msg
    assert not (exp / "config.yaml").exists() and not (exp / "checkpoints").exists()
    # released on exit; the lock file of a dead holder (kernel-dropped flock) blocks nothing
    (exp / ".lock").write_text("pid 999999 on elsewhere since long ago\n")
    assert run_training(_cfg(make_config, max_steps=1, save_every=1), exp) == EXIT_OK
    ExperimentLock(exp).acquire().release()


def test_resume_refuses_a_changed_recipe_but_not_a_longer_run(exp_copy: Path, make_config) -> None:
    with pytest.raises(ConfigError) as info:
        run_training(experiment_config_from_dict(
            make_config(optim={"lr": 1e-4}, train={"max_steps": 6, "save_every": 3, "keep_last_k": 0,
                                                   "valid_every": 0, "tensorboard": False})), exp_copy)
    assert "optim.lr: 0.002 -> 0.0001" in str(info.value) and "--allow-config-change" in str(info.value)
    assert yaml.safe_load((exp_copy / "config.yaml").read_text())["optim"]["lr"] == 0.002  # untouched
    # run length, intervals and threads are safe to change on resume
    assert run_training(_cfg(make_config, max_steps=7, save_every=7, log_every=2, num_threads=1), exp_copy) == EXIT_OK
    assert ck.load_checkpoint(exp_copy)["step"] == 7


def test_resume_safe_keys_name_real_fields() -> None:
    cfg = ExperimentConfig().to_dict()
    for key in RESUME_SAFE_KEYS:
        block, name = key.split(".")
        assert name in cfg[block], key


# ----------------------------------------------------------------------------- damaged checkpoints


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "flipped_bit"])
def test_resume_skips_a_damaged_newest_checkpoint(exp_copy: Path, make_config, kind: str, caplog,  # noqa: ANN001
                                                  corrupt) -> None:  # noqa: ANN001
    newest = ck.checkpoint_path(exp_copy / "checkpoints", 6)
    corrupt(newest, kind)
    cfg = _cfg(make_config)
    train_dl, _, _ = build_dataloaders(cfg, DistEnv())
    trainer = Trainer(cfg, exp_copy, DistEnv(), train_dl, None)
    with caplog.at_level("WARNING", logger="speechae.train"):
        assert trainer.resume()
    assert trainer.step == 3
    assert str(newest) in caplog.text and "moved aside" in caplog.text
    assert newest.with_name(newest.name + ".corrupt").is_file() and not newest.exists()


def test_training_goes_on_from_the_previous_checkpoint(exp_copy: Path, make_config, corrupt) -> None:  # noqa: ANN001
    corrupt(ck.checkpoint_path(exp_copy / "checkpoints", 6), "flipped_bit")
    assert run_training(_cfg(make_config), exp_copy) == EXIT_OK
    assert ck.load_checkpoint(exp_copy)["step"] == 6  # redone from step 3 and written again
    assert _train_steps(exp_copy) == list(range(1, 7))


# ----------------------------------------------------------------------------- killed writers


def test_start_removes_temporary_files_of_killed_checkpoint_writes(exp_copy: Path, make_config) -> None:
    ckpts = exp_copy / "checkpoints"
    stale = ckpts / ".ckpt-00000009.tmpk1ll3d.pt"
    stale.write_bytes(os.urandom(1 << 16))
    other = ckpts / "notes.txt"
    other.write_text("mine")
    assert run_training(_cfg(make_config), exp_copy) == EXIT_OK  # nothing to do but the set-up
    assert not stale.exists() and other.read_text() == "mine"
    assert "removed 1 temporary file(s)" in (exp_copy / "log" / "train.log").read_text()


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after the raise point runs (no checkpoint, no clean-up)."""


def _run_killed_after_logging(cfg: ExperimentConfig, exp: Path, kill_step: int | None) -> None:
    env = DistEnv()
    train_dl, valid_dl, _ = build_dataloaders(cfg, env)
    trainer = Trainer(cfg, exp, env, train_dl, valid_dl)
    log_train = trainer._log_train

    def log_then_die(metrics: dict) -> None:
        log_train(metrics)
        if trainer.step == kill_step:  # after the step's record, before its checkpoint
            raise _Killed

    trainer._log_train = log_then_die
    try:
        assert trainer.fit() == EXIT_OK and kill_step is None
    except _Killed:
        with open(exp / "log" / "metrics.jsonl", "a") as f:
            f.write('{"step": 99, "loss/to')  # a record cut short by the kill


def test_metrics_hold_one_record_per_step_after_kills_and_resumes(tmp_path: Path, make_config) -> None:
    cfg = _cfg(make_config, max_steps=8, valid_every=4)
    exp = tmp_path / "exp"
    # before the first checkpoint; just after one; at a checkpoint step before it is written;
    # one step after a checkpoint; then to the end
    for kill_step in (2, 4, 6, 7, None):
        _run_killed_after_logging(cfg, exp, kill_step)
    assert _train_steps(exp) == list(range(1, 9))
    assert _train_steps(exp, "valid") == [4, 8]


# ----------------------------------------------------------------------------- inputs


def test_inputs_are_checked_before_anything_is_built(tmp_path: Path, make_config, tiny_data) -> None:
    def problems(**blocks) -> str:  # noqa: ANN003
        with pytest.raises(ConfigError) as info:
            check_inputs(experiment_config_from_dict(make_config(**blocks)))
        return str(info.value)

    check_inputs(experiment_config_from_dict(make_config()))  # the tiny corpus is fine
    msg = problems(data={"lang_dir": str(tmp_path / "no_lang"), "dev_cuts": str(tmp_path / "no_dev.jsonl.gz")})
    assert "data.lang_dir" in msg and "no_lang" in msg and "data.dev_cuts" in msg
    assert "data.train_cuts" in problems(data={"train_cuts": "nowhere/cuts.jsonl.gz"})
    # 8 k-means clusters: ids up to 7
    msg = problems(losses={"masked_units": {"num_classes": 4}})
    assert "losses.masked_units.num_classes=4" in msg and ">= " in msg
    msg = problems(losses={"semantic": ["ctc"], "ctc": {"vocab_size": 10}, "weights": {"recon": 1.0, "ctc": 1.0}})
    assert "losses.ctc.vocab_size=10" in msg
    run_dir = tmp_path / "exp"
    with pytest.raises(ConfigError):
        run_training(experiment_config_from_dict(make_config(losses={"masked_units": {"num_classes": 4}})), run_dir)
    assert not run_dir.exists()  # refused before the experiment directory was touched
