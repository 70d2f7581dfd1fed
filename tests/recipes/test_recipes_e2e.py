"""Each recipe runs stages 0-3 on its fixture corpus (offline, in a temporary copy)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from speechae.recipes.fixtures import LAYOUTS

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--nj", "1", "--num-clusters", "8", "--kmeans-max-cuts", "6"]


@pytest.mark.slow
def test_librispeech_stages_0_3_from_archives(corpora: dict[str, Path], tmp_path: Path, recipe_tools) -> None:  # noqa: ANN001
    recipe_copy, run_recipe, check_prepared = recipe_tools
    dl = tmp_path / "dl"
    dl.mkdir()
    for archive in (corpora["librispeech"] / "archives").iterdir():
        shutil.copy(archive, dl)
    good = (dl / "dev-clean-2.tar.gz").read_bytes()
    (dl / "dev-clean-2.tar.gz").write_bytes(good[: len(good) // 2])
    recipe = recipe_copy("librispeech", tmp_path)
    parts = "train-clean-5,dev-clean-2,test-clean"
    # A truncated archive is never extracted; offline, stage 0 says what to do.
    proc = run_recipe(recipe, "--stage", "0", "--stop-stage", "0", "--dl-dir", str(dl), "--dataset-parts", parts,
                      check=False)
    assert proc.returncode != 0 and "truncated or corrupt" in proc.stderr and "--dl-dir" in proc.stderr
    assert not (dl / "LibriSpeech" / "dev-clean-2").exists()
    (dl / "dev-clean-2.tar.gz").write_bytes(good)
    run_recipe(recipe, "--stage", "0", "--stop-stage", "3", "--dl-dir", str(dl), "--dataset-parts", parts,
               "--vocab-size", "60", *SMALL)
    assert (dl / ".dev-clean-2.tar.gz.completed").is_file()
    check_prepared(recipe, "librispeech", ["train", "dev", "test-clean"])
    # every stage left its marker; a re-run with the same options is a no-op (--nj does not count)
    proc = run_recipe(recipe, "--stage", "0", "--stop-stage", "3", "--dl-dir", str(dl), "--dataset-parts", parts,
                      "--vocab-size", "60", *SMALL[2:], "--nj", "2")
    assert proc.stderr.count("already done") == 4


@pytest.mark.slow
def test_bengali_stages_0_3_all_corpora(corpora: dict[str, Path], tmp_path: Path, recipe_tools) -> None:  # noqa: ANN001
    recipe_copy, run_recipe, check_prepared = recipe_tools
    dl = tmp_path / "dl"
    dl.mkdir()
    for layout in ("slr53", "commonvoice", "bengaliai"):
        for archive in (corpora[layout] / "archives").iterdir():
            shutil.copy(archive, dl)
    recipe = recipe_copy("bengali", tmp_path)
    run_recipe(recipe, "--stage", "0", "--stop-stage", "3", "--dl-dir", str(dl),
               "--corpora", "slr53,commonvoice,bengaliai", "--dev-fraction", "0.25", "--test-fraction", "0.25",
               "--speed-perturb", "false", *SMALL)
    check_prepared(recipe, "bengali", ["train", "dev", "test"])
    from lhotse import load_manifest

    sups = load_manifest(recipe / "data" / "manifests" / "bengali_supervisions_train.jsonl.gz")
    assert {s.id.split("-")[0] for s in sups} == {"slr53", "cv", "bai"}  # ids prefixed per corpus
    assert all("।" not in s.text for s in sups)


@pytest.mark.slow
def test_new_recipe_stages_0_3(corpora: dict[str, Path], tmp_path: Path, recipe_tools) -> None:  # noqa: ANN001
    _, run_recipe, check_prepared = recipe_tools
    root = tmp_path / "repo"
    (root / "egs").mkdir(parents=True)
    shutil.copytree(REPO / "tools", root / "tools")
    shutil.copytree(REPO / "egs" / "mini" / "ae" / "conf", root / "egs" / "mini" / "ae" / "conf")
    shutil.copy(REPO / "egs" / "mini" / "ae" / "run.sh", root / "egs" / "mini" / "ae" / "run.sh")
    subprocess.run(["bash", str(root / "tools" / "new_recipe.sh"), "mylang"], check=True, capture_output=True)
    recipe = root / "egs" / "mylang" / "ae"
    assert {p.name for p in recipe.iterdir()} >= {"run.sh", "conf", "local", "README.md"}
    # the stub refuses to run until filled in
    assert run_recipe(recipe, "--stage", "0", "--stop-stage", "0", check=False).returncode != 0
    # what a filled-in local/prepare.sh writes: utterances.tsv (here from the OpenSLR 53 fixture)
    corpus = corpora["slr53"] / "asr_bengali"
    rows = [line.split("\t") for line in (corpus / "utt_spk_text.tsv").read_text(encoding="utf-8").splitlines()]
    listing = tmp_path / "utterances.tsv"
    listing.write_text("".join(
        f"{u}\t{s}\t{corpus / 'data' / u[:2] / (u + '.flac')}\t{t}\n" for u, s, t in rows), encoding="utf-8")
    (recipe / "local" / "prepare.sh").write_text(f'#!/usr/bin/env bash\nmkdir -p "$2"\ncp {listing} "$2/utterances.tsv"\n')
    # stage 1 reads stage 0's output: refused until stage 0 has run
    proc = run_recipe(recipe, "--stage", "1", "--stop-stage", "1", check=False)
    assert proc.returncode != 0 and "stage 0 (prepare) has not run" in proc.stderr
    run_recipe(recipe, "--stage", "0", "--stop-stage", "3", "--normalize", "bengali", "--language", "bn",
               "--dev-fraction", "0.25", "--test-fraction", "0.25", "--model-type", "char", *SMALL)
    check_prepared(recipe, "mylang", ["train", "dev", "test"])


def test_fixture_layouts(corpora: dict[str, Path]) -> None:
    """The fixtures look like the real corpora (the paths Lhotse's readers rely on)."""
    assert set(corpora) == set(LAYOUTS)
    ls = corpora["librispeech"] / "LibriSpeech"
    trans = sorted(ls.glob("train-clean-5/*/*/*.trans.txt"))
    assert trans and (ls / "SPEAKERS.TXT").is_file()
    utt, text = trans[0].read_text().splitlines()[0].split(" ", 1)
    assert text == text.upper() and (trans[0].parent / f"{utt}.flac").is_file()
    cv = next(corpora["commonvoice"].glob("cv-corpus-*/bn"))
    assert all((cv / f"{s}.tsv").is_file() for s in ("train", "dev", "test", "validated", "invalidated", "other"))
    assert any((cv / "clips").glob("*.mp3"))
    bai = corpora["bengaliai"] / "bengaliai-speech"
    assert (bai / "train.csv").read_text().startswith("id,sentence,split\n") and any((bai / "train_mp3s").glob("*.mp3"))
    assert len(list((corpora["slr53"] / "archives").glob("asr_bengali_*.zip"))) == 16


@pytest.mark.slow
def test_hindi_recipe_stages_0_6_from_nothing(tmp_path: Path, recipe_tools) -> None:  # noqa: ANN001
    """The recipe forked with tools/new_recipe.sh for Hindi: its own synthetic corpus (espeak-ng),
    the shared stages, three arms trained a few steps, a vocoder trained a few steps (tiny size),
    evaluated with the listening evaluation through it, and compared."""
    import json

    recipe_copy, run_recipe, check_prepared = recipe_tools
    recipe = recipe_copy("hindi", tmp_path)
    run_recipe(recipe, "--num-speakers", "5", "--utts-per-speaker", "4", "--num-clusters", "8",
               "--model-size", "tiny", "--parallel-jobs", "2", "--train-threads", "1",
               "--train-overrides", "train.max_steps=2 train.valid_every=2 train.save_every=2 train.average_every=1",
               "--vocoder-overrides", "train.max_steps=2 train.valid_every=2 train.save_every=2 vocoder.preset=tiny "
               "discriminator.mpd_channels=[4,8] discriminator.mrd_channels=4 data.batch_size=2 data.num_workers=0",
               "--eval-args", "--probe-epochs 1 --token-probe-epochs 1 --baselines fbank --listen-utts 2 "
               "--listen-judges speaker", timeout=900)
    check_prepared(recipe, "hindi", ["train", "dev", "test"])
    assert (recipe / "exp" / "vocoder" / ".stage5.vocoder.done").is_file()
    for arm in ("none", "kl", "sigreg"):
        metrics = json.loads((recipe / "exp" / f"tiny_{arm}_s1" / "eval" / "metrics.json").read_text())
        listening = metrics["listening"]
        assert listening["num_utterances"] == 2 and listening["vocoder"].endswith("exp/vocoder")
        assert 0.0 <= listening["system"]["waveform.stoi"] <= 1.0 and "judges.speaker_sim" in listening["system"]
    assert (recipe / "exp" / "compare" / "compare.md").is_file()
