"""The shared stage template (tools/ae_stages.sh + tools/recipe_lib.sh) through the tiny recipe's
run.sh, with a fake ``speechae`` on PATH (tests/recipes/fake_speechae): markers that record
their inputs, outputs that survive failures and signals, the experiment grid, new_recipe.sh."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).with_name("fake_speechae")
DATA = ["--stage", "0", "--stop-stage", "3"]


def _default_signals() -> None:
    """SIGINT/SIGQUIT at their defaults in run.sh: a test suite started in the background of a
    non-interactive shell inherits them ignored, and bash cannot trap a signal that was ignored
    when it started (the Ctrl-C test would then hang)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class Recipe:
    """A copy of a recipe directory run with the fake speechae."""

    def __init__(self, root: Path, recipe: Path) -> None:
        self.root, self.dir = root, recipe
        bin_dir = root / "bin"
        bin_dir.mkdir(exist_ok=True)
        if not (bin_dir / "speechae").exists():
            (bin_dir / "speechae").symlink_to(FAKE)
        self.log, self.pids = root / "calls.log", root / "pids"
        self.env = dict(os.environ, SPEECHAE_SKIP_ENV="1", SPEECHAE_ROOT=str(REPO), SPEECHAE_KILL_GRACE="5",
                        PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                        FAKE_LOG=str(self.log), FAKE_PIDS=str(self.pids), LC_ALL="C.UTF-8")

    def run(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", "run.sh", *args], cwd=self.dir, env=dict(self.env, **env), text=True,
                              capture_output=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"run.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc

    def popen(self, *args: str, **env: str) -> subprocess.Popen:
        """run.sh in the background; its stderr goes to ``self.stderr`` (a pipe would stay open as
        long as any orphaned stage process lives)."""
        self.stderr = self.root / "stderr.txt"
        with open(self.stderr, "w") as err:
            return subprocess.Popen(["bash", "run.sh", *args], cwd=self.dir, env=dict(self.env, **env), text=True,
                                    stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_default_signals)

    def finish(self, proc: subprocess.Popen) -> str:
        proc.wait(timeout=30)
        return self.stderr.read_text()

    def calls(self, command: str | None = None) -> list[str]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return [line for line in lines if command is None or line.split()[0] == command]

    def snapshot(self, *paths: str) -> dict[str, str]:
        """Contents of every file under ``paths`` (relative to the recipe), backups excluded."""
        out = {}
        for p in paths:
            for f in sorted((self.dir / p).rglob("*") if (self.dir / p).is_dir() else [self.dir / p]):
                if f.is_file():
                    out[str(f.relative_to(self.dir))] = f.read_text()
        return out


@pytest.fixture()
def mini(tmp_path: Path) -> Recipe:
    recipe = tmp_path / "egs" / "mini" / "ae"
    shutil.copytree(REPO / "egs" / "mini" / "ae", recipe, ignore=shutil.ignore_patterns("data", "exp"))
    return Recipe(tmp_path, recipe)


def _wait_for_pid(recipe: Recipe, proc: subprocess.Popen, timeout: float = 30) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if recipe.pids.exists() and recipe.pids.read_text().strip():
            return int(recipe.pids.read_text().split()[-1])
        assert proc.poll() is None, recipe.finish(proc)
        time.sleep(0.1)
    raise AssertionError("the stage never started its worker")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead
        return f.read().split()[2] != "Z"


def _gone(pid: int, timeout: float = 10) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


# ---- markers --------------------------------------------------------------------------------


def test_rerun_is_a_no_op_and_a_changed_argument_reruns_with_its_reason(mini: Recipe) -> None:
    mini.run(*DATA)
    assert [c.split()[0] for c in mini.calls()] == ["synth-corpus", "prepare-manifests", "compute-fbank",
                                                     "prepare-targets"]
    res = mini.run(*DATA, "--nj", "1")  # --nj does not change outputs
    assert res.stderr.count("already done") == 4 and mini.calls() == []
    res = mini.run(*DATA, "--num-clusters", "12")
    assert [c.split()[0] for c in mini.calls()] == ["prepare-targets"]
    assert "Stage 3 (targets): rerun because its arguments changed: '--num-clusters 50' -> '--num-clusters 12'" \
        in res.stderr


def test_an_old_marker_without_inputs_reruns_its_stage(mini: Recipe) -> None:
    mini.run(*DATA)
    (mini.dir / "data" / ".stage2.fbank.done").write_text("finished 2024-01-01 in 3s: speechae compute-fbank ...\n")
    mini.calls()
    res = mini.run(*DATA)
    assert "Stage 2 (fbank): rerun because its marker does not record its inputs" in res.stderr
    assert [c.split()[0] for c in mini.calls()] == ["compute-fbank", "prepare-targets"]


def test_a_changed_corpus_option_reruns_every_stage_that_reads_it(mini: Recipe) -> None:
    mini.run(*DATA)
    mini.calls()
    res = mini.run(*DATA, "--num-speakers", "10")
    assert len(mini.calls()) == 4
    assert "'--num-speakers 12' -> '--num-speakers 10'" in res.stderr
    for n, name in ((1, "manifests"), (2, "fbank"), (3, "targets")):
        assert f"Stage {n} ({name}): rerun because stage {n - 1}" in res.stderr


def test_force_stage_invalidates_the_later_stages(mini: Recipe) -> None:
    mini.run(*DATA)
    mini.run("--stage", "1", "--stop-stage", "1", "--force-stage", "1")
    mini.calls()
    # stage 4 reads stage 3, which was made from the old manifests: refused, nothing trained
    res = mini.run("--stage", "4", "--stop-stage", "4", check=False)
    assert res.returncode != 0 and mini.calls("train") == []
    assert "stage 2 (fbank) is out of date: stage 1 (manifests) was redone" in res.stderr
    assert "--stage 2" in res.stderr
    res = mini.run("--stage", "2", "--stop-stage", "3")
    assert [c.split()[0] for c in mini.calls()] == ["compute-fbank", "prepare-targets"]
    assert "Stage 2 (fbank): rerun because stage 1 (manifests) was redone since" in res.stderr


def test_stages_before_the_selected_ones_warn_when_their_options_changed(mini: Recipe) -> None:
    mini.run(*DATA)
    res = mini.run("--stage", "3", "--stop-stage", "3", "--num-speakers", "9")
    assert "warning: stage 0 (synth) is not selected, but its arguments changed" in res.stderr


@pytest.mark.parametrize("name", ["librispeech", "bengali"])
def test_a_changed_dl_dir_reruns_the_download_and_every_later_stage(tmp_path: Path, name: str) -> None:
    recipe_dir = tmp_path / "egs" / name / "ae"
    shutil.copytree(REPO / "egs" / name / "ae", recipe_dir, ignore=shutil.ignore_patterns("data", "exp"))
    recipe = Recipe(tmp_path, recipe_dir)
    recipe.run(*DATA, "--dl-dir", "a")
    recipe.calls()
    assert recipe.run(*DATA, "--dl-dir", "a").stderr.count("already done") == 4
    res = recipe.run(*DATA, "--dl-dir", "b")
    assert [c.split()[0] for c in recipe.calls()] == ["download-corpus", "prepare-corpus", "compute-fbank",
                                                        "prepare-targets"]
    assert f"Stage 0 (download): rerun because its arguments changed: '{name} a' -> '{name} b'" in res.stderr


@pytest.mark.parametrize("command, stage", [("prepare-manifests", "1"), ("compute-fbank", "2"),
                                            ("prepare-targets", "3")])
def test_a_failing_stage_leaves_the_previous_outputs_and_marker(mini: Recipe, command: str, stage: str) -> None:
    mini.run(*DATA)
    before = mini.snapshot("data")
    res = mini.run("--stage", stage, "--stop-stage", "3", "--force-stage", stage, check=False, FAKE_FAIL=command)
    assert res.returncode != 0
    assert "previous ones restored" in res.stderr
    assert mini.snapshot("data") == before  # every split's files, and every marker
    assert not list((mini.dir / "data").glob(".backup.*"))
    res = mini.run(*DATA)
    assert res.stderr.count("already done") == 4


def test_a_failing_first_run_leaves_no_marker(mini: Recipe) -> None:
    res = mini.run(*DATA, check=False, FAKE_FAIL="compute-fbank")
    assert res.returncode != 0
    assert not (mini.dir / "data" / "fbank").exists()
    assert not (mini.dir / "data" / ".stage2.fbank.done").exists()
    assert (mini.dir / "data" / ".stage1.manifests.done").exists()


# ---- signals --------------------------------------------------------------------------------


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_killing_run_sh_stops_the_stage_and_restores_its_outputs(mini: Recipe, sig: int, code: int) -> None:
    mini.run(*DATA)
    mini.calls()
    before = mini.snapshot("data")
    proc = mini.popen("--stage", "2", "--stop-stage", "3", "--force-stage", "2", FAKE_HANG="compute-fbank")
    worker = _wait_for_pid(mini, proc)
    proc.send_signal(sig)
    err = mini.finish(proc)
    assert proc.returncode == code, err
    assert _gone(worker), "the stage's worker outlived run.sh"
    assert f"caught SIG{signal.Signals(sig).name[3:]}" in err and "previous ones restored" in err
    assert mini.snapshot("data") == before
    assert "prepare-targets" not in [c.split()[0] for c in mini.calls()]


def test_kill_9_leaves_a_backup_that_the_next_run_restores(mini: Recipe) -> None:
    mini.run(*DATA)
    before = mini.snapshot("data")
    proc = mini.popen("--stage", "2", "--stop-stage", "2", "--force-stage", "2", FAKE_HANG="compute-fbank")
    worker = _wait_for_pid(mini, proc)
    proc.kill()
    mini.finish(proc)
    # the orphaned stage still holds its lock: a second run.sh refuses to touch the stage
    res = mini.run("--stage", "2", "--stop-stage", "2", check=False)
    assert res.returncode != 0 and "is running in another process" in res.stderr
    os.killpg(os.getpgid(worker), signal.SIGKILL)
    assert _gone(worker)
    res = mini.run(*DATA)
    assert "restoring the finished outputs an interrupted rerun had set aside" in res.stderr
    assert res.stderr.count("already done") == 4
    assert mini.snapshot("data") == before


# ---- the experiment grid ---------------------------------------------------------------------


GRID = ["--stage", "4", "--stop-stage", "6", "--vocoder", "false", "--arms", "none kl sigreg", "--seeds", "1 2",
        "--reg-weights", "0.01 0.05"]


def test_grid_trains_and_evaluates_every_run_then_compares_them_all(mini: Recipe) -> None:
    mini.run(*DATA)
    mini.calls()
    mini.run(*GRID)
    names = ["tiny_none_s1", "tiny_none_s2"] + [f"tiny_{a}_s{s}_w{w}" for a in ("kl", "sigreg") for s in (1, 2)
                                                for w in ("0.01", "0.05")]
    calls = mini.calls()
    train = {c.split("--exp-dir exp/")[1].split()[0]: c for c in calls if c.startswith("train ")}
    assert sorted(train) == sorted(names)
    assert "conf/arms/kl.yaml" in train["tiny_kl_s2_w0.05"]
    for opt in ("train.seed=2", "data.seed=2", "losses.weights.kl=0.05", "train.num_threads=1"):
        assert opt in train["tiny_kl_s2_w0.05"].split()
    assert "losses.weights" not in train["tiny_none_s1"]
    assert sum(c.startswith("evaluate ") for c in calls) == len(names)
    compare = [c for c in calls if c.startswith("compare ")]
    assert len(compare) == 1 and sorted(compare[0].split()[1:-2]) == sorted(f"exp/{n}" for n in names)
    res = mini.run(*GRID)
    assert [c.split()[0] for c in mini.calls()] == ["compare"]
    assert res.stderr.count("already done") == 2 * len(names)


def test_only_runs_spreads_a_grid_and_a_changed_config_reruns_its_runs(mini: Recipe) -> None:
    mini.run(*DATA)
    mini.calls()
    res = mini.run("--stage", "4", "--stop-stage", "6", "--vocoder", "false", "--only-runs", "tiny_kl_*")
    assert [c.split()[0] for c in mini.calls()] == ["train", "evaluate", "compare"]
    assert "not in the comparison (not evaluated yet): tiny_none_s1 tiny_sigreg_s1" in res.stderr
    mini.run("--stage", "4", "--stop-stage", "6", "--vocoder", "false")
    assert sum(c.startswith("train ") for c in mini.calls()) == 2
    arm = mini.dir / "conf" / "arms" / "kl.yaml"
    arm.write_text(arm.read_text() + "# edited\n")
    res = mini.run("--stage", "4", "--stop-stage", "6", "--vocoder", "false")
    calls = mini.calls()
    assert [c.split()[0] for c in calls] == ["train", "evaluate", "compare"] and "kl.yaml" in calls[0]
    assert "its input conf/arms/kl.yaml changed" in res.stderr
    base = mini.dir / "conf" / "train_base.yaml"
    base.write_text(base.read_text() + "# edited\n")
    mini.run("--stage", "4", "--stop-stage", "4")
    assert sum(c.startswith("train ") for c in mini.calls()) == 3


def test_a_failing_run_does_not_stop_the_others_and_resumes(mini: Recipe) -> None:
    mini.run(*DATA)
    mini.calls()
    res = mini.run("--stage", "4", "--stop-stage", "6", "--vocoder", "false", check=False, FAKE_FAIL="train:kl.yaml")
    assert res.returncode != 0 and "rerunning resumes it" in res.stderr
    exp = mini.dir / "exp"
    assert (exp / "tiny_none_s1" / ".stage4.train.done").exists()
    assert (exp / "tiny_sigreg_s1" / ".stage4.train.done").exists()
    assert not (exp / "tiny_kl_s1" / ".stage4.train.done").exists()
    assert (exp / "tiny_kl_s1" / "checkpoints").is_dir()  # kept for the resume
    assert "evaluate" not in [c.split()[0] for c in mini.calls()]
    res = mini.run("--stage", "4", "--stop-stage", "6", "--vocoder", "false", check=False, FAKE_FAIL="train:kl.yaml")
    assert "Stage 4 (train tiny_kl_s1): start (its last run did not finish)" in res.stderr
    assert "unfinished outputs were removed" not in res.stderr  # resumed
    res = mini.run("--stage", "4", "--stop-stage", "6", "--vocoder", "false", "--train-overrides", "optim.lr=0.01")
    assert "Stage 4 (train tiny_kl_s1): start (its last run did not finish with other options; " \
           "its unfinished outputs were removed)" in res.stderr


def test_a_failed_rerun_of_a_finished_run_keeps_it_until_options_return(mini: Recipe) -> None:
    mini.run(*DATA)
    mini.run("--stage", "4", "--stop-stage", "4", "--arms", "kl")
    before = mini.snapshot("exp/tiny_kl_s1")
    res = mini.run("--stage", "4", "--stop-stage", "4", "--arms", "kl", "--train-overrides", "optim.lr=0.01",
                   check=False, FAKE_FAIL="train")
    assert res.returncode != 0
    assert "optim.lr=0.01'" in res.stderr and "previous outputs kept in exp/.backup." in res.stderr
    res = mini.run("--stage", "4", "--stop-stage", "4", "--arms", "kl")
    assert "restoring the finished outputs" in res.stderr and "already done" in res.stderr
    assert mini.snapshot("exp/tiny_kl_s1") == before


def test_vocoder_stage_trains_once_and_every_evaluation_uses_it(mini: Recipe) -> None:
    mini.run(*DATA)
    mini.calls()
    mini.run("--stage", "4", "--stop-stage", "6", "--arms", "kl sigreg")
    calls = mini.calls()
    vocoder = [c for c in calls if c.startswith("train conf/vocoder.yaml")]
    assert len(vocoder) == 1 and "--exp-dir exp/vocoder" in vocoder[0]
    for opt in ("data.train_cuts=data/fbank/mini_cuts_train.jsonl.gz", "data.dev_cuts=data/fbank/mini_cuts_dev.jsonl.gz",
                "train.num_threads=1"):
        assert opt in vocoder[0].split()
    order = [c.split()[0] + (" vocoder" if "vocoder.yaml" in c else "") for c in calls]
    assert order.index("train vocoder") > max(i for i, c in enumerate(order) if c == "train")  # after the grid
    evaluations = [c for c in calls if c.startswith("evaluate ")]
    assert len(evaluations) == 2 and all("--vocoder exp/vocoder" in c for c in evaluations)
    mini.run("--stage", "5", "--stop-stage", "6", "--arms", "kl sigreg")
    assert [c.split()[0] for c in mini.calls()] == ["compare"]  # nothing retrained or re-evaluated
    mini.run("--stage", "5", "--stop-stage", "6", "--arms", "kl sigreg", "--vocoder-overrides", "train.max_steps=7")
    calls = mini.calls()
    assert [c.split()[0] for c in calls] == ["train", "evaluate", "evaluate", "compare"]  # new vocoder: re-judged
    res = mini.run("--stage", "5", "--stop-stage", "6", "--arms", "kl", "--vocoder", "false", "--force-stage", "6")
    assert "--vocoder false" in res.stderr and all("--vocoder" not in c for c in mini.calls())


def test_killing_the_grid_stops_every_run(mini: Recipe) -> None:
    mini.run(*DATA)
    proc = mini.popen("--stage", "4", "--stop-stage", "4", "--parallel-jobs", "2", FAKE_HANG="train")
    t0 = time.time()
    while time.time() - t0 < 30 and len(mini.pids.read_text().split() if mini.pids.exists() else []) < 2:
        time.sleep(0.1)
    workers = [int(p) for p in mini.pids.read_text().split()]
    assert len(workers) == 2  # --parallel-jobs 2
    proc.send_signal(signal.SIGTERM)
    err = mini.finish(proc)
    assert proc.returncode == 143, err
    assert all(_gone(w) for w in workers)
    assert "stopping 2 running stage(s)" in err
    # the runs' own SIGTERM handling comes through the log prefixing: last line and exit 75
    assert err.count("fake train: checkpoint written") == 2
    assert err.count("stopped (exit 75: checkpoint written)") == 2 and "rerunning resumes it" in err


# ---- tools/new_recipe.sh ---------------------------------------------------------------------


def _repo_copy(tmp_path: Path, *recipes: str) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "tools", root / "tools")
    for r in recipes:
        shutil.copytree(REPO / "egs" / r / "ae", root / "egs" / r / "ae", ignore=shutil.ignore_patterns("data", "exp"))
    return root


def test_new_recipe_uses_the_template_and_runs_every_stage(tmp_path: Path) -> None:
    root = _repo_copy(tmp_path, "mini")
    out = subprocess.run(["bash", str(root / "tools" / "new_recipe.sh"), "mylang"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    recipe = root / "egs" / "mylang" / "ae"
    assert {p.name for p in recipe.iterdir()} == {"run.sh", "conf", "local", "README.md"}
    assert {p.name for p in (recipe / "conf" / "arms").iterdir()} == {"none.yaml", "kl.yaml", "sigreg.yaml"}
    assert "data/targets/mylang_cuts_train.jsonl.gz" in (recipe / "conf" / "train_base.yaml").read_text()
    run = Recipe(tmp_path, recipe)
    run.env["SPEECHAE_ROOT"] = str(root)
    res = run.run("--stage", "0", "--stop-stage", "0", check=False)
    assert res.returncode != 0 and "local/prepare.sh is a stub" in res.stderr
    (recipe / "local" / "prepare.sh").write_text(
        '#!/usr/bin/env bash\nmkdir -p "$2"\nprintf "u1\\ts1\\ta.wav\\thello\\n" > "$2/utterances.tsv"\n')
    run.run("--train-overrides", "train.max_steps=4")
    calls = run.calls()
    assert [c.split()[0] for c in calls][:4] == ["prepare-corpus", "compute-fbank", "prepare-targets", "train"]
    assert "--prefix mylang" in calls[0]
    arms = [c for c in calls if c.startswith("train conf/arms/")]
    assert len(arms) == 3 and "train.max_steps=4" in calls[3]
    assert sum(c.startswith("train conf/vocoder.yaml") for c in calls) == 1  # stage 5 came with the fork
    assert calls[-1].startswith("compare ")
    # a changed local/prepare.sh reruns stage 0
    with open(recipe / "local" / "prepare.sh", "a") as f:
        f.write("# edited\n")
    res = run.run("--stage", "0", "--stop-stage", "0")
    assert "its input local/prepare.sh changed" in res.stderr


def test_new_recipe_from_bengali_does_not_keep_its_corpus_stages_silently(tmp_path: Path) -> None:
    root = _repo_copy(tmp_path, "mini", "bengali")
    out = subprocess.run(["bash", str(root / "tools" / "new_recipe.sh"), "mybn", "--from", "bengali"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "were NOT copied" in out.stdout and "--keep-corpus-stages" in out.stdout
    run_sh = (root / "egs" / "mybn" / "ae" / "run.sh").read_text()
    assert "download-corpus" not in run_sh and "prepare-corpus tsv" in run_sh
    assert "opt normalize none" in run_sh
    assert "mybn_cuts_train" in (root / "egs" / "mybn" / "ae" / "conf" / "train_base.yaml").read_text()
    out = subprocess.run(["bash", str(root / "tools" / "new_recipe.sh"), "mybn2", "--from", "bengali",
                          "--keep-corpus-stages"], capture_output=True, text=True)
    assert out.returncode == 0 and "COPIED from egs/bengali/ae" in out.stdout and "download-corpus" in out.stdout
    run_sh = (root / "egs" / "mybn2" / "ae" / "run.sh").read_text()
    assert "download-corpus bengali" in run_sh and "prefix=mybn2" in run_sh
    for bad in (["x", "y"], ["--nope"], ["Bad"], ["z", "--keep-corpus-stages"]):
        res = subprocess.run(["bash", str(root / "tools" / "new_recipe.sh"), *bad], capture_output=True, text=True)
        assert res.returncode == 2, bad


def test_new_recipe_config_loads_and_is_sized_for_a_small_corpus(tmp_path: Path) -> None:
    root = _repo_copy(tmp_path, "mini")
    subprocess.run(["bash", str(root / "tools" / "new_recipe.sh"), "small"], check=True, capture_output=True)
    recipe = root / "egs" / "small" / "ae"
    for arm in ("none", "kl", "sigreg"):
        res = subprocess.run([sys.executable, "-m", "speechae.cli", "train", f"conf/arms/{arm}.yaml",
                              "--exp-dir", str(tmp_path / "x"), "--print-config"], cwd=recipe, capture_output=True,
                             text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert res.returncode == 0, res.stderr
        import yaml

        cfg = yaml.safe_load(res.stdout)
        assert cfg["data"]["num_buckets"] <= 5 and cfg["data"]["max_duration"] <= 120
        assert cfg["losses"]["regularizer"] == arm
