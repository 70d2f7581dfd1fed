"""Lhotse Shar: sequential tar shards of cuts + features for cluster file systems.

Many small random reads (one per utterance) are what shared cluster storage handles worst;
Shar packs cuts, their fbank and their k-means units into a few large tar files read
front to back.  ``data.train_cuts`` may point at a Shar directory instead of a manifest
(see :func:`speechae.data.datamodule.load_cuts`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lhotse import CutSet

from speechae.utils.io import atomic_path


def is_shar_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory written by :func:`export_shar`."""
    path = Path(path)
    return path.is_dir() and any(path.glob("cuts.*.jsonl*"))


def export_shar(cuts: CutSet, out_dir: str | Path, shard_size: int = 1000) -> list[str]:
    """Write ``cuts`` with their features (lilcom) and ``units`` (numpy) as Shar shards.

    The directory is built under a temporary name and moved into place, so an interrupted
    export never leaves a partial shard set that training would read.
    Returns the names of the shard files.
    """
    first = next(iter(cuts))
    fields = {}
    if first.has_features:
        fields["features"] = "lilcom"
    if first.has_custom("units"):
        fields["units"] = "numpy"
    if not fields:
        raise ValueError("cuts carry neither features nor units: run the fbank stage first")
    with atomic_path(out_dir, is_dir=True) as tmp:
        cuts.to_shar(tmp, fields=fields, shard_size=shard_size)
    names = sorted(p.name for p in Path(out_dir).iterdir())
    logging.info("Shar: %d files in %s (fields %s)", len(names), out_dir, sorted(fields))
    return names


def load_shar(in_dir: str | Path) -> CutSet:
    """A lazy CutSet over a Shar directory; features and units are read from the tars."""
    return CutSet.from_shar(in_dir=str(in_dir))
