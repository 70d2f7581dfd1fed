"""Fixture corpora and a helper that runs a recipe copy in a temporary directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small fixture per layout (4 speakers x 2 utterances), with archives."""
    from speechae.recipes.fixtures import LAYOUTS, write_fixture

    root = tmp_path_factory.mktemp("fixtures")
    out = {}
    for layout in LAYOUTS:
        parts = ("train-clean-5", "dev-clean-2", "test-clean")
        out[layout] = write_fixture(layout, root / layout, num_speakers=4, utts_per_speaker=2, archive=True,
                                    librispeech_parts=parts)
    return out


@pytest.fixture
def recipe_tools():  # noqa: ANN201
    """(recipe_copy, run_recipe, check_prepared) for the end-to-end tests."""
    return recipe_copy, run_recipe, check_prepared


def recipe_copy(name: str, tmp_path: Path) -> Path:
    """A copy of egs/<name>/ae in ``tmp_path`` (without data/exp)."""
    dest = tmp_path / "egs" / name / "ae"
    shutil.copytree(REPO / "egs" / name / "ae", dest, ignore=shutil.ignore_patterns("data", "exp", "download"))
    return dest


def run_recipe(recipe_dir: Path, *args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``recipe_dir/run.sh args`` offline with the test interpreter's environment."""
    env = dict(os.environ, SPEECHAE_SKIP_ENV="1", SPEECHAE_ROOT=str(REPO), SPEECHAE_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS="1", PYTHONUTF8="1", LC_ALL="C.UTF-8")
    proc = subprocess.run(["bash", str(recipe_dir / "run.sh"), *args], cwd=recipe_dir, env=env, text=True,
                          capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def check_prepared(recipe_dir: Path, prefix: str, splits: list[str]) -> None:
    """Stage 3 left cuts with features and units for every split, and batches get tokens."""
    from speechae.data.datamodule import DataConfig, Labels, load_cuts, make_dataloader

    written = (recipe_dir / "data" / "manifests" / f"{prefix}_splits.txt").read_text().strip().split(",")
    assert written == splits
    labels = Labels(recipe_dir / "data" / "lang")
    assert labels.sp is not None
    cwd = os.getcwd()
    os.chdir(recipe_dir)  # feature paths in the cuts are relative to the recipe directory
    try:
        for split in splits:
            cuts = load_cuts(f"data/targets/{prefix}_cuts_{split}.jsonl.gz")
            assert len(cuts) > 0 and all(c.has_features and c.has_custom("units") for c in cuts)
            batch = next(iter(make_dataloader(cuts, labels, DataConfig(max_duration=100.0, shuffle=False, num_buckets=2), train=False)))
            assert {"features", "tokens", "units"} <= batch.keys()
            assert int(batch["token_lens"].min()) > 0
    finally:
        os.chdir(cwd)
