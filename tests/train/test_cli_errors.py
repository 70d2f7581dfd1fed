"""User errors from any ``speechae`` command: one line on stderr and exit 2; the traceback
only under ``--debug`` / ``SPEECHAE_DEBUG=1``.  Bugs keep their traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from speechae.bin import USER_ERROR_EXIT, user_error_message
from speechae.config import ConfigError
from speechae.train.run import ExperimentLock


def _speechae(python: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "speechae.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess, command: str,
                    codes: tuple[int, ...] = (USER_ERROR_EXIT,)) -> str:
    assert proc.returncode in codes, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"speechae {command}: error: "), proc.stderr
    assert proc.stderr.rstrip().endswith(errors[0])  # the last thing printed
    return errors[0]


@pytest.fixture()
def config_path(tmp_path: Path, make_config) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(make_config(train={"max_steps": 2, "tensorboard": False})))
    return path


@pytest.mark.parametrize("override, expected", [
    ("data.lang_dir=/nonexistent/lang", "data.lang_dir: /nonexistent/lang is not a directory"),
    ("losses.masked_units.num_classes=4", "losses.masked_units.num_classes=4"),
    ("train.max_step=5", "unknown key(s) ['max_step']"),
])
def test_train_config_errors_are_one_line(tmp_path: Path, config_path: Path, python: str, cli_env: dict,
                                          override: str, expected: str) -> None:
    proc = _speechae(python, cli_env, "train", str(config_path), override, "--exp-dir", str(tmp_path / "exp"))
    assert expected in _one_error_line(proc, "train")


def test_debug_shows_the_traceback(tmp_path: Path, config_path: Path, python: str, cli_env: dict) -> None:
    args = ("train", str(config_path), "data.lang_dir=/nonexistent", "--exp-dir", str(tmp_path / "exp"))
    proc = _speechae(python, cli_env, *args, "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
    proc = _speechae(python, dict(cli_env, SPEECHAE_DEBUG="1"), *args)
    assert "Traceback" in proc.stderr


def test_locked_experiment_is_one_line_naming_the_holder(tmp_path: Path, config_path: Path, python: str,
                                                          cli_env: dict) -> None:
    exp = tmp_path / "exp"
    with ExperimentLock(exp):
        proc = _speechae(python, cli_env, "train", str(config_path), "--exp-dir", str(exp))
    line = _one_error_line(proc, "train")
    assert str(exp) in line and f"pid {os.getpid()}" in line


def test_compute_fbank_input_error_is_one_line(tmp_path: Path, python: str, cli_env: dict) -> None:
    (tmp_path / "manifests").mkdir()
    proc = _speechae(python, cli_env, "compute-fbank", str(tmp_path / "manifests"), str(tmp_path / "fbank"))
    # 1 when the command reports it itself (click.ClickException), 2 when the group classifies it
    assert "missing" in _one_error_line(proc, "compute-fbank", codes=(1, USER_ERROR_EXIT))


def test_empty_checkpoint_is_named_not_aborted(tmp_path: Path, python: str, cli_env: dict) -> None:
    empty = tmp_path / "ckpt-00000004.pt"
    empty.write_bytes(b"")
    proc = _speechae(python, cli_env, "average", str(empty), "--plain", "--out", str(tmp_path / "avg.pt"))
    line = _one_error_line(proc, "average")
    assert str(empty) in line and "Aborted" not in proc.stderr


def test_which_errors_are_user_errors() -> None:
    assert user_error_message(ConfigError("config.train: bad")) == "config.train: bad"
    assert user_error_message(FileNotFoundError(2, "No such file or directory", "/x/y")) == \
        "/x/y: No such file or directory"
    assert user_error_message(OSError(28, "No space left on device")) is not None
    try:
        int("abc")  # a ValueError from outside speechae is a bug: keep the traceback
    except ValueError as e:
        assert user_error_message(e) is None
    assert user_error_message(KeyError("features")) is None
    assert user_error_message(RuntimeError("boom")) is None
