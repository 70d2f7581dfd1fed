"""Bucket count capped by the corpus size (a forked recipe's 8-cut corpus, a 2-cut dev split)."""

from speechae.data.datamodule import bucket_count, load_cuts, make_sampler


def test_more_buckets_than_cuts_is_capped(tiny_dataset, tmp_path):
    cuts = load_cuts(tiny_dataset.cuts("train")).subset(first=3)
    assert bucket_count(cuts, 30) == 3 and bucket_count(cuts, 2) == 2
    sampler = make_sampler(cuts, max_duration=100.0, shuffle=True, num_buckets=30, seed=0)
    sampler.set_epoch(0)
    assert sorted(c.id for batch in sampler for c in batch) == sorted(cuts.ids)  # no assertion
    path = tmp_path / "two.jsonl.gz"
    cuts.subset(first=2).to_file(path)
    lazy = type(cuts).from_jsonl_lazy(path)
    assert lazy.is_lazy and bucket_count(lazy, 30) == 2
    sampler = make_sampler(lazy, max_duration=100.0, shuffle=False, num_buckets=30)
    assert sum(len(b) for b in sampler) == 2
