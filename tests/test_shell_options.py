"""tools/parse_options.sh and tools/recipe_lib.sh: option parsing and stage selection."""

import subprocess
import textwrap

import pytest

from conftest import REPO

RECIPE = textwrap.dedent("""\
    #!/usr/bin/env bash
    set -euo pipefail
    cd "$(dirname "$0")"
    recipe_options="stage stop_stage nj name force_stage"
    stage=0; stop_stage=5; nj=2; name=default; force_stage=
    help_message="Usage: demo"
    source "{repo}/tools/recipe_lib.sh" "$@"
    done_dir=marks
    echo "nj=$nj name=$name"
    for s in 0 1 2 3 4 5; do
      if stage_selected $s; then run_stage $s demo bash -c "echo ran $s; echo $s >> ran.txt"; fi
    done
""")


@pytest.fixture()
def recipe(tmp_path, recipe_env):
    path = tmp_path / "run.sh"
    path.write_text(RECIPE.format(repo=REPO))
    path.chmod(0o755)

    def run(*args, check=True):
        return subprocess.run([str(path), *args], capture_output=True, text=True, env=recipe_env, check=check)

    return run, tmp_path


def test_stage_range_and_values(recipe):
    run, d = recipe
    out = run("--stage", "2", "--stop-stage", "3", "--nj", "7", "--name=x-y")
    assert "nj=7 name=x-y" in out.stdout
    assert (d / "ran.txt").read_text().split() == ["2", "3"]


def test_rerun_skips_done_stages_and_force_redoes(recipe):
    run, d = recipe
    run("--stage", "1", "--stop-stage", "2")
    out = run("--stage", "1", "--stop-stage", "2")
    assert "already done" in out.stderr
    assert (d / "ran.txt").read_text().split() == ["1", "2"]
    run("--stage", "1", "--stop-stage", "2", "--force-stage", "2")
    assert (d / "ran.txt").read_text().split() == ["1", "2", "2"]


def test_failed_stage_leaves_no_marker(tmp_path, recipe_env):
    path = tmp_path / "run.sh"
    path.write_text(RECIPE.format(repo=REPO).replace('bash -c "echo ran $s; echo $s >> ran.txt"', "false"))
    path.chmod(0o755)
    res = subprocess.run([str(path), "--stage", "1", "--stop-stage", "1"], capture_output=True, text=True, env=recipe_env)
    assert res.returncode != 0
    assert not list((tmp_path / "marks").glob("*.done")) if (tmp_path / "marks").exists() else True


def test_unknown_option_and_missing_value_fail(recipe):
    run, _ = recipe
    res = run("--no-such", "1", check=False)
    assert res.returncode != 0 and "unknown option --no-such" in res.stderr
    res = run("--nj", check=False)
    assert res.returncode != 0 and "needs a value" in res.stderr


def test_help_lists_options(recipe):
    run, d = recipe
    out = run("--help")
    assert "Usage: demo" in out.stdout and "--stop-stage" in out.stdout and "--nj" in out.stdout
    assert not (d / "ran.txt").exists()


def test_log_has_timestamp_and_location(recipe):
    run, _ = recipe
    err = run("--stage", "0", "--stop-stage", "0").stderr
    assert "Stage 0 (demo): start" in err and "(recipe_lib.sh:" in err
