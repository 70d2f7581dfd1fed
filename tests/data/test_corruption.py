"""A Bengali OpenSLR 53 corpus with 34 kinds of corruption through stages 1-3 of the pipeline.

Every kind must get the outcome :mod:`speechae.recipes.corrupt` declares for it: named (and the
stage failed) with ``--on-error fail``, skipped and listed with ``--on-error skip``, dropped by
the duration filter and listed, or kept (with a listed warning for resampling/stereo).  Nothing
is silently accepted or lost: every listed id ends up in the manifests or in the skip list.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from lhotse import load_manifest

from speechae.cli import main
from speechae.data.validate import one_line
from speechae.recipes.corrupt import DEV_FRACTION, TEST_FRACTION, CorruptCorpus, write_corrupt_slr53

SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> CorruptCorpus:
    return write_corrupt_slr53(tmp_path_factory.mktemp("corrupt"))


def invoke(*args: object):  # noqa: ANN201
    """Run ``speechae ARGS`` in-process, logging to this invocation's stderr."""
    root = logging.getLogger()
    handlers, configured = root.handlers[:], getattr(root, "_speechae_configured", False)
    root._speechae_configured = False  # type: ignore[attr-defined]
    try:
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        root.handlers[:] = handlers
        root._speechae_configured = configured  # type: ignore[attr-defined]


def stage1(corpus: CorruptCorpus, out: Path, on_error: str):  # noqa: ANN201
    return invoke("prepare-corpus", "bengali", corpus.root, out, "--on-error", on_error, "--nj", 1,
                  "--dev-fraction", DEV_FRACTION, "--test-fraction", TEST_FRACTION)


def of(corpus: CorruptCorpus, *outcomes: str) -> list:
    return [c for c in corpus.corruptions if c.outcome in outcomes]


def test_the_corpus_covers_at_least_20_kinds(corpus: CorruptCorpus) -> None:
    kinds = Counter(c.outcome for c in corpus.corruptions)
    assert len(corpus.corruptions) >= 30 and kinds["error"] >= 20
    assert kinds["dropped"] == 3 and kinds["warning"] == 2 and kinds["accepted"] == 2


def test_fail_names_every_bad_item_in_one_pass(corpus: CorruptCorpus, tmp_path: Path) -> None:
    result = stage1(corpus, tmp_path / "man", "fail")
    assert result.exit_code == 1
    message = result.stderr
    assert "Traceback" not in message
    lines = message.splitlines()
    # the duplicated id is two items (one per listing line)
    expected = len(of(corpus, "error")) + 1
    assert f"{expected} bad item(s):" in message
    for c in of(corpus, "error"):
        assert any(one_line(c.item) in line and c.marker in line for line in lines), (c.kind, message)
    for c in of(corpus, "dropped", "warning", "accepted"):  # not errors
        assert not any(c.item in line for line in lines), (c.kind, message)
    assert not list((tmp_path / "man").glob("*.jsonl.gz"))  # nothing written


def _entries(path: Path) -> list[tuple[str, str, str]]:
    entries = [tuple(line.split("\t")) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(len(e) == 3 for e in entries), entries  # id<TAB>file<TAB>reason, one line each
    return entries


def test_skip_through_stages_1_to_3(corpus: CorruptCorpus, tmp_path: Path) -> None:
    man, fbank, lang, targets = (tmp_path / d for d in ("man", "fbank", "lang", "targets"))
    result = stage1(corpus, man, "skip")
    assert result.exit_code == 0, result.output

    skipped = _entries(man / "bengali_skipped.txt")
    warnings = _entries(man / "bengali_warnings.txt")
    for c in of(corpus, "error", "dropped"):
        assert any(i == one_line(c.item) and c.marker in reason for i, _, reason in skipped), (c.kind, skipped)
    for c in of(corpus, "warning"):
        assert any(i == c.item and c.marker in reason for i, _, reason in warnings), (c.kind, warnings)
    assert len(warnings) == len(of(corpus, "warning"))

    kept = {s.id: s for split in SPLITS for s in load_manifest(man / f"bengali_supervisions_{split}.jsonl.gz")}
    expected = set(corpus.clean) | {c.item for c in of(corpus, "warning", "accepted")}
    assert set(kept) == expected
    # nothing lost: every listed utterance is either kept or listed as skipped, never both
    listed = set(corpus.clean) | {one_line(c.item) for c in corpus.corruptions}
    skipped_ids = {i for i, _, _ in skipped}
    assert listed == set(kept) | skipped_ids and not (set(kept) & skipped_ids)
    # the duplicated id is in no split (it was listed under a train and a test speaker)
    dup = next(c.item for c in corpus.corruptions if c.kind == "duplicate_id_two_speakers")
    assert sum(1 for i, _, _ in skipped if i == dup) == 2

    for split in SPLITS:
        assert invoke("compute-fbank", man, fbank, "--prefix", "bengali", "--splits", split, "--nj", 1).exit_code == 0
    result = invoke("prepare-targets", fbank, lang, targets, "--prefix", "bengali", "--vocab-size", 64,
                    "--num-clusters", 8)
    assert result.exit_code == 0, result.output

    cuts = {c.supervisions[0].id: c for split in SPLITS
            for c in load_manifest(targets / f"bengali_cuts_{split}.jsonl.gz")}
    assert set(cuts) == expected
    for cut in cuts.values():
        feats = cut.load_features()
        assert np.isfinite(feats).all() and cut.sampling_rate == 16000
        assert abs(feats.shape[0] - math.ceil(cut.duration / 0.01)) <= 1
        assert cut.load_custom("units").shape == (feats.shape[0],)
    item = {c.kind: c.item for c in corpus.corruptions}
    stereo = cuts[item["stereo"]]
    assert type(stereo).__name__ == "MonoCut" and stereo.channel == 0
    left = sf.read(stereo.recording.sources[0].source, dtype="float32")[0][:, 0]
    np.testing.assert_allclose(stereo.load_audio()[0], left, atol=1e-6)  # channel 0, not a downmix
    resampled = cuts[item["rate_44k1"]]
    assert resampled.recording.sampling_rate == 16000 and resampled.load_audio().shape[1] == round(0.8 * 16000)
