"""``report.md`` and summary plots from an evaluation's ``metrics.json`` dict.

Every table lists only the systems that have that section and only the columns every listed
system has, so no cell is ever empty or a placeholder (a metric that does not apply to a
system -- reconstruction for fbank -- leaves the system out of that table instead).

Every metric column says which direction is better (↓ lower, ↑ higher, → 0 closest to zero;
none for descriptive columns), the baselines are rows of the same table, and the chance
level of each column that has one (metrics.json ``"chance"``) follows the table.  Definitions:
docs/metrics.md and the ``speechae/eval/`` module docstrings.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

# (table title, section, [(column header, key path inside the section, formatter, better)])
Fmt = Callable[[Any], str]
ARROW = {"lower": "↓", "higher": "↑", "zero": "→ 0", None: ""}


def _f(digits: int) -> Fmt:
    return lambda v: f"{float(v):.{digits}f}"


def _pct(v: Any) -> str:
    return f"{100.0 * float(v):.1f}"


def _int(v: Any) -> str:
    return f"{int(v):,}"


def _big(v: Any) -> str:
    v = float(v)
    return f"{v / 1e6:.3f} M" if abs(v) >= 1e5 else f"{v:,.0f}"


TABLES: list[tuple[str, str, list[tuple[str, str, Fmt, str | None]]]] = [
    ("Reconstruction (test split, log-mel)", "reconstruction", [
        ("mel-LSD (dB)", "mel_lsd_db", _f(2), "lower"), ("mel L1", "mel_l1", _f(3), "lower"),
        ("MCD (dB)", "mcd_db", _f(2), "lower"), ("frames", "num_frames", _int, None)]),
    ("Probes on frozen features", "probes", [
        ("phone PER %", "phone.per", _pct, "lower"), ("± std (probe seeds)", "phone.per_std", _pct, None),
        ("token TER %", "token.ter", _pct, "lower"), ("CER %", "token.cer", _pct, "lower"),
        ("WER %", "token.wer", _pct, "lower"), ("speaker acc %", "speaker.accuracy", _pct, "higher"),
        ("language acc %", "language.accuracy", _pct, "higher"),
        ("CTC-infeasible utts (phone)", "phone.infeasible", _int, None),
        ("CTC-infeasible utts (token)", "token.infeasible", _int, None)]),
    ("ABX error (test split)", "abx", [
        ("within-speaker %", "within_error_pct", _f(2), "lower"),
        ("across-speaker %", "across_error_pct", _f(2), "lower"),
        ("within triplets", "within_triplets", _int, None), ("across triplets", "across_triplets", _int, None),
        ("context", "within_context", str, None), ("window ± ms", "context_ms", _f(0), None)]),
    ("k-means units vs phones (common time grid)", "pnmi", [
        ("PNMI", "pnmi", _f(3), "higher"), ("PNMI chance", "pnmi_chance", _f(3), None),
        ("phone purity", "phone_purity", _f(3), "higher"), ("purity chance", "phone_purity_chance", _f(3), None),
        ("cluster purity", "cluster_purity", _f(3), "higher"), ("grid Hz", "grid_hz", _f(1), None),
        ("K", "k", _int, None), ("codes used", "codes_used", _int, None)]),
    ("Geometry of the features (test frames; posterior samples for a Gaussian bottleneck)", "geometry", [
        ("dim", "dim", _int, None), ("frame rate Hz", "frame_rate_hz", _f(2), None),
        ("effective rank", "effective_rank", _f(2), "higher"), ("active units", "active_units", _int, "higher"),
        ("top eig share", "top_eigenvalue_share", _f(3), None), ("Epps-Pulley", "ep", _f(2), None),
        ("EP null mean", "ep_null_mean", _f(2), None), ("EP vs null (z)", "ep_std", _f(2), "zero"),
        ("EP z-scored channels", "ep_standardized", _f(2), None), ("EP stride", "ep_stride", _int, None),
        ("EP floor", "ep_floor", _f(3), None)]),
    ("Gaussian posterior (KL to N(0, I))", "geometry", [
        ("KL nats/frame", "kl_total_nats", _f(2), None), ("dims with KL > 0.01", "kl_active_dims", _int, None),
        ("effective rank of means", "effective_rank_means", _f(2), None)]),
    ("Resources", "resources", [
        ("params", "params", _big, None), ("encoder GFLOPs / audio s", "encoder_gflops_per_audio_s", _f(3), None),
        ("total GFLOPs / audio s", "gflops_per_audio_s", _f(3), None)]),
]

BAD_CELLS = {"", "nan", "none", "null", "n/a", "na", "-", "—", "todo", "tbd", "?", "inf", "-inf"}


def get_path(d: Mapping[str, Any], path: str) -> Any:
    """``d['a']['b']`` for ``path='a.b'``; None when missing.  A key may itself contain dots
    (the waveform scores are flat keys such as ``waveform.stoi``): at each level the longest
    matching key wins, so ``listening.system.waveform.stoi`` finds
    ``d['listening']['system']['waveform.stoi']``."""
    if not isinstance(d, Mapping):
        return None
    if path in d:
        return d[path]
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:i])
        if head in d:
            got = get_path(d[head], ".".join(parts[i:]))
            if got is not None:
                return got
    return None


def _valid(v: Any) -> bool:
    if v is None or isinstance(v, (dict, list)):
        return False
    if isinstance(v, float) and not math.isfinite(v):
        return False
    return str(v).strip().lower() not in BAD_CELLS


def systems_of(metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``{system name: sections}``: the evaluated model first, then every baseline."""
    out = {str(metrics.get("system", "model")): metrics}
    out.update(metrics.get("baselines", {}))
    return out


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _header(name: str, better: str | None) -> str:
    return f"{name} {ARROW[better]}" if ARROW.get(better) else name


def section_table(systems: Mapping[str, Mapping[str, Any]], section: str,
                  columns: Sequence[tuple]) -> str | None:
    """Table of one section: rows = systems having it, columns = keys all those rows have.
    ``columns``: (header, key, formatter[, better]); the header gets the direction arrow."""
    cols_all = [(c[0], c[1], c[2], c[3] if len(c) > 3 else None) for c in columns]
    rows = {n: s[section] for n, s in systems.items() if isinstance(s.get(section), Mapping)}
    rows = {n: s for n, s in rows.items() if any(_valid(get_path(s, k)) for _, k, _, _ in cols_all)}
    if not rows:
        return None
    cols = [c for c in cols_all if all(_valid(get_path(s, c[1])) for s in rows.values())]
    if not cols:
        return None
    body = [[n] + [fmt(get_path(s, key)) for _, key, fmt, _ in cols] for n, s in rows.items()]
    return markdown_table(["system"] + [_header(h, b) for h, _, _, b in cols], body)


def chance_line(metrics: Mapping[str, Any], section: str, columns: Sequence[tuple]) -> str | None:
    """"Chance: <column> <value>, ..." for the columns whose metric has a chance level in
    ``metrics["chance"]`` (the evaluated system's)."""
    table = metrics.get("chance") or {}
    parts = [f"{c[0]} {c[2](table[f'{section}.{c[1]}'])}" for c in columns
             if _valid(table.get(f"{section}.{c[1]}"))]
    return "Chance / reference level: " + ", ".join(parts) + "." if parts else None


def _kv_table(d: Mapping[str, Any], title: str = "value") -> str | None:
    rows = [[k, f"{v:.4g}" if isinstance(v, float) else str(v)] for k, v in d.items() if _valid(v)]
    return markdown_table(["quantity", title], rows) if rows else None


def build_report(metrics: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    """The markdown report text; ``figures`` maps a caption to a PNG path relative to it."""
    systems = systems_of(metrics)
    name = str(metrics.get("system", "model"))
    out = [f"# Evaluation of `{metrics.get('experiment', name)}`", ""]
    info = {k: metrics[k] for k in ("checkpoint_step", "weights", "test_cuts", "train_cuts", "num_test_utts",
                                    "num_train_utts", "num_dev_utts", "eval_seconds") if k in metrics}
    if metrics.get("weights_note"):
        out += [f"**Weights: {metrics['weights_note']}.**", ""]
    if (t := _kv_table(info)) is not None:
        out += [t, ""]
    abx_ms = get_path(metrics, "abx.context_ms")
    grid = get_path(metrics, "pnmi.grid_hz")
    out += ["Protocol: probes and k-means are trained on the training split and scored on the test "
            "split (unseen speakers); the speaker probe uses a half/half utterance split of the held-out "
            "dev + test speakers, stratified by (speaker, language).  ABX (Libri-light conventions): "
            f"phone windows widened by {abx_ms if abx_ms is not None else 40:g} ms on each side for every "
            "system, DTW with the angular distance arccos(cos)/pi, path-normalised.  PNMI: every system's "
            f"codes read on one {grid if grid is not None else 25:g} Hz grid, beside a permutation chance "
            "level.  Arrows: ↓ lower is better, ↑ higher is better, → 0 closest to zero.  Definitions: "
            "docs/metrics.md.", ""]
    for title, section, columns in TABLES:
        table = section_table(systems, section, columns)
        if table is not None:
            out += [f"## {title}", "", table, ""]
            if (line := chance_line(metrics, section, columns)) is not None:
                out += [line, ""]
            if section == "reconstruction" and (ref := get_path(metrics, "reconstruction.reference")):
                rows = [[k, f"{v['mel_lsd_db']:.2f}", f"{v['mel_l1']:.3f}", f"{v['mcd_db']:.2f}"]
                        for k, v in ref.items()]
                out += ["Mean-spectrum references (predict every frame as the mean log-mel):", "",
                        markdown_table(["reference", "mel-LSD (dB) ↓", "mel L1 ↓", "MCD (dB) ↓"], rows), ""]
    if stacks := get_path(metrics, "probes.phone_by_stack"):
        rows = [[k, f"{v['frame_rate']:.2f}", _pct(v["per"])] for k, v in stacks.items()]
        out += ["## Phone probe per encoder stack", "", markdown_table(["stack", "rate Hz", "PER %"], rows), ""]
    if kl := get_path(metrics, "geometry.kl_per_dim"):
        top = np.argsort(kl)[::-1][:8]
        out += ["Largest per-dimension KL (nats/frame): " + ", ".join(f"z{i}={kl[i]:.3f}" for i in top), ""]
    if (t := _kv_table(get_path(metrics, "resources.training") or {})) is not None:
        out += ["## Training run (from log/metrics.jsonl)", "", t, ""]
    ex = get_path(metrics, "probes.token")
    if ex and _valid(ex.get("example_ref")) and _valid(ex.get("example_hyp")):
        out += ["Token-probe example:", "", f"- ref: {ex['example_ref']}", f"- hyp: {ex['example_hyp']}", ""]
    if figures:
        out += ["## Figures", ""]
        out += [f"![{cap}]({p})" for cap, p in figures.items()] + [""]
    notes = [f"{n}: {x}" for n, s in systems.items() for x in s.get("notes", [])]
    if notes:
        out += ["## Notes", ""] + [f"- {x}" for x in notes] + [""]
    return "\n".join(out)


def check_report(text: str) -> list[str]:
    """Problems in a report: table cells that are empty or placeholders (used by the tests)."""
    bad = []
    for line in text.splitlines():
        if line.startswith("|") and not set(line) <= set("|-"):
            for cell in line.strip().strip("|").split("|"):
                if cell.strip().lower() in BAD_CELLS:
                    bad.append(line)
                    break
    return bad


def plot_summary(systems: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path | None:
    """Bar charts of the headline metrics across systems."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("phone PER % ↓", "probes.phone.per", 100), ("CER % ↓", "probes.token.cer", 100),
            ("ABX within % ↓", "abx.within_error_pct", 1), ("PNMI ↑", "pnmi.pnmi", 1),
            ("mel-LSD dB ↓", "reconstruction.mel_lsd_db", 1),
            ("speaker acc % ↑", "probes.speaker.accuracy", 100)]
    panels = [(t, {n: float(get_path(s, k)) * sc for n, s in systems.items() if _valid(get_path(s, k))})
              for t, k, sc in keys]
    panels = [(t, v) for t, v in panels if v]
    if not panels:
        return None
    colour = {n: f"C{i}" for i, n in enumerate(systems)}  # one colour per system in every panel
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, vals) in zip(axes[0], panels):
        ax.bar(range(len(vals)), list(vals.values()), color=[colour[n] for n in vals])
        ax.set_xticks(range(len(vals)), list(vals.keys()), rotation=45, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_training_curve(records: Sequence[Mapping[str, Any]], path: str | Path,
                        key: str = "loss/recon") -> Path | None:
    """Training loss ``key`` against step (log scale when positive); ``loss/total`` when the log
    has no ``key`` (the reconstruction term is the one every arm shares)."""
    if not any(key in r for r in records):
        key = "loss/total"
    pts = [(r["step"], float(r[key])) for r in records if "split" not in r and key in r
           and isinstance(r[key], (int, float)) and math.isfinite(float(r[key]))]
    if len(pts) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, v = zip(*pts)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(s, v)
    if min(v) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title("training loss")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
