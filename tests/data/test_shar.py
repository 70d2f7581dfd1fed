"""Lhotse Shar export: training reads the same cuts, features and units from tar shards."""

import torch

from speechae.data.datamodule import AEDataset, DataConfig, Labels, load_cuts, make_dataloader, subset_fraction
from speechae.data.shar import export_shar, is_shar_dir


def test_shar_roundtrip_gives_the_same_batches(tiny_dataset, tmp_path):
    cuts = load_cuts(tiny_dataset.cuts("train"))
    out = tmp_path / "shar"
    names = export_shar(cuts, out, shard_size=6)
    assert is_shar_dir(out) and not is_shar_dir(tiny_dataset.targets)
    assert sum(n.startswith("cuts.") for n in names) == 3  # 16 cuts / 6 per shard
    assert sum(n.startswith("features.") for n in names) == 3 and sum(n.startswith("units.") for n in names) == 3
    shar = load_cuts(out)
    assert sorted(shar.ids) == sorted(cuts.ids)
    labels = Labels(tiny_dataset.lang)
    ds = AEDataset(labels)
    ids = sorted(cuts.ids)[:4]
    ref = ds[cuts.subset(cut_ids=ids)]
    got = ds[shar.filter(lambda c: c.id in set(ids)).to_eager()]
    assert got["cut_ids"] == ref["cut_ids"]
    assert torch.equal(got["feature_lens"], ref["feature_lens"])
    # features are lilcom-compressed again: equal up to its quantisation
    assert torch.allclose(got["features"], ref["features"], atol=0.05)
    for key in ("units", "phones", "tokens", "speaker", "language"):
        assert torch.equal(got[key], ref[key]), key


def test_training_loader_reads_shar_lazily(tiny_dataset, tmp_path):
    out = tmp_path / "shar"
    export_shar(load_cuts(tiny_dataset.cuts("train")), out, shard_size=8)
    shar = load_cuts(out)
    assert shar.is_lazy
    half = subset_fraction(shar, 0.5, seed=0)
    dl = make_dataloader(half, Labels(tiny_dataset.lang), DataConfig(max_duration=10.0, num_buckets=2), train=True)
    seen = [cid for batch in dl for cid in batch["cut_ids"]]
    assert len(seen) == len(set(seen)) == 8
