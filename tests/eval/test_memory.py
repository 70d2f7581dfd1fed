"""Evaluation in bounded memory: the per-split hour caps hold on a corpus far larger than the
caps, the sample is reproducible, and batch-by-batch encoding on a device gives the same
encodings whatever the batching."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from lhotse import CutSet, load_manifest


@dataclass
class _Cut:
    id: str
    duration: float


class _OnePassCounter:
    """A re-iterable corpus of fake cuts (2-20 s) that counts the passes made over it: the
    sampler reads it twice (ids and durations, then the chosen cuts) instead of holding it."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.durations = np.random.default_rng(seed).uniform(2.0, 20.0, n)
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return (_Cut(f"utt{i:06d}", float(d)) for i, d in enumerate(self.durations))


def test_hour_cap_bounds_the_sample_and_is_reproducible() -> None:
    from speechae.eval.encoders import sample_cuts

    corpus = _OnePassCounter(20_000)  # ~61 h of fake audio
    s = sample_cuts(corpus, max_hours=0.5, seed=3)
    assert corpus.passes == 2
    total = sum(c.duration for c in s.cuts)
    assert total <= 1800.0 and total > 1800.0 - 20.0  # full up to one utterance
    assert s.num_utts_total == 20_000 and s.hours_total == pytest.approx(corpus.durations.sum() / 3600)
    assert [c.id for c in s.cuts] == sorted(c.id for c in s.cuts)
    assert s.summary()["capped"] and s.summary()["max_hours"] == 0.5
    again = sample_cuts(corpus, max_hours=0.5, seed=3)
    assert [c.id for c in again.cuts] == [c.id for c in s.cuts]
    other = sample_cuts(corpus, max_hours=0.5, seed=4)
    assert [c.id for c in other.cuts] != [c.id for c in s.cuts]


def test_under_the_caps_every_cut_is_kept_as_before() -> None:
    """A split shorter than the caps is used whole and in the order the code always used, so
    the tiny recipe's metrics do not move; an utterance cap draws the same subset as before."""
    from speechae.eval.encoders import sample_cuts

    corpus = _OnePassCounter(300)
    ids = sorted(f"utt{i:06d}" for i in range(300))
    assert [c.id for c in sample_cuts(corpus, max_hours=100.0).cuts] == ids
    assert [c.id for c in sample_cuts(corpus, max_hours=None).cuts] == ids
    rng = np.random.default_rng(5)
    before = [ids[i] for i in sorted(rng.choice(300, 40, replace=False))]
    assert [c.id for c in sample_cuts(corpus, max_utts=40, max_hours=100.0, seed=5).cuts] == before
    capped = sample_cuts(corpus, max_utts=40, max_hours=0.05, seed=5)
    assert set(c.id for c in capped.cuts) <= set(before) and sum(c.duration for c in capped.cuts) <= 180.0


def _replicated(path: Path, copies: int, out: Path) -> Path:
    cuts = list(load_manifest(path))
    big = [replace(c, id=f"{c.id}-rep{k}", supervisions=[replace(s, id=f"{s.id}-rep{k}") for s in c.supervisions])
           for k in range(copies) for c in cuts]
    CutSet.from_cuts(big).to_file(out)
    return out


def test_eval_data_loads_only_the_capped_sample(tiny_dataset, tmp_path, monkeypatch) -> None:
    """A training manifest 30x the cap: the loader decodes only the sampled utterances and the
    frames held in memory stay within the cap; metrics.json's sampling record says so."""
    import speechae.eval.encoders as encoders
    from speechae.eval.pipeline import load_eval_data
    from speechae.eval.suite import EvalConfig

    train = _replicated(tiny_dataset.cuts("train"), 40, tmp_path / "big_train.jsonl.gz")
    full_s = sum(c.duration for c in load_manifest(train))
    cap_h = full_s / 30 / 3600
    loaded: list[str] = []
    real = encoders.AEDataset

    class CountingDataset(real):  # type: ignore[misc, valid-type]
        def __getitem__(self, cuts):
            loaded.extend(c.id for c in cuts)
            return super().__getitem__(cuts)

    monkeypatch.setattr(encoders, "AEDataset", CountingDataset)
    cfg = EvalConfig(max_train_hours=cap_h, max_test_hours=None, seed=1)
    data = load_eval_data(train, tiny_dataset.cuts("test"), tiny_dataset.cuts("dev"), tiny_dataset.lang, cfg)
    frames = sum(len(u.log_mel) for u in data.train)
    assert frames <= cap_h * 3600 * 100 + len(data.train)  # 100 Hz, one frame of rounding each
    rec = data.sampling["train"]
    assert rec["capped"] and rec["num_utts"] == len(data.train) < rec["num_utts_total"] // 20
    assert rec["hours_total"] == pytest.approx(full_s / 3600, rel=1e-4)
    n_test, n_dev = len(data.test), len(data.dev)
    assert len(loaded) == len(data.train) + n_test + n_dev  # nothing else was decoded
    again = load_eval_data(train, tiny_dataset.cuts("test"), tiny_dataset.cuts("dev"), tiny_dataset.lang, cfg)
    assert [u.cut_id for u in again.train] == [u.cut_id for u in data.train]
    assert not data.sampling["test"]["capped"] and data.sampling["test"]["max_hours"] is None


@pytest.fixture(scope="module")
def tiny_utts(tiny_dataset):
    from speechae.data.datamodule import Labels, load_cuts
    from speechae.eval.encoders import load_utterances

    return load_utterances(load_cuts(tiny_dataset.cuts("train")), Labels(tiny_dataset.lang))


@pytest.mark.parametrize("bottleneck", ["gaussian", "deterministic"])
def test_streamed_batches_equal_one_batch(tiny_utts, bottleneck) -> None:
    """Encodings, log-variances, reconstructions and stacks do not depend on how the
    utterances are batched (padding never leaks), and ``stream`` yields what ``encode``
    assembles."""
    from speechae.eval.encoders import ModelEncoder
    from speechae.models import build_model
    from speechae.train.testing import SMALL_MODEL

    torch.manual_seed(0)
    model = build_model({**SMALL_MODEL, "bottleneck": {"kind": bottleneck, "latent_dim": 8}})
    whole = ModelEncoder(model, "m", stacks=True, max_frames=10**9).encode(tiny_utts, with_recon=True)
    small = ModelEncoder(model, "m", stacks=True, max_frames=1).encode(tiny_utts, with_recon=True)
    for a, b in zip(whole.feats, small.feats):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    for a, b in zip(whole.recon, small.recon):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)
    assert (whole.logvar is None) == (bottleneck != "gaussian") == (small.logvar is None)
    assert list(whole.stacks) == list(small.stacks) and whole.stacks
    for k in whole.stacks:
        for a, b in zip(whole.stacks[k][1], small.stacks[k][1]):
            np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)
    enc = ModelEncoder(model, "m", max_frames=2000)
    batches = list(enc.stream(tiny_utts))
    assert len(batches) > 1 and sorted(i for b in batches for i in b.idx) == list(range(len(tiny_utts)))
    got = {i: f for b in batches for i, f in zip(b.idx, b.feats)}
    for i, f in enumerate(enc.encode(tiny_utts).feats):
        np.testing.assert_array_equal(got[i], f)


def test_auto_device_encodings_match_cpu(tiny_utts) -> None:
    """``--device auto`` picks the GPU when one is visible (else the CPU) and encodes the same."""
    from speechae.eval.encoders import ModelEncoder
    from speechae.models import build_model
    from speechae.train.testing import SMALL_MODEL

    torch.manual_seed(0)
    model = build_model(dict(SMALL_MODEL))
    cpu = ModelEncoder(model, "m", device="cpu").encode(tiny_utts)
    auto = ModelEncoder(model, "m", device="auto")
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    for a, b in zip(cpu.feats, auto.encode(tiny_utts).feats):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)


def test_device_names() -> None:
    from speechae.eval.encoders import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
