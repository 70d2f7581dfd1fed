"""``speechae compare``: one table across evaluated experiments, seeds pooled.

Runs whose resolved configs (``<exp>/config.yaml``) differ only in ``train.seed`` form one group
and are reported as mean ± sample std (n = number of seeds).  Groups that differ only in
``data.train_fraction`` (and seed) form a *data-efficiency family*: their headline metrics are
also plotted against the fraction.  Outputs in ``out_dir``: ``compare.md``, ``compare.csv``
(one row per group), ``runs.csv`` (one row per run), ``compare.png`` (bar charts with std error
bars) and, when a family spans several fractions, ``data_efficiency.png`` / ``.csv``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from speechae.eval.report import get_path, markdown_table
from speechae.utils.io import atomic_path

# (column label, key path in metrics.json, scale, lower is better)
HEADLINE: list[tuple[str, str, float, bool]] = [
    ("LSD dB", "reconstruction.lsd_db", 1.0, True),
    ("MCD dB", "reconstruction.mcd_db", 1.0, True),
    ("mel L1", "reconstruction.mel_l1", 1.0, True),
    ("phone PER %", "probes.phone.per", 100.0, True),
    ("CER %", "probes.token.cer", 100.0, True),
    ("WER %", "probes.token.wer", 100.0, True),
    ("speaker acc %", "probes.speaker.accuracy", 100.0, False),
    ("language acc %", "probes.language.accuracy", 100.0, False),
    ("ABX within %", "abx.within_error_pct", 1.0, True),
    ("ABX across %", "abx.across_error_pct", 1.0, True),
    ("PNMI", "pnmi.pnmi", 1.0, False),
    ("phone purity", "pnmi.phone_purity", 1.0, False),
    ("effective rank", "geometry.effective_rank", 1.0, False),
    ("active units", "geometry.active_units", 1.0, False),
    ("Epps-Pulley", "geometry.ep", 1.0, True),
    ("KL nats/frame", "geometry.kl_total_nats", 1.0, True),
    ("loss spikes", "resources.training.loss_spikes", 1.0, True),
    ("non-finite steps", "resources.training.nonfinite_steps", 1.0, True),
    ("audio s / s", "resources.training.audio_seconds_per_second", 1.0, False),
    ("peak MB", "resources.training.peak_memory_mb", 1.0, True),
]
SEED_KEYS = ("train.seed",)
FRACTION_KEY = "data.train_fraction"
_SEED_SUFFIX = re.compile(r"[_\-.]?(seed|s)\d+$")


@dataclass
class Run:
    """One evaluated experiment: its name, flattened config and headline metric values."""

    name: str
    path: Path
    config: dict[str, Any]
    values: dict[str, float]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}} -> {'a.b': 1}`` (lists become tuples so they can be compared)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def load_run(exp_dir: str | Path) -> Run:
    """Read ``<exp>/eval/metrics.json`` and ``<exp>/config.yaml``."""
    exp_dir = Path(exp_dir)
    mpath = exp_dir / "eval" / "metrics.json" if (exp_dir / "eval" / "metrics.json").is_file() else exp_dir
    if not mpath.is_file():
        raise FileNotFoundError(f"{exp_dir}: no eval/metrics.json (run speechae evaluate first)")
    metrics = json.loads(mpath.read_text(encoding="utf-8"))
    cpath = exp_dir / "config.yaml"
    config = flatten(yaml.safe_load(cpath.read_text(encoding="utf-8")) or {}) if cpath.is_file() else {}
    values = {}
    for label, key, scale, _ in HEADLINE:
        v = get_path(metrics, key)
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            values[label] = float(v) * scale
    return Run(exp_dir.name, exp_dir, config, values)


def _key(run: Run, drop: Sequence[str]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in run.config.items() if k not in drop))


def group_runs(runs: Sequence[Run], drop: Sequence[str] = SEED_KEYS) -> list[list[Run]]:
    """Runs with identical configs apart from the ``drop`` keys, in first-seen order."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(_key(r, drop), []).append(r)
    return list(groups.values())


def group_label(group: Sequence[Run]) -> str:
    """Name of a seed group: its run names with a trailing seed suffix removed."""
    names = sorted({_SEED_SUFFIX.sub("", r.name) for r in group})
    return names[0] if len(names) == 1 else "+".join(names)


def summarize(group: Sequence[Run]) -> dict[str, tuple[float, float, int]]:
    """``{metric: (mean, std, n)}`` over the runs of a group that have the metric."""
    out = {}
    for label, *_ in HEADLINE:
        vals = [r.values[label] for r in group if label in r.values]
        if vals:
            out[label] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals))
    return out


def fmt_mean_std(mean: float, std: float, n: int) -> str:
    """``1.23 ± 0.04`` (n > 1) or ``1.23``."""
    digits = 2 if abs(mean) < 1000 else 0
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def config_differences(groups: Sequence[Sequence[Run]]) -> list[str]:
    """Config keys whose value differs between groups (seed excluded)."""
    keys = set().union(*(g[0].config for g in groups)) - set(SEED_KEYS)
    return sorted(k for k in keys if len({repr(g[0].config.get(k)) for g in groups}) > 1)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)


def _bar_chart(labels: Sequence[str], stats: Sequence[Mapping[str, tuple[float, float, int]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m, *_ in HEADLINE if all(m in s for s in stats)][:12]
    cols = min(4, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows), squeeze=False)
    for ax, m in zip(axes.ravel(), metrics):
        means = [s[m][0] for s in stats]
        stds = [s[m][1] for s in stats]
        ax.bar(range(len(labels)), means, yerr=stds, capsize=3, color=[f"C{i}" for i in range(len(labels))])
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(m, fontsize=9)
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def data_efficiency(runs: Sequence[Run], out_dir: Path) -> Path | None:
    """Plot headline metrics against ``data.train_fraction`` for families spanning several
    fractions; returns the PNG path (None when no family does)."""
    families = [f for f in group_runs(runs, SEED_KEYS + (FRACTION_KEY,))
                if len({r.config.get(FRACTION_KEY, 1.0) for r in f}) > 1]
    if not families:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["phone PER %", "LSD dB", "ABX within %", "PNMI"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.2), squeeze=False)
    rows = []
    for fi, fam in enumerate(families):
        by_frac: dict[float, list[Run]] = {}
        for r in fam:
            by_frac.setdefault(float(r.config.get(FRACTION_KEY, 1.0)), []).append(r)
        fracs = sorted(by_frac)
        name = group_label(fam)
        for ax, m in zip(axes[0], metrics):
            st = [summarize(by_frac[f]).get(m) for f in fracs]
            pts = [(f, s) for f, s in zip(fracs, st) if s is not None]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts],
                            marker="o", capsize=3, label=name, color=f"C{fi}")
            rows += [[name, f, m, s[0], s[1], s[2]] for f, s in pts]
    for ax, m in zip(axes[0], metrics):
        ax.set_xscale("log")
        ax.set_xlabel("fraction of training data")
        ax.set_title(m, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "data_efficiency.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    _write_csv(out_dir / "data_efficiency.csv", ["family", "train_fraction", "metric", "mean", "std", "n"], rows)
    return path


def compare_experiments(exp_dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Write the comparison of ``exp_dirs`` to ``out_dir``; returns ``{label: summary}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d) for d in exp_dirs]
    groups = group_runs(runs)
    labels = [group_label(g) for g in groups]
    if len(set(labels)) < len(labels):  # same names, different configs: make them unique
        labels = [f"{lab}#{i}" for i, lab in enumerate(labels)]
    stats = [summarize(g) for g in groups]
    metrics = [m for m, *_ in HEADLINE if all(m in s for s in stats)]
    body = [[lab, str(len(g))] + [fmt_mean_std(*s[m]) for m in metrics] for lab, g, s in zip(labels, groups, stats)]
    diffs = config_differences(groups) if len(groups) > 1 else []
    lines = ["# Comparison", "", f"Runs: {', '.join(r.name for r in runs)}.  Values are mean ± sample std over "
             "runs that differ only in `train.seed` (n = seeds); lower is better for errors, LSD, MCD, "
             "Epps-Pulley.", "", markdown_table(["group", "n"] + metrics, body), ""]
    if diffs:
        # values in backticks: a config value such as `none` must not read as a missing cell
        rows = [[lab] + [f"`{g[0].config[k]}`" if k in g[0].config else "(not set)" for k in diffs]
                for lab, g in zip(labels, groups)]
        lines += ["## What differs between groups", "", markdown_table(["group"] + diffs, rows), ""]
    _write_csv(out_dir / "compare.csv", ["group", "n"] + [f"{m} {x}" for m in metrics for x in ("mean", "std")],
               [[lab, len(g)] + [v for m in metrics for v in s[m][:2]] for lab, g, s in zip(labels, groups, stats)])
    _write_csv(out_dir / "runs.csv", ["run", "group"] + [m for m, *_ in HEADLINE],
               [[r.name, lab] + [r.values.get(m, "") for m, *_ in HEADLINE]
                for lab, g in zip(labels, groups) for r in g])
    _bar_chart(labels, stats, out_dir / "compare.png")
    lines += ["![comparison](compare.png)", ""]
    if data_efficiency(runs, out_dir) is not None:
        lines += ["## Data efficiency", "", "![data efficiency](data_efficiency.png)", ""]
    with atomic_path(out_dir / "compare.md") as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return {lab: s for lab, s in zip(labels, stats)}
