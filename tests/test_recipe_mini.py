"""The tiny recipe's data stages end to end, through its run.sh, in a temporary copy."""

import shutil
import subprocess
import time

from lhotse import load_manifest

from conftest import REPO


def test_mini_recipe_stages_0_to_3_and_idempotent_rerun(tmp_path, recipe_env):
    recipe = tmp_path / "egs" / "mini" / "ae"
    shutil.copytree(REPO / "egs" / "mini" / "ae", recipe, ignore=shutil.ignore_patterns("data", "exp"))
    args = [str(recipe / "run.sh"), "--stage", "0", "--stop-stage", "3", "--num-speakers", "8",
            "--utts-per-speaker", "4", "--num-clusters", "10", "--vocab-size", "64"]
    res = subprocess.run(args, capture_output=True, text=True, env=recipe_env)
    assert res.returncode == 0, res.stderr[-3000:]
    for split in ("train", "dev", "test"):
        cuts = load_manifest(recipe / "data" / "fbank" / f"mini_cuts_{split}.jsonl.gz")
        sups = [s for c in cuts for s in c.supervisions]
        assert all(c.has_features and c.num_features == 80 for c in cuts)
        assert {s.language for s in sups} == {"en", "bn"}
        assert all(s.speaker and s.alignment["phone"] for s in sups)
        assert all(c.has_custom("units") for c in load_manifest(recipe / "data" / "targets" / f"mini_cuts_{split}.jsonl.gz"))
    t0 = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True, env=recipe_env)
    assert res.returncode == 0
    assert res.stderr.count("already done") == 4
    assert time.perf_counter() - t0 < 10
    # a changed option reruns its stage (and only the stages after it)
    res = subprocess.run(args[:-2] + ["--vocab-size", "80"], capture_output=True, text=True, env=recipe_env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("already done") == 3
    assert "Stage 3 (targets): rerun because its arguments changed: '--vocab-size 64' -> '--vocab-size 80'" in res.stderr
