"""tools/parse_options.sh and the recipes' command lines: declared, typed, described options;
every bad command line stops before any stage with one line on stderr."""

import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import REPO

DEMO = textwrap.dedent("""\
    #!/usr/bin/env bash
    set -euo pipefail
    source "{repo}/tools/parse_options.sh"
    opt_group "Demo options"
    opt stage 0 int:0-5 "first stage"
    opt nj 2 posint "parallel jobs"
    opt name default str "a name"
    opt seeds 1 ints "seeds"
    opt weights "" floats "weights"
    opt flag false bool "a flag"
    opt kind a "choice:a|b" "a kind"
    opt threads "" "uint?" "threads"
    help_message="Usage: demo"
    parse_options "$@"
    echo "stage=$stage nj=$nj name=$name seeds=$seeds weights=$weights flag=$flag kind=$kind threads=$threads"
""")

RECIPES = sorted(p.parts[-3] for p in (REPO / "egs").glob("*/ae/run.sh"))


@pytest.fixture()
def demo(tmp_path, recipe_env):
    path = tmp_path / "demo.sh"
    path.write_text(DEMO.format(repo=REPO))
    path.chmod(0o755)

    def run(*args):
        return subprocess.run([str(path), *args], capture_output=True, text=True, env=recipe_env, cwd=tmp_path)

    return run, tmp_path


def test_values_are_parsed_and_normalised(demo):
    run, _ = demo
    out = run("--stage", "2", "--nj=7", "--name", "x-y", "--seeds", "1,2, 3", "--weights", "0.01 1e-3",
              "--flag", "true", "--kind", "b", "--threads", "")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "stage=2 nj=7 name=x-y seeds=1 2 3 weights=0.01 1e-3 flag=true kind=b threads="


@pytest.mark.parametrize("args, message", [
    (["foo"], "unexpected argument 'foo'"),
    (["foo", "--stage", "3"], "unexpected argument 'foo'"),
    (["--stage", "3", "foo"], "unexpected argument 'foo'"),
    (["--stage", "abc"], "--stage: 'abc' is not an integer"),
    (["--stage", "9"], "--stage: 9 is out of range (0-5)"),
    (["--stage", "-1"], "--stage: '-1' is not an integer"),
    (["--no-such", "1"], "unknown option --no-such"),
    (["--no-such=1"], "unknown option --no-such"),
    (["--nj"], "option --nj needs a value"),
    (["--nj", "0"], "--nj: '0' is not a positive integer"),
    (["--flag", "yes"], "--flag: 'yes' is not true or false"),
    (["--kind", "c"], "--kind: 'c' is not one of a|b"),
    (["--seeds", "1 x"], "--seeds: 'x' is not an integer"),
    (["--weights", "0.1 abc"], "--weights: 'abc' is not a number"),
    (["--threads", "two"], "--threads: 'two' is not a non-negative integer"),
    (["--config", "missing.conf"], "--config: no such file 'missing.conf'"),
])
def test_bad_command_lines_are_one_line_errors(demo, args, message):
    run, _ = demo
    res = run(*args)
    assert res.returncode == 2
    assert res.stdout == ""  # nothing ran
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr


def test_config_file_is_applied_where_it_stands(demo):
    run, d = demo
    (d / "my.conf").write_text('# a comment\nnj=5\nname="two words"  # trailing comment\nseeds=4,5\nweights=0.5 # x\n')
    out = run("--config", "my.conf", "--nj", "6")
    assert "nj=6 name=two words seeds=4 5 weights=0.5" in out.stdout
    out = run("--nj", "6", "--config", "my.conf")
    assert "nj=5" in out.stdout
    (d / "bad.conf").write_text("nj=5\nnj 6\n")
    res = run("--config", "bad.conf")
    assert res.returncode == 2 and "bad.conf:2: expected name=value" in res.stderr
    (d / "unknown.conf").write_text("bogus=1\n")
    res = run("--config", "unknown.conf")
    assert res.returncode == 2 and "unknown.conf:1: unknown option --bogus" in res.stderr
    (d / "typed.conf").write_text("stage=7\n")
    assert "out of range" in run("--config", "typed.conf").stderr


def test_help_describes_every_option(demo):
    run, _ = demo
    out = run("--help")
    assert out.returncode == 0 and out.stdout.startswith("Usage: demo")
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^  --(\S+) +(?:\S+ +)?(.*)$", out.stdout, re.M)}
    assert "Demo options" in out.stdout
    assert "--stage N" in out.stdout and "--flag true|false" in out.stdout and '--seeds "N ..."' in out.stdout
    for name in ("stage", "nj", "name", "seeds", "weights", "flag", "kind", "threads", "config", "help"):
        assert name in lines and lines[name].strip(), name
    assert "parallel jobs [2]" in out.stdout  # description and default


# ---- the real recipes -----------------------------------------------------------------------


def _template_options() -> list[str]:
    text = (REPO / "tools" / "ae_stages.sh").read_text()
    return [n.replace("_", "-") for n in re.findall(r"^opt (\w+) ", text, re.M)]


def _help_options(recipe: str, env) -> dict[str, str]:
    res = subprocess.run([str(REPO / "egs" / recipe / "ae" / "run.sh"), "--help"], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0, res.stderr
    out = {}
    for line in res.stdout.splitlines():
        m = re.match(r"^  --(\S+) (.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_every_recipe_lists_the_same_options_with_descriptions(recipe_env):
    shared = _template_options()
    assert {"stage", "stop-stage", "nj", "arms", "seeds", "reg-weights", "world-size", "train-overrides",
            "eval-args", "force-stage", "parallel-jobs", "only-runs", "list-runs"} <= set(shared)
    assert set(RECIPES) >= {"mini", "librispeech", "bengali"}
    for recipe in RECIPES:
        options = _help_options(recipe, recipe_env)
        assert set(shared) | {"config", "help"} <= set(options), recipe
        for name, rest in options.items():
            # "<metavar> <description> [default]": a description follows the metavar
            assert re.search(r"\S+ +\S.*", rest.strip()), f"{recipe}: --{name} has no description"


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("args, message", [
    (["foo", "--stage", "6"], "unexpected argument 'foo'"),
    (["--stage", "abc"], "'abc' is not an integer"),
    (["--stage", "9"], "9 is out of range (0-6)"),
    (["--stop-stage", "1", "--stage", "3"], "--stop-stage 1 is before --stage 3"),
    (["--arms", "none bogus"], "--arms: unknown arm 'bogus'"),
    (["--arm", "kl"], "unknown option --arm"),
    (["--only-runs", "nothing_*"], "matches no run of the grid"),
    (["--fractions", "1.5"], "--fractions: 1.5 is not in (0, 1]"),
])
def test_recipes_reject_bad_command_lines_before_any_stage(recipe, args, message, tmp_path, recipe_env):
    res = subprocess.run([str(REPO / "egs" / recipe / "ae" / "run.sh"), *args], capture_output=True, text=True,
                         env=recipe_env, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert res.stdout == ""


def test_top_level_run_sh_forwards_arguments(recipe_env):
    res = subprocess.run([str(REPO / "run.sh"), "--help"], capture_output=True, text=True, env=recipe_env)
    assert res.returncode == 0 and "tiny synthetic English+Bengali recipe" in res.stdout
    res = subprocess.run([str(REPO / "run.sh"), "stray"], capture_output=True, text=True, env=recipe_env)
    assert res.returncode == 2 and "unexpected argument 'stray'" in res.stderr


def test_grid_of_the_tiny_recipe(recipe_env):
    run_sh = str(REPO / "egs" / "mini" / "ae" / "run.sh")
    default = subprocess.run([run_sh, "--list-runs", "true"], capture_output=True, text=True, env=recipe_env)
    assert [line.split()[0] for line in default.stdout.splitlines()] == ["tiny_none_s1", "tiny_kl_s1", "tiny_sigreg_s1"]
    res = subprocess.run([run_sh, "--list-runs", "true", "--arms", "none kl", "--seeds", "1 2",
                          "--reg-weights", "0.01 0.05"], capture_output=True, text=True, env=recipe_env)
    runs = {line.split()[0]: line.split()[1:] for line in res.stdout.splitlines()}
    assert sorted(runs) == sorted(["tiny_none_s1", "tiny_none_s2", "tiny_kl_s1_w0.01", "tiny_kl_s1_w0.05",
                                   "tiny_kl_s2_w0.01", "tiny_kl_s2_w0.05"])
    assert runs["tiny_kl_s2_w0.05"][0] == "conf/arms/kl.yaml"
    assert {"train.seed=2", "data.seed=2", "losses.weights.kl=0.05"} <= set(runs["tiny_kl_s2_w0.05"])
    assert not any(o.startswith("losses.weights") for o in runs["tiny_none_s2"])


def test_no_stale_parser_left(recipe_env):
    """Every recipe sources the template; no recipe parses options or defines stages 2-5 itself."""
    for recipe in RECIPES:
        text = (REPO / "egs" / recipe / "ae" / "run.sh").read_text()
        assert "tools/ae_stages.sh" in text and "ae_main" in text
        assert not re.search(r"compute-fbank|prepare-targets|speechae train|speechae evaluate", text), recipe
        assert len(text.splitlines()) <= 60, recipe
    assert Path(REPO / "tools" / "parse_options.sh").is_file()
