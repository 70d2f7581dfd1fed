"""Interrupting training: SIGKILL + resume gives the uninterrupted weights; SIGTERM checkpoints."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from speechae.train.checkpoint import list_checkpoints, load_checkpoint
from speechae.train.config import experiment_config_from_dict
from speechae.train.faults import EXIT_INTERRUPTED, EXIT_OK
from speechae.train.run import run_training

MAX_STEPS = 10


def _start(python: str, config: Path, exp: Path, env: dict) -> subprocess.Popen:
    cmd = [python, "-m", "speechae.cli", "train", str(config), "--exp-dir", str(exp)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(proc: subprocess.Popen, exp: Path, min_step: int, timeout: float = 120) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        steps = [s for s, _ in list_checkpoints(exp / "checkpoints")]
        if steps and steps[-1] >= min_step:
            return steps[-1]
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}):\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint appeared in time")


@pytest.fixture()
def config_file(tmp_path: Path, make_config) -> Path:
    cfg = make_config(train={"max_steps": MAX_STEPS, "save_every": 2, "valid_every": 4, "keep_last_k": 0,
                             "log_every": 1},
                      data={"max_duration": 8.0})  # several epochs: resume crosses epoch boundaries
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path, config_file: Path, python: str,
                                                       cli_env: dict) -> None:
    exp = tmp_path / "killed"
    proc = _start(python, config_file, exp, cli_env)
    _wait_for_checkpoint(proc, exp, 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(exp)["step"] < MAX_STEPS
    proc = _start(python, config_file, exp, cli_env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_OK, out
    assert "resumed from" in out

    ref = tmp_path / "reference"
    cfg = experiment_config_from_dict(yaml.safe_load(config_file.read_text()))
    assert run_training(cfg, ref) == EXIT_OK
    a, b = load_checkpoint(exp), load_checkpoint(ref)
    assert a["step"] == b["step"] == MAX_STEPS and a["epoch"] == b["epoch"] > 0
    assert set(a["modules"]) == {"model", "losses"} and set(a["optimizers"]) == {"model"}
    trees = [(key, a[key], b[key]) for key in ("model", "model_avg")]
    trees += [(f"modules.{m}", a["modules"][m], b["modules"][m]) for m in b["modules"]]
    for key, got, want in trees:
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0, msg=f"{key}.{name}")
    assert a["sampler"] == b["sampler"]
    steps = [r["step"] for r in map(yaml.safe_load, (exp / "log" / "metrics.jsonl").read_text().splitlines())
             if "split" not in r]
    assert steps == list(range(1, MAX_STEPS + 1))  # redone steps were not logged twice


def test_sigterm_writes_a_usable_checkpoint(tmp_path: Path, config_file: Path, python: str,
                                            cli_env: dict) -> None:
    exp = tmp_path / "terminated"
    proc = _start(python, config_file, exp, cli_env)
    _wait_for_checkpoint(proc, exp, 2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, out
    state = load_checkpoint(exp)
    assert 2 <= state["step"] < MAX_STEPS and "stopped by signal" in out
    assert state["optimizers"]["model"]["state"] and state["sampler"]["diagnostics"]
    proc = _start(python, config_file, exp, cli_env)  # the re-submitted job resumes and finishes
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_OK, out
    assert load_checkpoint(exp)["step"] == MAX_STEPS


def _sigterm_caught(pid: int) -> bool:
    """True once the process has a handler for SIGTERM (SigCgt bit 15 in /proc/<pid>/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/<pid>/status")
@pytest.mark.parametrize("delay", [0.0, 0.4, 1.5])
def test_sigterm_during_start_up_exits_75(tmp_path: Path, config_file: Path, python: str, cli_env: dict,
                                          delay: float) -> None:
    """SIGTERM right after the handler is installed (imports), during the data and model build,
    or in the loop: always exit 75, never a traceback."""
    exp = tmp_path / "early"
    t0 = time.perf_counter()
    proc = _start(python, config_file, exp, cli_env)
    while not _sigterm_caught(proc.pid):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.002)
    installed = time.perf_counter() - t0
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    print(f"SIGTERM handler installed {installed:.3f} s after start; signal at +{delay} s")
    assert proc.returncode == EXIT_INTERRUPTED, out
    assert "Traceback" not in out
    assert installed < 2.0  # before torch is imported (~0.1 s on an idle machine)
