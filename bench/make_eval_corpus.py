"""A large training manifest for evaluation benchmarks, made by replicating a small one.

    python bench/make_eval_corpus.py egs/mini/ae/data/targets/mini_cuts_train.jsonl.gz \
        /tmp/mini_cuts_train_10h.jsonl.gz --hours 10

Copies of every cut (ids suffixed ``-rep<k>``) are added until the manifest holds ``--hours``
of audio; the copies point at the same feature files, units and alignments, so no audio is
synthesised and no features are computed.  The data loader still reads and decodes every
copy, which is what a memory benchmark of ``speechae evaluate`` needs.  The manifest's
relative feature paths stay relative to the recipe directory: evaluate from there.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from lhotse import CutSet, load_manifest


def replicate_cuts(cuts: CutSet, hours: float) -> CutSet:
    """``cuts`` repeated (new cut and supervision ids) until they hold at least ``hours`` of audio."""
    base = list(cuts)
    per_copy = sum(c.duration for c in base)
    if per_copy <= 0:
        raise ValueError("the manifest holds no audio")
    out, k = [], 0
    while k == 0 or k * per_copy < 3600.0 * hours:
        for c in base:
            sups = [replace(s, id=f"{s.id}-rep{k}") for s in c.supervisions]
            out.append(replace(c, id=f"{c.id}-rep{k}", supervisions=sups))
        k += 1
    return CutSet.from_cuts(out)


def main() -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cuts", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--hours", type=float, required=True)
    args = ap.parse_args()
    cuts = replicate_cuts(load_manifest(args.cuts), args.hours)
    cuts.to_file(args.out)
    print(f"{args.out}: {len(cuts)} cuts, {sum(c.duration for c in cuts) / 3600:.2f} h")


if __name__ == "__main__":
    main()
