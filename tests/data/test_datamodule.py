import torch

from speechae.data.datamodule import AEDataset, DataConfig, Labels, load_cuts, make_dataloader, make_sampler, subset_fraction


def test_batch_padding_lengths_and_targets(tiny_dataset):
    cuts = load_cuts(tiny_dataset.cuts("train"))
    labels = Labels(tiny_dataset.lang)
    batch = AEDataset(labels)[cuts.subset(first=5)]
    feats, lens = batch["features"], batch["feature_lens"]
    B, T, F = feats.shape
    assert (B, F) == (5, 80) and int(lens.max()) == T
    by_id = {c.id: c for c in cuts}
    for i, cid in enumerate(batch["cut_ids"]):
        ref = torch.from_numpy(by_id[cid].load_features())
        n = int(lens[i])
        assert n == ref.shape[0]
        assert torch.allclose(feats[i, :n], ref)
        assert torch.all(feats[i, n:] == 0)
        assert torch.all(batch["units"][i, n:] == -1) and torch.all(batch["units"][i, :n] >= 0)
        assert torch.all(batch["phones"][i, n:] == -1)
        # most speech frames carry a phone label; silence/padding carries -1
        assert (batch["phones"][i, :n] >= 0).float().mean() > 0.6
        n_ph = int(batch["phone_seq_lens"][i])
        assert n_ph == len(by_id[cid].supervisions[0].alignment["phone"])
        text = by_id[cid].supervisions[0].text
        toks = batch["tokens"][i, : int(batch["token_lens"][i])]
        assert torch.all(toks > 0)  # 0 is the CTC blank
        assert labels.sp.decode((toks - 1).tolist()).replace(" ", "") == text.replace(" ", "")
    assert torch.all(batch["speaker"] >= 0) and torch.all(batch["language"] >= 0)


def test_two_ranks_get_disjoint_cuts(tiny_dataset):
    cuts = load_cuts(tiny_dataset.cuts("train"))
    seen = []
    for rank in range(2):
        sampler = make_sampler(cuts, max_duration=8.0, shuffle=True, world_size=2, rank=rank, seed=3)
        sampler.set_epoch(0)
        seen.append({c.id for batch in sampler for c in batch})
    assert seen[0] and seen[1]
    assert not (seen[0] & seen[1])


def test_dataloader_respects_max_duration(tiny_dataset):
    cuts = load_cuts(tiny_dataset.cuts("train"))
    dl = make_dataloader(cuts, Labels(tiny_dataset.lang), DataConfig(max_duration=6.0, shuffle=False), train=True)
    total = 0
    for batch in dl:
        assert float(batch["feature_lens"].sum()) * 0.01 <= 6.0 + 0.02 or len(batch["cut_ids"]) == 1
        total += len(batch["cut_ids"])
    assert total == len(cuts)


def test_spec_augment_keeps_clean_target(tiny_dataset):
    cuts = load_cuts(tiny_dataset.cuts("train")).subset(first=3)
    torch.manual_seed(0)
    batch = AEDataset(Labels(tiny_dataset.lang), spec_augment=True)[cuts]
    assert "target_features" in batch
    assert not torch.equal(batch["features"], batch["target_features"])


def test_subset_fraction_reproducible(tiny_dataset):
    cuts = load_cuts(tiny_dataset.cuts("train"))
    a, b = subset_fraction(cuts, 0.5, seed=1), subset_fraction(cuts, 0.5, seed=1)
    assert sorted(a.ids) == sorted(b.ids) and len(a) == 8
