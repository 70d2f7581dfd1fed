import math

import numpy as np
from lhotse import load_manifest
from lhotse.qa import validate_recordings_and_supervisions

from speechae.data.manifests import SPLITS, split_speakers


def test_split_is_speaker_disjoint_and_deterministic():
    spk = [f"s{i}" for i in range(10)]
    a, b = split_speakers(spk, 2, 2), split_speakers(list(reversed(spk)), 2, 2)
    assert a == b
    assert not (a["train"] & a["dev"]) and not (a["train"] & a["test"]) and not (a["dev"] & a["test"])
    assert len(a["test"]) == 2 and len(a["dev"]) == 2 and len(a["train"]) == 6


def test_manifests_validate_and_splits_disjoint(tiny_dataset):
    speakers = {}
    for split in SPLITS:
        recs = load_manifest(tiny_dataset.manifests / f"mini_recordings_{split}.jsonl.gz")
        sups = load_manifest(tiny_dataset.manifests / f"mini_supervisions_{split}.jsonl.gz")
        validate_recordings_and_supervisions(recs, sups)
        speakers[split] = {s.speaker for s in sups}
        assert {s.language for s in sups} == {"en", "bn"}
        for s in sups:
            assert s.text and s.alignment["phone"]
            assert s.alignment["phone"][-1].end <= recs[s.recording_id].duration + 1e-6
    assert not (speakers["train"] & speakers["test"]) and not (speakers["train"] & speakers["dev"])
    assert not (speakers["dev"] & speakers["test"])


def test_fbank_shape_finite_and_frame_count(tiny_dataset):
    cuts = load_manifest(tiny_dataset.fbank / "mini_cuts_train.jsonl.gz")
    assert len(cuts) == 16
    for cut in cuts:
        feats = cut.load_features()
        assert feats.shape[1] == 80
        assert np.isfinite(feats).all()
        # Kaldi framing: 25 ms windows every 10 ms, snip_edges=False -> round(duration / 0.01)
        assert abs(feats.shape[0] - math.ceil(cut.duration / 0.01)) <= 1
        assert feats.std() > 0.5  # real speech, not silence


def test_units_one_label_per_frame(tiny_dataset):
    for split in SPLITS:
        for cut in load_manifest(tiny_dataset.cuts(split)):
            units = cut.load_custom("units")
            assert units.shape == (cut.load_features().shape[0],)
            assert units.min() >= 0 and units.max() < 8


def test_units_track_acoustics(tiny_dataset):
    # k-means units partition MFCC space far better than a random labelling of the same sizes.
    from speechae.data.targets import _normalised_mfcc

    cuts = load_manifest(tiny_dataset.cuts("train"))
    x = np.concatenate([_normalised_mfcc(c) for c in cuts])
    u = np.concatenate([c.load_custom("units") for c in cuts])
    def within(labels):
        return sum(x[labels == k].var(0).sum() * (labels == k).sum() for k in np.unique(labels)) / len(labels)

    shuffled = np.random.default_rng(0).permutation(u)
    assert within(u) < 0.85 * within(shuffled)


def test_label_tables(tiny_dataset):
    phones = (tiny_dataset.lang / "phones.txt").read_text(encoding="utf-8").split("\n")
    assert phones[0] == "<blk> 0" and phones[1] == "<unk> 1"
    assert len([p for p in phones if p]) > 30
    assert (tiny_dataset.lang / "languages.txt").read_text().split() == ["bn", "en"]
    assert len((tiny_dataset.lang / "speakers.txt").read_text().split()) == 6
    assert (tiny_dataset.lang / "bpe.model").stat().st_size > 0
