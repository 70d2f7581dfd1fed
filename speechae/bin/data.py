"""Data-stage commands: one click wrapper per library function."""

from __future__ import annotations

import json
import logging
import time

import click

from speechae.utils.logging import setup_logging


def audio_policy_options(fn):  # noqa: ANN001, ANN201
    """The options of :class:`speechae.data.validate.AudioPolicy`, shared by every stage-1 command."""
    fn = click.option("--min-sample-rate", type=int, default=None,
                      help="lowest sample rate accepted [default: the target rate, 16000]; lower rates are "
                           "rejected as bad items, higher ones resampled (and listed in <prefix>_warnings.txt)")(fn)
    fn = click.option("--min-duration", default=0.1, show_default=True,
                      help="seconds; shorter utterances are dropped and listed in <prefix>_skipped.txt")(fn)
    fn = click.option("--max-duration", default=30.0, show_default=True,
                      help="seconds; longer utterances are dropped and listed in <prefix>_skipped.txt "
                           "(0 = no limit)")(fn)
    return fn


def make_policy(sample_rate: int, min_sample_rate: int | None, min_duration: float,
                max_duration: float):  # noqa: ANN201
    """An AudioPolicy from the command-line options; a bad combination is a usage error."""
    from speechae.data.validate import AudioPolicy

    try:
        return AudioPolicy(sample_rate=sample_rate, min_sample_rate=min_sample_rate, min_duration=min_duration,
                           max_duration=max_duration)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command("synth-corpus")
@click.argument("out_dir", type=click.Path())
@click.option("--num-speakers", default=12, show_default=True, help="pseudo-speakers (>= 8 for a 3-way split)")
@click.option("--utts-per-speaker", default=34, show_default=True, help="12 x 34 gives ~20 min of audio")
@click.option("--bn-fraction", default=0.5, show_default=True, help="share of Bengali utterances")
@click.option("--sample-rate", default=16000, show_default=True)
@click.option("--nj", default=2, show_default=True, help="parallel synthesis processes")
@click.option("--seed", default=0, show_default=True)
def synth_corpus(out_dir: str, num_speakers: int, utts_per_speaker: int, bn_fraction: float, sample_rate: int,
                 nj: int, seed: int) -> None:
    """Stage 0 (tiny recipe): synthesize an English + Bengali corpus with espeak-ng."""
    from speechae.data.synth import read_utterances, synthesize_corpus

    setup_logging()
    t0 = time.perf_counter()
    synthesize_corpus(out_dir, num_speakers=num_speakers, utts_per_speaker=utts_per_speaker,
                      bn_fraction=bn_fraction, sample_rate=sample_rate, num_jobs=nj, seed=seed)
    utts = read_utterances(out_dir)
    hours = sum(u.duration for u in utts) / 60
    logging.info("synthesized %d utterances, %.1f min of audio in %.1f s", len(utts), hours, time.perf_counter() - t0)


@click.command("prepare-manifests")
@click.argument("corpus_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path())
@click.option("--prefix", default="mini", show_default=True)
@click.option("--num-dev-speakers", default=2, show_default=True)
@click.option("--num-test-speakers", default=2, show_default=True)
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="bad items (all found in one pass): list them and stop, writing nothing; or drop them and "
                   "list them in <prefix>_skipped.txt")
@click.option("--sample-rate", default=16000, show_default=True, help="target sample rate")
@audio_policy_options
def prepare_manifests(corpus_dir: str, out_dir: str, prefix: str, num_dev_speakers: int, num_test_speakers: int,
                      on_error: str, sample_rate: int, min_sample_rate: int | None, min_duration: float,
                      max_duration: float) -> None:
    """Stage 1 (tiny recipe): Lhotse manifests with phone alignments, split by speaker.

    Audio policy (rates, channels, durations): see speechae/data/validate.py (AudioPolicy)."""
    from speechae.bin.corpus import fail_cleanly
    from speechae.data.manifests import prepare_synth_manifests

    setup_logging()
    policy = make_policy(sample_rate, min_sample_rate, min_duration, max_duration)
    counts = fail_cleanly(prepare_synth_manifests, corpus_dir, out_dir, prefix, num_dev_speakers, num_test_speakers,
                          on_error=on_error, policy=policy)
    logging.info("manifests: %s", counts)


@click.command("compute-fbank")
@click.argument("manifest_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("fbank_dir", type=click.Path())
@click.option("--prefix", default="mini", show_default=True)
@click.option("--splits", default="train,dev,test", show_default=True, help="comma-separated")
@click.option("--nj", default=2, show_default=True)
@click.option("--num-mel-bins", default=80, show_default=True)
@click.option("--speed-perturb/--no-speed-perturb", default=False, show_default=True,
              help="add 0.9x and 1.1x copies (train splits)")
def compute_fbank(manifest_dir: str, fbank_dir: str, prefix: str, splits: str, nj: int, num_mel_bins: int,
                  speed_perturb: bool) -> None:
    """Stage 2: log-mel fbank features (LilcomChunkyWriter), one cut file per split."""
    from speechae.bin.corpus import fail_cleanly
    from speechae.data.features import compute_fbank as run

    setup_logging()
    for split in splits.split(","):
        stats = fail_cleanly(run, manifest_dir, fbank_dir, prefix, split, num_jobs=nj, num_mel_bins=num_mel_bins,
                             speed_perturb=speed_perturb and split.startswith("train"))
        click.echo(json.dumps(stats))


@click.command("prepare-targets")
@click.argument("fbank_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("lang_dir", type=click.Path())
@click.argument("targets_dir", type=click.Path())
@click.option("--prefix", default="mini", show_default=True)
@click.option("--splits", default="train,dev,test", show_default=True, help="comma-separated; the first is used for fitting")
@click.option("--vocab-size", default=256, show_default=True, help="sentencepiece vocabulary (upper bound)")
@click.option("--num-clusters", default=50, show_default=True, help="k-means units (500 on LibriSpeech)")
@click.option("--seed", default=0, show_default=True)
@click.option("--model-type", type=click.Choice(["unigram", "bpe", "char"]), default="unigram", show_default=True,
              help="sentencepiece model type")
@click.option("--kmeans-max-cuts", default=0, show_default=True, help="fit k-means on this many random train cuts (0 = all)")
def prepare_targets(fbank_dir: str, lang_dir: str, targets_dir: str, prefix: str, splits: str, vocab_size: int,
                    num_clusters: int, seed: int, model_type: str, kmeans_max_cuts: int) -> None:
    """Stage 3: sentencepiece model, phone/speaker/language tables, k-means units per frame."""
    from speechae.data.targets import prepare_targets as run

    setup_logging()
    names = tuple(splits.split(","))
    summary = run(fbank_dir, lang_dir, targets_dir, prefix, splits=names, vocab_size=vocab_size,
                  num_clusters=num_clusters, seed=seed, model_type=model_type, kmeans_max_cuts=kmeans_max_cuts)
    click.echo(json.dumps(summary))


@click.command("inspect-data")
@click.argument("cuts", type=click.Path(exists=True, dir_okay=False))
@click.option("--lang-dir", type=click.Path(), default=None)
@click.option("--max-duration", default=60.0, show_default=True)
@click.option("--num-batches", default=0, help="0 = one full pass")
def inspect_data(cuts: str, lang_dir: str | None, max_duration: float, num_batches: int) -> None:
    """Describe a cut manifest and measure data-loader throughput (batches/s, audio s/s)."""
    from speechae.data.datamodule import DataConfig, Labels, load_cuts, make_dataloader

    setup_logging()
    cutset = load_cuts(cuts)
    sups = [s for c in cutset for s in c.supervisions]
    info = {
        "cuts": len(cutset), "hours": round(sum(c.duration for c in cutset) / 3600, 4),
        "speakers": len({s.speaker for s in sups}), "languages": sorted({s.language for s in sups if s.language}),
        "with_features": sum(c.has_features for c in cutset),
        "with_phone_alignment": sum(bool(s.alignment and "phone" in s.alignment) for s in sups),
    }
    dl = make_dataloader(cutset, Labels(lang_dir), DataConfig(max_duration=max_duration, shuffle=False), train=False)
    n, audio, t0 = 0, 0.0, time.perf_counter()
    for batch in dl:
        n += 1
        audio += float(batch["feature_lens"].sum()) * 0.01
        if num_batches and n >= num_batches:
            break
    dt = time.perf_counter() - t0
    info.update({"batches": n, "batches_per_s": round(n / dt, 2), "audio_s_per_s": round(audio / dt, 1),
                 "batch_keys": sorted(batch.keys()) if n else []})
    click.echo(json.dumps(info, ensure_ascii=False))


@click.command("export-shar")
@click.argument("cuts", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_dir", type=click.Path())
@click.option("--shard-size", default=1000, show_default=True, help="cuts per shard")
def export_shar(cuts: str, out_dir: str, shard_size: int) -> None:
    """Pack cuts + features + units into Lhotse Shar tar shards (train with data.train_cuts=OUT_DIR)."""
    from speechae.data.datamodule import load_cuts
    from speechae.data.shar import export_shar as run

    setup_logging()
    names = run(load_cuts(cuts), out_dir, shard_size=shard_size)
    click.echo(json.dumps({"out_dir": out_dir, "files": names}))
