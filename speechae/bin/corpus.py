"""Real-corpus commands (stage 0 download, stage 1 manifests) and fixture corpora."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

from speechae.bin.data import audio_policy_options, make_policy
from speechae.utils.logging import setup_logging

RECIPES = ("librispeech", "bengali")
PREPARERS = RECIPES + ("tsv",)


def fail_cleanly(fn, *args, **kwargs):  # noqa: ANN001, ANN202
    """Turn 'corpus unavailable' and bad-input errors into a one-paragraph message and exit 1."""
    from speechae.data.validate import BadInputError
    from speechae.recipes.archives import BadArchiveError, CorpusUnavailableError

    try:
        return fn(*args, **kwargs)
    except (CorpusUnavailableError, BadArchiveError, BadInputError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None


@click.command("fixture-corpus")
@click.argument("out_dir", type=click.Path())
@click.option("--layout", type=click.Choice(["librispeech", "slr53", "commonvoice", "bengaliai"]), required=True)
@click.option("--num-speakers", default=5, show_default=True)
@click.option("--utts-per-speaker", default=3, show_default=True)
@click.option("--archive/--no-archive", default=False, show_default=True,
              help="also write the downloadable archive form into OUT_DIR/archives/")
@click.option("--librispeech-parts", default="train-clean-5,dev-clean-2", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--corrupt", is_flag=True,
              help="slr53 only: a corrupted corpus with every kind of bad input stage 1 must catch (synthetic "
                   "audio; OUT_DIR/corruptions.tsv lists each kind and its expected outcome)")
def fixture_corpus(out_dir: str, layout: str, num_speakers: int, utts_per_speaker: int, archive: bool,
                   librispeech_parts: str, seed: int, corrupt: bool) -> None:
    """Write a small espeak-ng corpus laid out exactly like LibriSpeech / OpenSLR 53 / Common Voice / Bengali.AI."""
    from speechae.recipes.fixtures import write_fixture

    setup_logging()
    t0 = time.perf_counter()
    if corrupt:
        from speechae.recipes.corrupt import write_corrupt_slr53

        if layout != "slr53":
            raise click.BadParameter("--corrupt is implemented for --layout slr53 only", param_hint="--corrupt")
        found = write_corrupt_slr53(out_dir, max(num_speakers, 5), utts_per_speaker, seed)
        logging.info("corrupted fixture: %d kinds, %d clean utterances in %s (see corruptions.tsv)",
                     len(found.corruptions), len(found.clean), out_dir)
        return
    write_fixture(layout, out_dir, num_speakers, utts_per_speaker, archive, seed, tuple(librispeech_parts.split(",")))
    logging.info("fixture %s written to %s in %.1f s", layout, out_dir, time.perf_counter() - t0)


@click.command("download-corpus")
@click.argument("recipe", type=click.Choice(RECIPES))
@click.argument("dl_dir", type=click.Path())
@click.option("--dataset-parts", default="mini_librispeech", show_default=True,
              help="librispeech: 'librispeech' (960 h + dev/test), 'mini_librispeech', or comma-separated parts")
@click.option("--corpora", default="slr53", show_default=True, help="bengali: comma-separated slr53,commonvoice,bengaliai")
@click.option("--slr53-parts", default="all", show_default=True, help="bengali: 'all' or a subset of the zips 0-9,a-f")
def download_corpus(recipe: str, dl_dir: str, dataset_parts: str, corpora: str, slr53_parts: str) -> None:
    """Stage 0: fetch (or find, verify and extract) the corpus in DL_DIR; fails fast without network."""
    setup_logging()
    if recipe == "librispeech":
        from speechae.recipes.librispeech import download_librispeech

        out = {"librispeech": str(fail_cleanly(download_librispeech, dl_dir, dataset_parts))}
    else:
        from speechae.recipes.bengali import download_bengali

        out = fail_cleanly(download_bengali, dl_dir, corpora, slr53_parts)
    click.echo(json.dumps(out))


@click.command("prepare-corpus")
@click.argument("recipe", type=click.Choice(PREPARERS))
@click.argument("dl_dir", type=click.Path(exists=True))
@click.argument("out_dir", type=click.Path())
@click.option("--prefix", default=None, help="manifest prefix (default: the recipe name)")
@click.option("--dataset-parts", default="mini_librispeech", show_default=True, help="librispeech parts")
@click.option("--corpora", default="slr53", show_default=True, help="bengali corpora")
@click.option("--digits", type=click.Choice(["keep", "spell", "reject"]), default="keep", show_default=True,
              help="bengali: digits in transcripts (see speechae/text/bengali.py)")
@click.option("--normalize", type=click.Choice(["none", "bengali", "lower"]), default="none", show_default=True,
              help="tsv: transcript normaliser")
@click.option("--language", default=None, help="tsv: language code stored in the supervisions")
@click.option("--dev-fraction", default=0.02, show_default=True, help="bengali slr53 / tsv: speakers held out for dev")
@click.option("--test-fraction", default=0.02, show_default=True, help="bengali slr53 / tsv: speakers held out for test")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="bad items (all found in one pass): list them and stop, writing nothing; or drop them and "
                   "list them in <prefix>_skipped.txt")
@click.option("--nj", default=2, show_default=True, help="processes for audio checks")
@audio_policy_options
def prepare_corpus(recipe: str, dl_dir: str, out_dir: str, prefix: str | None, dataset_parts: str, corpora: str,
                   digits: str, normalize: str, language: str | None, dev_fraction: float, test_fraction: float,
                   on_error: str, nj: int, min_sample_rate: int | None, min_duration: float,
                   max_duration: float) -> None:
    """Stage 1: validated Lhotse manifests <prefix>_{recordings,supervisions}_<split>.jsonl.gz.

    DL_DIR is the download folder (librispeech, bengali) or the utterances.tsv file (tsv; see
    speechae/recipes/generic.py).

    Every file is decoded and every line checked in one pass; all problems are reported together.
    Audio policy (rates, channels, durations): see speechae/data/validate.py (AudioPolicy).
    Writes <prefix>_skipped.txt and <prefix>_warnings.txt (one 'id<TAB>file<TAB>reason' line per item),
    and <prefix>_splits.txt (the comma-separated split names, first = training) for stages 2-3.
    """
    from speechae.data.validate import audio_policy
    from speechae.utils.io import write_lines

    setup_logging()
    prefix = prefix or recipe
    policy = make_policy(16000, min_sample_rate, min_duration, max_duration)
    with audio_policy(policy):
        counts = _prepare(recipe, dl_dir, out_dir, prefix, dataset_parts, corpora, digits, normalize, language,
                          dev_fraction, test_fraction, on_error, nj)
    order = ["train", "dev", "test", "test-clean", "test-other"]
    splits = sorted(counts, key=lambda s: order.index(s) if s in order else len(order))
    write_lines(Path(out_dir) / f"{prefix}_splits.txt", [",".join(splits)])
    logging.info("manifests: %s", counts)
    click.echo(json.dumps(counts))


def _prepare(recipe: str, dl_dir: str, out_dir: str, prefix: str, dataset_parts: str, corpora: str, digits: str,
             normalize: str, language: str | None, dev_fraction: float, test_fraction: float, on_error: str,
             nj: int) -> dict[str, int]:
    """Run the preparer of ``recipe`` (under the policy set by the caller)."""
    if recipe == "librispeech":
        from speechae.recipes.librispeech import prepare_librispeech

        counts = fail_cleanly(prepare_librispeech, dl_dir, out_dir, dataset_parts, prefix, on_error, nj)
    elif recipe == "tsv":
        from speechae.recipes.generic import prepare_tsv_corpus

        counts = fail_cleanly(prepare_tsv_corpus, dl_dir, out_dir, prefix, on_error, normalize, language, nj,
                              dev_fraction, test_fraction)
    else:
        from speechae.recipes.bengali import prepare_bengali

        counts = fail_cleanly(prepare_bengali, dl_dir, out_dir, corpora, prefix, on_error, digits, nj,
                              dev_fraction=dev_fraction, test_fraction=test_fraction)
    return counts
