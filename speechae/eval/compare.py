"""``speechae compare``: one report across evaluated experiments, with uncertainty over seeds.

**Arms.**  Runs whose resolved configs (``<exp>/config.yaml``) differ only in ``train.seed`` form
one arm.  Each metric of an arm is reported as mean ± sample standard deviation (``ddof=1``) with
a 95 % Student-t interval ``mean ± t(0.975, n-1) · std / sqrt(n)`` and n shown; a single run is
shown as ``n=1`` with neither a spread nor an interval (one seed says nothing about seed noise).

**Differences.**  Every arm is compared with a reference arm (``reference``; default: the arm
named like ``kl``, else the first).  Per metric:

- *paired t-test over seeds*: runs matched by seed value, ``d_s = arm_s - ref_s``, when the two
  arms share at least two seeds (several runs with one seed are averaged first);
- *Welch's t-test* over the runs when both arms have two or more runs but fewer than two seeds
  in common;
- no test when either arm has a single run (``n=1: no test``).

``speechae evaluate`` keeps no per-utterance scores, so a bootstrap over test utterances is not
possible and the unit of replication is the training seed.  For metrics whose best value is 0
(standardised Epps-Pulley) the difference is taken of ``|value|``.  p-values are two-sided;
within each arm's comparison a Holm step-down correction runs over the primary metrics
(``Metric.primary``).  A difference is called significant when its (Holm-adjusted, for primary
metrics) p-value is below 0.05.

**Chance levels and baselines** are read from each run's ``metrics.json``: a top-level
``"chance"`` mapping ``{metric key path: value}`` (also ``<key>_chance`` or a sibling
``chance`` entry), and the ``"baselines"`` section (fbank, MFCC, random init, ...) scored on the
same test split.

**Families.**  Arms that differ only in ``data.train_fraction`` (and seed) form a
data-efficiency family whose headline metrics are also plotted against the fraction.

Outputs in ``out_dir`` (each written atomically): ``compare.md``, ``compare.json`` (every
number), ``compare.csv`` (one row per arm), ``runs.csv`` (one row per run), ``compare.png`` (bars
with 95 % intervals), ``recon_vs_discrimination.png`` (one point per run) and, when a family
spans several fractions, ``data_efficiency.png`` / ``.csv``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml
from scipy import stats as sps

from speechae.eval.report import get_path, markdown_table
from speechae.utils.io import atomic_path

ALPHA = 0.05
LEVEL = 0.95


@dataclass(frozen=True)
class Metric:
    """A reported metric: its label, key paths in metrics.json (first found wins; later ones are
    older names), the display scale, which direction is better (``lower``, ``higher``, ``zero``
    = closest to 0, or None = descriptive only) and whether it is in the Holm family."""

    label: str
    keys: tuple[str, ...]
    scale: float = 1.0
    better: str | None = "lower"
    primary: bool = False
    chance_keys: tuple[str, ...] = ()
    bounds: tuple[float, float] | None = None  # the metric's range: intervals are clipped to it


HEADLINE: list[Metric] = [
    Metric("mel-LSD dB", ("reconstruction.mel_lsd_db", "reconstruction.lsd_db"), primary=True),
    Metric("MCD dB", ("reconstruction.mcd_db",), primary=True),
    Metric("mel L1", ("reconstruction.mel_l1",)),
    Metric("phone PER %", ("probes.phone.per",), 100.0, primary=True),
    Metric("CER %", ("probes.token.cer",), 100.0, primary=True),
    Metric("WER %", ("probes.token.wer",), 100.0),
    Metric("speaker acc %", ("probes.speaker.accuracy",), 100.0, "higher", bounds=(0.0, 100.0)),
    Metric("language acc %", ("probes.language.accuracy",), 100.0, "higher", bounds=(0.0, 100.0)),
    Metric("ABX within %", ("abx.within_error_pct",), primary=True, bounds=(0.0, 100.0)),
    Metric("ABX across %", ("abx.across_error_pct",), primary=True, bounds=(0.0, 100.0)),
    Metric("PNMI", ("pnmi.pnmi",), better="higher", primary=True, bounds=(0.0, 1.0)),
    Metric("phone purity", ("pnmi.phone_purity",), better="higher", bounds=(0.0, 1.0)),
    Metric("effective rank", ("geometry.effective_rank",), better="higher"),
    Metric("active units", ("geometry.active_units",), better="higher"),
    Metric("EP standardised", ("geometry.ep_std", "geometry.ep_standardized"), better="zero", primary=True),
    # raw Epps-Pulley: its null floor depends on frame count and temporal correlation, so it is
    # shown beside its floor but not ranked (the standardised value is)
    Metric("Epps-Pulley", ("geometry.ep",), better=None, chance_keys=("geometry.ep_floor",)),
    Metric("KL nats/frame", ("geometry.kl_total_nats",), better=None),
    # waveforms (speechae.eval.listen): the reconstruction through the vocoder
    Metric("STOI", ("listening.system.waveform.stoi",), better="higher", bounds=(0.0, 1.0)),
    Metric("PESQ-WB", ("listening.system.waveform.pesq_wb",), better="higher", bounds=(1.0, 4.64)),
    Metric("speaker sim", ("listening.system.judges.speaker_sim",), better="higher", bounds=(-1.0, 1.0)),
    Metric("ASR WER %", ("listening.system.judges.asr_wer",), 100.0),
    Metric("DNSMOS OVRL", ("listening.system.judges.dnsmos_ovrl",), better="higher", bounds=(1.0, 5.0)),
    Metric("loss spikes", ("resources.training.loss_spikes",)),
    Metric("non-finite steps", ("resources.training.nonfinite_steps",)),
    Metric("audio s / s", ("resources.training.audio_seconds_per_second",), better="higher"),
    Metric("peak MB", ("resources.training.peak_memory_mb",)),
]
METRICS = {m.label: m for m in HEADLINE}
LISTENING_REFERENCES = {"original": "original audio", "copy_vocoder": "vocoder copy-synthesis",
                        "copy_griffin_lim": "Griffin-Lim copy-synthesis"}
ARROW = {"lower": "↓", "higher": "↑", "zero": "→ 0", None: "info"}
RECON = "mel-LSD dB"
DISCRIMINATION = ("phone PER %", "ABX within %")
SEED_KEYS = ("train.seed", "data.seed")  # a seed grid varies both (model init, data order)
FRACTION_KEY = "data.train_fraction"
_SEED_SUFFIX = re.compile(r"[_\-.]?(seed|s)\d+$")


@dataclass
class Run:
    """One evaluated experiment: name, flattened config, metric values by label, the chance
    levels it reports and its baselines' values (``{baseline: {label: value}}``)."""

    name: str
    path: Path
    config: dict[str, Any]
    values: dict[str, float]
    chance: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def seed(self) -> Any:
        """The run's ``train.seed`` (None when the config has none)."""
        return self.config.get(SEED_KEYS[0])


class UnknownArmError(ValueError):
    """``--reference`` names no arm, or several."""


@dataclass
class Summary:
    """Mean, sample std and 95 % t-interval of one metric over an arm's runs (std and
    interval are None for n = 1)."""

    mean: float
    n: int
    std: float | None = None
    ci: tuple[float, float] | None = None


@dataclass
class Difference:
    """``arm - reference`` for one metric and the test behind it."""

    arm: str
    reference: str
    metric: str
    test: str
    n: int
    mean: float
    ci: tuple[float, float] | None = None
    p: float | None = None
    p_holm: float | None = None
    significant: bool = False
    verdict: str = ""


# --- statistics -------------------------------------------------------------------------------

def t_summary(values: Sequence[float], level: float = LEVEL) -> Summary:
    """Mean ± sample std with the two-sided Student-t interval at ``level`` over ``values``."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    if x.size < 2:
        return Summary(mean, 1)
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, x.size - 1)) * std / math.sqrt(x.size)
    return Summary(mean, int(x.size), std, (mean - half, mean + half))


def _t_test(mean: float, se: float, df: float, level: float) -> tuple[tuple[float, float], float]:
    """Interval and two-sided p-value of ``mean`` with standard error ``se`` on ``df`` degrees."""
    if se == 0.0:  # every paired difference equal: no spread to test against
        return (mean, mean), (1.0 if mean == 0.0 else 0.0)
    half = float(sps.t.ppf(0.5 + level / 2, df)) * se
    return (mean - half, mean + half), float(2.0 * sps.t.sf(abs(mean) / se, df))


def paired_t(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> tuple[float, tuple[float, float], float]:
    """Paired t-test of ``a - b`` (matched element by element): mean difference, its
    t-interval at ``level`` and the two-sided p-value."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size < 2:
        raise ValueError("a paired t-test needs two pairs")
    mean = float(d.mean())
    ci, p = _t_test(mean, float(d.std(ddof=1)) / math.sqrt(d.size), d.size - 1, level)
    return mean, ci, p


def welch_t(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> tuple[float, tuple[float, float], float]:
    """Welch's unequal-variance t-test of ``mean(a) - mean(b)``: difference, interval, p."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        raise ValueError("Welch's t-test needs two values on each side")
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(vx + vy)
    # Welch-Satterthwaite degrees of freedom
    df = (vx + vy) ** 2 / (vx ** 2 / (x.size - 1) + vy ** 2 / (y.size - 1)) if se > 0 else x.size + y.size - 2
    mean = float(x.mean() - y.mean())
    ci, p = _t_test(mean, se, df, level)
    return mean, ci, p


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given): sorted ascending, the i-th
    (0-based) of m is multiplied by m - i, then made monotone and capped at 1."""
    order = np.argsort(pvalues, kind="stable")
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * float(pvalues[j])))
        adjusted[j] = running
    return adjusted


# --- loading and grouping ---------------------------------------------------------------------

def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}} -> {'a.b': 1}`` (lists become tuples so they can be compared)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, Mapping):  # {"value": x, "how": "..."} is accepted too
        v = v.get("value")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


def metric_value(section: Mapping[str, Any], metric: Metric) -> float | None:
    """The metric (display scale) in a metrics.json dict or baseline section, None if absent."""
    for key in metric.keys:
        if (v := _number(get_path(section, key))) is not None:
            return v * metric.scale
    return None


def chance_value(metrics: Mapping[str, Any], metric: Metric) -> float | None:
    """The chance level of ``metric`` in one run's metrics.json (display scale): the top-level
    ``chance`` mapping (flat key paths or nested), then ``<key>_chance``, then a sibling
    ``chance`` entry (``probes.speaker.chance``), then ``metric.chance_keys``."""
    table = metrics.get("chance")
    for key in metric.keys:
        if isinstance(table, Mapping):
            v = _number(table[key]) if key in table else _number(get_path(table, key))
            if v is not None:
                return v * metric.scale
        parent = key.rpartition(".")[0]
        for alt in (f"{key}_chance", f"{parent}.chance" if parent else "chance"):
            if (v := _number(get_path(metrics, alt))) is not None:
                return v * metric.scale
    for key in metric.chance_keys:
        if (v := _number(get_path(metrics, key))) is not None:
            return v * metric.scale
    return None


def load_run(exp_dir: str | Path) -> Run:
    """Read ``<exp>/eval/metrics.json`` (or a metrics.json path) and ``<exp>/config.yaml``."""
    exp_dir = Path(exp_dir)
    mpath = exp_dir / "eval" / "metrics.json" if (exp_dir / "eval" / "metrics.json").is_file() else exp_dir
    if not mpath.is_file():
        raise FileNotFoundError(f"{exp_dir}: no eval/metrics.json (run speechae evaluate first)")
    metrics = json.loads(mpath.read_text(encoding="utf-8"))
    cpath = exp_dir / "config.yaml"
    config = flatten(yaml.safe_load(cpath.read_text(encoding="utf-8")) or {}) if cpath.is_file() else {}
    values = {m.label: v for m in HEADLINE if (v := metric_value(metrics, m)) is not None}
    chance = {m.label: v for m in HEADLINE if (v := chance_value(metrics, m)) is not None}
    baselines = {}
    for name, section in (metrics.get("baselines") or {}).items():
        if isinstance(section, Mapping):
            vals = {m.label: v for m in HEADLINE if (v := metric_value(section, m)) is not None}
            if vals:
                baselines[str(name)] = vals
    listening = metrics.get("listening") or {}
    for key, name in LISTENING_REFERENCES.items():  # the references of the waveform evaluation
        if isinstance(listening.get(key), Mapping):
            section = {"listening": {"system": listening[key]}}
            vals = {m.label: v for m in HEADLINE if (v := metric_value(section, m)) is not None}
            if vals:
                baselines[name] = vals
    return Run(exp_dir.name, exp_dir, config, values, chance, baselines)


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


def arm_labels(groups: Sequence[Sequence[Run]]) -> list[str]:
    """One unique label per group (``#i`` appended when two groups would share a name)."""
    labels = [group_label(g) for g in groups]
    if len(set(labels)) < len(labels):
        labels = [f"{lab}#{i}" for i, lab in enumerate(labels)]
    return labels


def choose_reference(labels: Sequence[str], requested: str | None = None) -> str:
    """The reference arm: ``requested`` (exact name, else a unique substring), else the first
    arm with a ``kl`` name component (``tiny_kl``), else the first containing ``kl``, else the
    first arm."""
    if not labels:
        raise ValueError("no arms")
    if requested:
        if requested in labels:
            return requested
        hits = [lab for lab in labels if requested in lab]
        if len(hits) == 1:
            return hits[0]
        raise UnknownArmError(f"--reference {requested!r} {'is ambiguous' if hits else 'matches no arm'}; "
                         f"arms: {', '.join(labels)}")
    for lab in labels:
        if "kl" in re.split(r"[^0-9a-z]+", lab.lower()):
            return lab
    return next((lab for lab in labels if "kl" in lab.lower()), labels[0])


def summarize(group: Sequence[Run]) -> dict[str, Summary]:
    """``{metric label: Summary}`` over the runs of a group that have the metric."""
    out = {}
    for m in HEADLINE:
        vals = [r.values[m.label] for r in group if m.label in r.values]
        if vals:
            out[m.label] = s = t_summary(vals)
            if m.bounds is not None and s.ci is not None:  # a t-interval knows no range
                s.ci = (max(s.ci[0], m.bounds[0]), min(s.ci[1], m.bounds[1]))
    return out


def config_differences(groups: Sequence[Sequence[Run]]) -> list[str]:
    """Config keys whose value differs between groups (seed excluded)."""
    keys = set().union(*(g[0].config for g in groups)) - set(SEED_KEYS)
    return sorted(k for k in keys if len({repr(g[0].config.get(k)) for g in groups}) > 1)


# --- differences against the reference ----------------------------------------------------------

def _by_seed(group: Sequence[Run], metric: Metric) -> dict[Any, float]:
    """``{seed: value}`` (runs sharing a seed averaged; runs without a seed left out); for a
    ``zero`` metric the value is ``|value|``."""
    acc: dict[Any, list[float]] = {}
    for r in group:
        if metric.label in r.values and r.seed is not None:
            acc.setdefault(repr(r.seed), []).append(r.values[metric.label])
    return {s: _oriented(metric, float(np.mean(v))) for s, v in acc.items()}


def _oriented(metric: Metric, v: float) -> float:
    return abs(v) if metric.better == "zero" else v


def _verdict(metric: Metric, arm: str, d: Difference) -> str:
    if d.p is None:
        return d.test
    if not d.significant:
        return "not significant"
    if metric.better is None:
        return "differs *"
    good = d.mean > 0 if metric.better == "higher" else d.mean < 0
    return f"{arm} {'better' if good else 'worse'} *"


def difference(arm: str, group: Sequence[Run], reference: str, ref_group: Sequence[Run],
               metric: Metric) -> Difference | None:
    """``arm - reference`` for ``metric`` with the test the data allow (see the module
    docstring); None when either arm lacks the metric."""
    a = [_oriented(metric, r.values[metric.label]) for r in group if metric.label in r.values]
    b = [_oriented(metric, r.values[metric.label]) for r in ref_group if metric.label in r.values]
    if not a or not b:
        return None
    sa, sb = _by_seed(group, metric), _by_seed(ref_group, metric)
    common = [s for s in sa if s in sb]
    if len(common) >= 2:
        mean, ci, p = paired_t([sa[s] for s in common], [sb[s] for s in common])
        return Difference(arm, reference, metric.label, "paired t over seeds", len(common), mean, ci, p)
    if len(a) >= 2 and len(b) >= 2:
        mean, ci, p = welch_t(a, b)
        return Difference(arm, reference, metric.label, "Welch t (seeds not shared)", len(a) + len(b), mean, ci, p)
    return Difference(arm, reference, metric.label, "n=1: no test", min(len(a), len(b)),
                      float(np.mean(a) - np.mean(b)))


def compare_to_reference(arms: Mapping[str, Sequence[Run]], reference: str) -> list[Difference]:
    """Differences of every other arm against ``reference`` for every metric both have, with
    Holm-adjusted p-values over the primary metrics of each arm and significance marked."""
    out = []
    for arm, group in arms.items():
        if arm == reference:
            continue
        diffs = [(m, d) for m in HEADLINE if (d := difference(arm, group, reference, arms[reference], m))]
        family = [d for m, d in diffs if m.primary and d.p is not None]
        for d, adj in zip(family, holm([d.p for d in family])):
            d.p_holm = adj
        for m, d in diffs:
            p = d.p_holm if m.primary else d.p
            d.significant = p is not None and p < ALPHA
            d.verdict = _verdict(m, arm, d)
        out += [d for _, d in diffs]
    return out


# --- formatting ---------------------------------------------------------------------------------

def _digits(values: Sequence[float]) -> int:
    top = max((abs(v) for v in values), default=0.0)
    return 0 if top >= 1000 else 1 if top >= 100 else 2 if top >= 1 or top == 0 else 3


def fmt_summary(s: Summary, digits: int, arm_n: int | None = None) -> str:
    """``55.10 ± 1.30 [51.87, 58.33]`` for n > 1, ``55.10 (n=1)`` for one run; ``(n=k)``
    is appended when the metric has fewer runs than its arm."""
    if s.std is None or s.ci is None:
        return f"{s.mean:.{digits}f} (n=1)"
    text = f"{s.mean:.{digits}f} ± {s.std:.{digits}f} [{s.ci[0]:.{digits}f}, {s.ci[1]:.{digits}f}]"
    return text if arm_n in (None, s.n) else f"{text} (n={s.n})"


def _fmt_range(values: Sequence[float], digits: int) -> str:
    lo, hi = min(values), max(values)
    digits = max(digits, _digits([hi]))  # a floor of 1.05 beside EP values in the thousands
    if hi - lo <= 1e-9 * max(1.0, abs(hi)):
        return f"{lo:.{digits}f}"
    return f"{lo:.{digits}f}…{hi:.{digits}f}"


def references(runs: Sequence[Run], metric: str, digits: int) -> tuple[str, str]:
    """(chance cell, baselines cell) of one metric over ``runs``: a value, or the range
    when the runs disagree; baselines as ``name value`` pairs."""
    chance = [r.chance[metric] for r in runs if metric in r.chance]
    names = sorted({b for r in runs for b, v in r.baselines.items() if metric in v})
    base = [f"{b} {_fmt_range([r.baselines[b][metric] for r in runs if metric in r.baselines.get(b, {})], digits)}"
            for b in names]
    return (_fmt_range(chance, digits) if chance else "not reported",
            "; ".join(base) if base else "not reported")


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "no test"
    return "< 0.001" if p < 1e-3 else f"{p:.3f}"


def _signed(v: float, digits: int) -> str:
    return f"{v:+.{digits}f}"


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


# --- figures ------------------------------------------------------------------------------------

def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(metric: str) -> str:
    better = METRICS[metric].better
    return metric if better is None else f"{metric} {ARROW[better]}"


def bar_chart(labels: Sequence[str], stats: Sequence[Mapping[str, Summary]], arms: Sequence[Sequence[Run]]) -> Any:
    """Figure: per metric, one bar per arm (mean) with its 95 % interval and the runs as dots."""
    plt = _pyplot()
    metrics = [m.label for m in HEADLINE if all(m.label in s for s in stats)][:12]
    cols = max(1, min(4, len(metrics)))
    rows = max(1, math.ceil(len(metrics) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows), squeeze=False)
    for ax, m in zip(axes.ravel(), metrics):
        means = [s[m].mean for s in stats]
        err = np.array([[s[m].mean - s[m].ci[0], s[m].ci[1] - s[m].mean] if s[m].ci else [0.0, 0.0]
                        for s in stats]).T
        ax.bar(range(len(labels)), means, yerr=err, capsize=3, color=[f"C{i}" for i in range(len(labels))],
               alpha=0.6)
        for i, g in enumerate(arms):
            vals = [r.values[m] for r in g if m in r.values]
            ax.plot([i] * len(vals), vals, "k.", ms=4)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(_title(m), fontsize=9)
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    fig.suptitle("mean and 95 % t-interval over seeds; dots: runs", fontsize=8)
    fig.tight_layout()
    return fig


def recon_points(arms: Mapping[str, Sequence[Run]], y_metric: str) -> dict[str, list[dict[str, Any]]]:
    """``{arm: [{run, seed, x, y}]}``: one point per run having mel-LSD and ``y_metric``."""
    return {arm: [{"run": r.name, "seed": r.seed, "x": r.values[RECON], "y": r.values[y_metric]}
                  for r in g if RECON in r.values and y_metric in r.values]
            for arm, g in arms.items()}


def recon_vs_discrimination_figure(arms: Mapping[str, Sequence[Run]]) -> tuple[Any, dict[str, Any]] | None:
    """Figure with one panel per discrimination metric (phone PER, ABX within) against
    mel-LSD: one point per run, one colour per arm (one scatter collection per arm and panel,
    labelled with the arm).  Returns ``(figure, {metric: points})``, None without points."""
    panels = {}
    for m in DISCRIMINATION:
        pts = recon_points(arms, m)
        if any(pts.values()):
            panels[m] = pts
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    colour = {arm: f"C{i}" for i, arm in enumerate(arms)}
    for ax, (m, pts) in zip(axes[0], panels.items()):
        for arm, p in pts.items():
            if p:
                ax.scatter([q["x"] for q in p], [q["y"] for q in p], color=colour[arm], label=arm, s=28)
        ax.set_xlabel(_title(RECON))
        ax.set_ylabel(_title(m))
        ax.set_title(f"{m} against reconstruction (one point per run)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, panels


def data_efficiency(runs: Sequence[Run], out_dir: Path) -> Path | None:
    """Plot headline metrics against ``data.train_fraction`` for families spanning several
    fractions; returns the PNG path (None when no family does)."""
    families = [f for f in group_runs(runs, SEED_KEYS + (FRACTION_KEY,))
                if len({r.config.get(FRACTION_KEY, 1.0) for r in f}) > 1]
    if not families:
        return None
    plt = _pyplot()
    metrics = ["phone PER %", RECON, "ABX within %", "PNMI"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.2), squeeze=False)
    rows = []
    for fi, fam in enumerate(families):
        by_frac: dict[float, list[Run]] = {}
        for r in fam:
            by_frac.setdefault(float(r.config.get(FRACTION_KEY, 1.0)), []).append(r)
        fracs = sorted(by_frac)
        name = group_label(fam)
        for ax, m in zip(axes[0], metrics):
            pts = [(f, s) for f in fracs if (s := summarize(by_frac[f]).get(m)) is not None]
            if pts:
                ax.errorbar([f for f, _ in pts], [s.mean for _, s in pts], yerr=[s.std or 0.0 for _, s in pts],
                            marker="o", capsize=3, label=name, color=f"C{fi}")
            rows += [[name, f, m, s.mean, "" if s.std is None else s.std, s.n] for f, s in pts]
    for ax, m in zip(axes[0], metrics):
        ax.set_xscale("log")
        ax.set_xlabel("fraction of training data")
        ax.set_title(_title(m), fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "data_efficiency.png"
    _save(fig, path)
    _write_csv(out_dir / "data_efficiency.csv", ["family", "train_fraction", "metric", "mean", "std", "n"], rows)
    return path


# --- the report ---------------------------------------------------------------------------------

def _metrics_table(labels: Sequence[str], arms: Sequence[Sequence[Run]], stats: Sequence[Mapping[str, Summary]],
                   metrics: Sequence[str], runs: Sequence[Run]) -> str:
    header = ["metric", "better", "chance", "baselines"] + [f"{lab} (n={len(g)})" for lab, g in zip(labels, arms)]
    body = []
    for m in metrics:
        digits = _digits([s[m].mean for s in stats if m in s])
        chance, base = references(runs, m, digits)
        body.append([m, ARROW[METRICS[m].better], chance, base]
                    + [fmt_summary(s[m], digits, len(g)) if m in s else "not measured" for s, g in zip(stats, arms)])
    return markdown_table(header, body)


def _difference_table(diffs: Sequence[Difference], stats: Mapping[str, Mapping[str, Summary]]) -> str:
    body = []
    for d in diffs:
        m = METRICS[d.metric]
        digits = _digits([s[d.metric].mean for s in stats.values() if d.metric in s])
        ci = f"[{_signed(d.ci[0], digits)}, {_signed(d.ci[1], digits)}]" if d.ci else "no interval"
        holm_cell = _fmt_p(d.p_holm) if m.primary and d.p is not None else ("no test" if d.p is None
                                                                           else "not in family")
        name = f"abs({d.metric})" if m.better == "zero" else d.metric
        body.append([name, ARROW[m.better], _signed(d.mean, digits), ci, d.test, str(d.n), _fmt_p(d.p), holm_cell,
                     d.verdict])
    return markdown_table(["metric", "better", "Δ mean", "95 % CI", "test", "n", "p", "p Holm", "result"], body)


def _arms_table(labels: Sequence[str], arms: Sequence[Sequence[Run]], reference: str) -> str:
    rows = []
    for lab, g in zip(labels, arms):
        seeds = ", ".join(str(r.seed) for r in g if r.seed is not None) or "not set"
        rows.append([f"**{lab}** (reference)" if lab == reference else lab, str(len(g)), seeds,
                     ", ".join(r.name for r in g)])
    return markdown_table(["arm", "n", "seeds", "runs"], rows)


_INTRO = (
    "Arms are groups of runs whose resolved configs differ only in their seeds (`train.seed`, `data.seed`).  "
    "Cells: mean ± sample std [95 % Student-t interval, clipped to the metric's range (accuracies, ABX, PNMI)] "
    "over the arm's runs; a single run is shown with `(n=1)`, without a "
    "spread or an interval.  Better: ↓ lower, ↑ higher, → 0 closest to zero, info = descriptive.  "
    "Chance: each run's reported chance level (or null floor); baselines: systems scored on the same "
    "test split beside each run (a range when runs disagree).")


def _differences_intro(reference: str) -> str:
    primary = ", ".join(m.label for m in HEADLINE if m.primary)
    return (f"Δ = arm − `{reference}`.  Test: paired t-test over runs matched by `train.seed` when the arms "
            "share two or more seeds; Welch's t-test over runs when they share fewer; no test when an arm "
            "has a single run (`n=1: no test`).  n: seed pairs (paired) or runs (Welch).  Two-sided p; Holm "
            f"correction over the primary metrics ({primary}) within each arm; `*`: p (Holm-adjusted for "
            "primary metrics) < 0.05.  For → 0 metrics the difference is of |value|.  No bootstrap over test "
            "utterances: `speechae evaluate` stores no per-utterance scores.")


def build_markdown(labels: Sequence[str], arms: Sequence[Sequence[Run]], stats: Sequence[Mapping[str, Summary]],
                   reference: str, diffs: Sequence[Difference], figures: Mapping[str, str]) -> str:
    """The text of compare.md."""
    runs = [r for g in arms for r in g]
    metrics = [m.label for m in HEADLINE if any(m.label in s for s in stats)]
    lines = [f"# Comparison of {len(runs)} runs in {len(arms)} arms", "", _INTRO, "",
             "## Arms", "", _arms_table(labels, arms, reference), "",
             "## Metrics", "", _metrics_table(labels, arms, stats, metrics, runs), ""]
    by_label = dict(zip(labels, stats))
    if len(arms) > 1:
        lines += [f"## Differences against `{reference}`", "", _differences_intro(reference), ""]
        for lab in labels:
            ds = [d for d in diffs if d.arm == lab]
            if ds:
                lines += [f"### {lab} − {reference}", "", _difference_table(ds, by_label), ""]
        if diffs_cfg := config_differences(arms):
            # values in backticks: a config value such as `none` must not read as a missing cell
            rows = [[lab] + [f"`{g[0].config[k]}`" if k in g[0].config else "(not set)" for k in diffs_cfg]
                    for lab, g in zip(labels, arms)]
            lines += ["## What differs between arms", "", markdown_table(["arm"] + diffs_cfg, rows), ""]
    lines += ["## Figures", ""] + [f"![{cap}]({p})" for cap, p in figures.items()] + [""]
    return "\n".join(lines)


def _summary_json(s: Summary) -> dict[str, Any]:
    return {"mean": s.mean, "std": s.std, "n": s.n, "ci95": list(s.ci) if s.ci else None}


def _write_tables(out_dir: Path, labels: Sequence[str], arms: Sequence[Sequence[Run]],
                  stats: Sequence[Mapping[str, Summary]]) -> None:
    metrics = [m.label for m in HEADLINE if any(m.label in s for s in stats)]
    cols = ("mean", "std", "ci_low", "ci_high", "n")
    rows = []
    for lab, g, st in zip(labels, arms, stats):
        row: list[Any] = [lab, len(g)]
        for m in metrics:
            s = st.get(m)
            row += ["", "", "", "", 0] if s is None else [
                s.mean, "" if s.std is None else s.std, s.ci[0] if s.ci else "", s.ci[1] if s.ci else "", s.n]
        rows.append(row)
    _write_csv(out_dir / "compare.csv", ["group", "n"] + [f"{m} {c}" for m in metrics for c in cols], rows)
    _write_csv(out_dir / "runs.csv", ["run", "group", "seed"] + [m.label for m in HEADLINE],
               [[r.name, lab, "" if r.seed is None else r.seed] + [r.values.get(m.label, "") for m in HEADLINE]
                for lab, g in zip(labels, arms) for r in g])


def compare_experiments(exp_dirs: Sequence[str | Path], out_dir: str | Path,
                        reference: str | None = None) -> dict[str, Any]:
    """Write the comparison of ``exp_dirs`` to ``out_dir`` (see the module docstring);
    returns the content of compare.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d) for d in exp_dirs]
    groups = group_runs(runs)
    labels = arm_labels(groups)
    ref = choose_reference(labels, reference)
    arms = dict(zip(labels, groups))
    stats = [summarize(g) for g in groups]
    diffs = compare_to_reference(arms, ref) if len(groups) > 1 else []
    _write_tables(out_dir, labels, groups, stats)
    figures: dict[str, str] = {}
    _save(bar_chart(labels, stats, groups), out_dir / "compare.png")
    figures["metrics by arm (95 % intervals)"] = "compare.png"
    scatter = recon_vs_discrimination_figure(arms)
    if scatter is not None:
        _save(scatter[0], out_dir / "recon_vs_discrimination.png")
        figures["reconstruction against discrimination, one point per run"] = "recon_vs_discrimination.png"
    if data_efficiency(runs, out_dir) is not None:
        figures["data efficiency"] = "data_efficiency.png"
    result = {
        "reference": ref,
        "alpha": ALPHA,
        "metrics": [{"label": m.label, "keys": list(m.keys), "scale": m.scale, "better": m.better,
                     "primary": m.primary} for m in HEADLINE],
        "arms": [{"name": lab, "n": len(g), "seeds": [r.seed for r in g], "runs": [r.name for r in g],
                  "summary": {m: _summary_json(s) for m, s in st.items()}}
                 for lab, g, st in zip(labels, groups, stats)],
        "runs": [{"name": r.name, "arm": lab, "path": str(r.path), "seed": r.seed, "values": r.values,
                  "chance": r.chance, "baselines": r.baselines} for lab, g in arms.items() for r in g],
        "differences": [{**{k: v for k, v in asdict(d).items() if k != "ci"}, "ci95": list(d.ci) if d.ci else None}
                        for d in diffs],
        "config_differences": config_differences(groups) if len(groups) > 1 else [],
        "recon_vs_discrimination": scatter[1] if scatter is not None else {},
    }
    _write_text(out_dir / "compare.json", json.dumps(result, indent=1, ensure_ascii=False, default=str) + "\n")
    _write_text(out_dir / "compare.md", build_markdown(labels, groups, stats, ref, diffs, figures))
    return result
