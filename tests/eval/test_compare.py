"""``speechae compare``: statistics over seeds checked against hand computations, grouping,
the reference arm, chance levels / baselines and the reconstruction-vs-discrimination plot.

Fake experiments are ``config.yaml`` + ``eval/metrics.json`` in ``tmp_path``; no model is trained.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from speechae.eval import compare as C
from speechae.eval.report import check_report

T975_2 = 4.302653  # Student t, 0.975 quantile, 2 degrees of freedom (tables)


def _metrics(per: float, lsd: float, abx: float, pnmi: float = 0.2, ep_std: float = 1.0,
             lsd_key: str = "mel_lsd_db", chance: bool = True) -> dict[str, Any]:
    m: dict[str, Any] = {
        "system": "model",
        "reconstruction": {lsd_key: lsd, "mcd_db": 2 * lsd, "mel_l1": lsd / 10},
        "probes": {"phone": {"per": per / 100}},
        "abx": {"within_error_pct": abx, "across_error_pct": abx + 5},
        "pnmi": {"pnmi": pnmi, "pnmi_chance": 0.05},
        "geometry": {"ep": 3.0, "ep_std": ep_std, "ep_floor": 1.05},
        "baselines": {"fbank": {"probes": {"phone": {"per": 0.40}}, "abx": {"within_error_pct": 9.0}},
                      "mean_spectrum": {"reconstruction": {"lsd_db": 12.5}}},
    }
    if chance:
        m["chance"] = {"probes.phone.per": 0.97, "abx.within_error_pct": 50.0}
    return m


def make_run(root: Path, name: str, seed: int | None, metrics: dict[str, Any], **config: Any) -> Path:
    """A fake evaluated experiment; ``config`` keys are dotted (``model.bottleneck.kind``)."""
    cfg: dict[str, Any] = {"model": {"bottleneck": {"kind": "gaussian"}}, "train": {}}
    if seed is not None:
        cfg["train"]["seed"] = seed
    for key, value in config.items():
        *parents, leaf = key.split("__")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    d = root / name
    (d / "eval").mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    (d / "eval" / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return d


# sigreg PER = kl PER + (1, 2, 3) points per seed; none is a single run
KL_PER = {1: 50.0, 2: 52.0, 3: 57.0}


@pytest.fixture
def three_arms(tmp_path: Path) -> list[Path]:
    runs = []
    for seed in (1, 2, 3):
        runs.append(make_run(tmp_path, f"tiny_sigreg_seed{seed}", seed,
                             _metrics(KL_PER[seed] + seed, 10.0 + seed / 10, 20.0 - seed, ep_std=-0.5),
                             model__bottleneck__kind="deterministic", losses__regularizer="sigreg"))
        kl = _metrics(KL_PER[seed], 11.0 + seed / 10, 30.0 + seed, ep_std=2.0)
        kl["geometry"]["kl_total_nats"] = 11.0 + seed  # only the gaussian arm has a KL
        runs.append(make_run(tmp_path, f"tiny_kl_seed{seed}", seed, kl, losses__regularizer="kl"))
    runs.append(make_run(tmp_path, "tiny_none_seed1", 1, _metrics(60.0, 9.0, 25.0),
                         model__bottleneck__kind="deterministic", losses__regularizer="none"))
    return runs


# --- the formulas -------------------------------------------------------------------------------

def test_t_summary_three_seeds_by_hand() -> None:
    s = C.t_summary([50.0, 52.0, 57.0])
    # mean 53, deviations (-3, -1, 4): sum of squares 26, variance 26 / 2 = 13
    assert s.n == 3 and s.mean == pytest.approx(53.0)
    assert s.std == pytest.approx(math.sqrt(13.0))
    half = T975_2 * math.sqrt(13.0) / math.sqrt(3.0)  # 8.956689
    assert s.ci == pytest.approx((53.0 - half, 53.0 + half), abs=1e-5)
    assert half == pytest.approx(8.95669, abs=1e-5)


def test_t_summary_single_run_has_no_spread() -> None:
    s = C.t_summary([4.2])
    assert (s.mean, s.n, s.std, s.ci) == (4.2, 1, None, None)
    assert C.fmt_summary(s, 2) == "4.20 (n=1)"
    assert C.fmt_summary(C.t_summary([1.0, 2.0, 3.0]), 2) == "2.00 ± 1.00 [-0.48, 4.48]"


def test_paired_t_by_hand() -> None:
    # d = (1, 2, 3): mean 2, sd 1, t = 2 / (1 / sqrt 3) = sqrt 12 on 2 df.  With 2 df the t CDF is
    # 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(6/7).
    mean, ci, p = C.paired_t([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert mean == pytest.approx(2.0)
    half = T975_2 / math.sqrt(3.0)
    assert ci == pytest.approx((2.0 - half, 2.0 + half), abs=1e-5)
    assert p == pytest.approx(1.0 - math.sqrt(6.0 / 7.0), rel=1e-9)  # 0.07418
    with pytest.raises(ValueError):
        C.paired_t([1.0], [2.0])


def test_paired_t_without_spread() -> None:
    assert C.paired_t([2.0, 3.0], [1.0, 2.0]) == (1.0, (1.0, 1.0), 0.0)
    assert C.paired_t([2.0, 3.0], [2.0, 3.0]) == (0.0, (0.0, 0.0), 1.0)


def test_welch_t_by_hand() -> None:
    # var 1 and 4 on 3 runs each: se^2 = 1/3 + 4/3 = 5/3; Welch-Satterthwaite df
    # (5/3)^2 / ((1/3)^2 / 2 + (4/3)^2 / 2) = 50/17
    from scipy import stats

    mean, ci, p = C.welch_t([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert mean == pytest.approx(-2.0)
    half = stats.t.ppf(0.975, 50 / 17) * math.sqrt(5 / 3)
    assert ci == pytest.approx((-2.0 - half, -2.0 + half))
    assert p == pytest.approx(2 * stats.t.sf(2 / math.sqrt(5 / 3), 50 / 17))
    assert p == pytest.approx(stats.ttest_ind([1, 2, 3], [2, 4, 6], equal_var=False).pvalue)


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> monotone 0.03, 0.06, 0.06
    assert C.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert C.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert C.holm([]) == []


# --- grouping and the reference arm -------------------------------------------------------------

def test_runs_group_by_seed_only(tmp_path: Path) -> None:
    a = [C.load_run(make_run(tmp_path, f"arm_seed{s}", s, _metrics(50.0, 10.0, 20.0))) for s in (1, 2)]
    b = C.load_run(make_run(tmp_path, "arm_lr", 1, _metrics(50.0, 10.0, 20.0), optim__lr=0.1))
    groups = C.group_runs(a + [b])
    assert [[r.name for r in g] for g in groups] == [["arm_seed1", "arm_seed2"], ["arm_lr"]]
    assert C.arm_labels(groups) == ["arm", "arm_lr"]
    assert C.config_differences(groups) == ["optim.lr"]


def test_a_seed_grid_varies_model_and_data_seeds(tmp_path: Path) -> None:
    """The recipes' --seeds sets train.seed and data.seed: such runs are one arm."""
    runs = [C.load_run(make_run(tmp_path, f"tiny_kl_s{s}", s, _metrics(50.0, 10.0, 20.0), data__seed=s))
            for s in (1, 2, 3)]
    groups = C.group_runs(runs)
    assert len(groups) == 1 and C.arm_labels(groups) == ["tiny_kl"]


def test_reference_choice() -> None:
    assert C.choose_reference(["tiny_sigreg", "tiny_kl", "tiny_none"]) == "tiny_kl"
    # a "kl" name component beats a "kl" inside another word
    assert C.choose_reference(["sigreg_klein", "vae-kl"]) == "vae-kl"
    assert C.choose_reference(["sigreg_klein", "none"]) == "sigreg_klein"
    assert C.choose_reference(["sigreg", "none"]) == "sigreg"
    assert C.choose_reference(["tiny_sigreg", "tiny_kl"], "tiny_sigreg") == "tiny_sigreg"
    assert C.choose_reference(["tiny_sigreg", "tiny_kl"], "sigreg") == "tiny_sigreg"
    with pytest.raises(C.UnknownArmError, match="matches no arm"):
        C.choose_reference(["tiny_sigreg", "tiny_kl"], "vq")
    with pytest.raises(C.UnknownArmError, match="ambiguous"):
        C.choose_reference(["tiny_sigreg", "tiny_kl"], "tiny")


def test_metric_keys_chance_and_baselines(tmp_path: Path) -> None:
    old = C.load_run(make_run(tmp_path, "old", 1, _metrics(50.0, 10.0, 20.0, lsd_key="lsd_db", chance=False)))
    assert old.values["mel-LSD dB"] == 10.0  # pre-rename key still read
    m = _metrics(50.0, 10.0, 20.0)
    m["reconstruction"]["lsd_db"] = 99.0  # the new key wins over the old one
    m["probes"]["speaker"] = {"accuracy": 0.5, "chance": 0.25}
    new = C.load_run(make_run(tmp_path, "new", 1, m))
    assert new.values["mel-LSD dB"] == 10.0 and new.values["phone PER %"] == pytest.approx(50.0)
    assert new.chance["phone PER %"] == pytest.approx(97.0)  # top-level "chance", scaled to %
    assert new.chance["ABX within %"] == 50.0
    assert new.chance["PNMI"] == 0.05  # pnmi.pnmi_chance
    assert new.chance["speaker acc %"] == pytest.approx(25.0)  # probes.speaker.chance
    assert new.chance["Epps-Pulley"] == 1.05  # its null floor
    assert "phone PER %" not in old.chance
    assert new.baselines == {"fbank": {"phone PER %": pytest.approx(40.0), "ABX within %": 9.0},
                             "mean_spectrum": {"mel-LSD dB": 12.5}}


# --- the report ---------------------------------------------------------------------------------

def test_compare_report_over_seeds(three_arms: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = C.compare_experiments(three_arms, out)
    assert result["reference"] == "tiny_kl"
    arms = {a["name"]: a for a in result["arms"]}
    assert {k: (a["n"], a["seeds"]) for k, a in arms.items()} == {
        "tiny_sigreg": (3, [1, 2, 3]), "tiny_kl": (3, [1, 2, 3]), "tiny_none": (1, [1])}
    kl = arms["tiny_kl"]["summary"]["phone PER %"]
    half = T975_2 * math.sqrt(13.0) / math.sqrt(3.0)
    assert kl["mean"] == pytest.approx(53.0) and kl["std"] == pytest.approx(math.sqrt(13.0))
    assert kl["ci95"] == pytest.approx([53.0 - half, 53.0 + half], abs=1e-5)
    none = arms["tiny_none"]["summary"]["phone PER %"]
    assert (none["n"], none["std"], none["ci95"]) == (1, None, None)

    diffs = {(d["arm"], d["metric"]): d for d in result["differences"]}
    per = diffs["tiny_sigreg", "phone PER %"]
    assert per["test"] == "paired t over seeds" and per["n"] == 3
    assert per["mean"] == pytest.approx(2.0)
    assert per["ci95"] == pytest.approx([2.0 - T975_2 / math.sqrt(3), 2.0 + T975_2 / math.sqrt(3)], abs=1e-5)
    assert per["p"] == pytest.approx(1.0 - math.sqrt(6.0 / 7.0))
    assert diffs["tiny_none", "phone PER %"]["test"] == "n=1: no test"
    assert diffs["tiny_none", "phone PER %"]["p"] is None
    assert diffs["tiny_none", "phone PER %"]["mean"] == pytest.approx(60.0 - 53.0)
    # ABX within: sigreg - kl = (19 - 31, 18 - 32, 17 - 33) = (-12, -14, -16): mean -14, sd 2
    abx = diffs["tiny_sigreg", "ABX within %"]
    assert abx["mean"] == pytest.approx(-14.0)
    assert abx["p"] == pytest.approx(1.0 - math.sqrt(147.0 / 149.0))  # t^2 = 147 on 2 df
    # Holm over the primary metrics of the sigreg arm
    family = [d for d in result["differences"] if d["arm"] == "tiny_sigreg"
              and C.METRICS[d["metric"]].primary and d["p"] is not None]
    assert [d["p_holm"] for d in family] == pytest.approx(C.holm([d["p"] for d in family]))
    assert abx["p_holm"] < 0.05 and abx["significant"] and abx["verdict"] == "tiny_sigreg better *"
    assert not per["significant"] and per["verdict"] == "not significant"
    # EP standardised: closer to 0 is better, compared as |value|: 0.5 - 2.0 on every seed
    ep = diffs["tiny_sigreg", "EP standardised"]
    assert ep["mean"] == pytest.approx(-1.5) and ep["p"] == 0.0 and ep["verdict"] == "tiny_sigreg better *"

    text = (out / "compare.md").read_text(encoding="utf-8")
    assert check_report(text) == []
    assert "| phone PER % | ↓ | 97.00 | fbank 40.00 |" in text
    assert f"53.00 ± 3.61 [{53 - half:.2f}, {53 + half:.2f}]" in text
    assert "60.00 (n=1)" in text
    cells = [c for line in text.splitlines() if line.startswith("|") for c in line.split("|")]
    assert all("±" not in c for c in cells if "(n=1)" in c)  # one run: no spread, no interval
    assert "| PNMI | ↑ | 0.050 |" in text and "| EP standardised | → 0 |" in text
    assert "mean_spectrum 12.50" in text
    # a metric of some arms only: its row says where it was not measured
    assert "| KL nats/frame | info | not reported | not reported | not measured | " \
           "13.00 ± 1.00 [10.52, 15.48] | not measured |" in text
    assert ("tiny_sigreg", "KL nats/frame") not in diffs
    assert "### tiny_sigreg − tiny_kl" in text and "### tiny_none − tiny_kl" in text
    assert "n=1: no test" in text and "paired t over seeds" in text and "Holm" in text
    assert "| arm | losses.regularizer | model.bottleneck.kind |" in text  # what differs between arms
    for name in ("compare.md", "compare.json", "compare.csv", "runs.csv", "compare.png",
                 "recon_vs_discrimination.png"):
        assert (out / name).stat().st_size > 100, name
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries

    rows = {r["group"]: r for r in csv.DictReader(open(out / "compare.csv", encoding="utf-8"))}
    assert rows["tiny_none"]["phone PER % std"] == "" and rows["tiny_none"]["phone PER % n"] == "1"
    assert float(rows["tiny_kl"]["phone PER % ci_high"]) == pytest.approx(53.0 + half, abs=1e-5)
    runs = list(csv.DictReader(open(out / "runs.csv", encoding="utf-8")))
    assert len(runs) == 7 and {r["seed"] for r in runs} == {"1", "2", "3"}


def test_welch_when_seeds_differ(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, f"kl_seed{s}", s, _metrics(v, 10.0, 20.0), losses__regularizer="kl")
            for s, v in ((1, 1.0), (2, 2.0), (3, 3.0))]
    runs += [make_run(tmp_path, f"sigreg_seed{s}", s, _metrics(v, 10.0, 20.0), losses__regularizer="sigreg")
             for s, v in ((7, 2.0), (8, 4.0), (9, 6.0))]
    result = C.compare_experiments(runs, tmp_path / "cmp")
    d = next(d for d in result["differences"] if d["metric"] == "phone PER %")
    assert d["test"].startswith("Welch") and d["n"] == 6
    assert d["mean"] == pytest.approx(2.0)
    assert d["p"] == pytest.approx(C.welch_t([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])[2])


def test_recon_vs_discrimination_one_point_per_run(three_arms: list[Path], tmp_path: Path) -> None:
    runs = [C.load_run(d) for d in three_arms]
    groups = C.group_runs(runs)
    arms = dict(zip(C.arm_labels(groups), groups))
    fig, points = C.recon_vs_discrimination_figure(arms)
    try:
        assert [ax.get_ylabel() for ax in fig.axes] == ["phone PER % ↓", "ABX within % ↓"]
        for ax in fig.axes:
            assert ax.get_xlabel() == "mel-LSD dB ↓"
            per_arm = {c.get_label(): c.get_offsets() for c in ax.collections}
            assert {k: len(v) for k, v in per_arm.items()} == {"tiny_sigreg": 3, "tiny_kl": 3, "tiny_none": 1}
            colours = {tuple(c.get_facecolor()[0]) for c in ax.collections}
            assert len(colours) == 3  # one colour per arm
        kl = {c.get_label(): c.get_offsets() for c in fig.axes[0].collections}["tiny_kl"]
        assert sorted(kl[:, 0]) == pytest.approx([11.1, 11.2, 11.3])
        assert sorted(kl[:, 1]) == pytest.approx([50.0, 52.0, 57.0])
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    assert sum(len(p) for p in points["phone PER %"].values()) == 7
    out = tmp_path / "cmp"
    result = C.compare_experiments(three_arms, out)
    assert sum(len(p) for p in result["recon_vs_discrimination"]["ABX within %"].values()) == 7
    assert "![reconstruction against discrimination, one point per run](recon_vs_discrimination.png)" in \
        (out / "compare.md").read_text(encoding="utf-8")


def test_cli_reference_option(three_arms: list[Path], tmp_path: Path) -> None:
    from speechae.cli import main

    out = tmp_path / "cmp"
    args = ["compare", *map(str, three_arms), "--out-dir", str(out)]
    res = CliRunner().invoke(main, args + ["--reference", "sigreg"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "reference tiny_sigreg" in res.output
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert data["reference"] == "tiny_sigreg"
    assert {d["arm"] for d in data["differences"]} == {"tiny_kl", "tiny_none"}
    res = CliRunner().invoke(main, args + ["--reference", "vq"])
    assert res.exit_code == 2 and "matches no arm" in res.output


def test_intervals_of_bounded_metrics_stay_in_range() -> None:
    """Accuracies near 100 % over 3 seeds: the t-interval is clipped to [0, 100]."""
    runs = [C.Run(f"a_s{s}", Path("."), {"train.seed": s}, {"speaker acc %": v, "phone PER %": v})
            for s, v in ((1, 100.0), (2, 99.0), (3, 88.0))]
    stats = C.summarize(runs)
    assert stats["speaker acc %"].ci[1] == 100.0 and stats["speaker acc %"].ci[0] < 90.0
    assert stats["phone PER %"].ci[1] > 100.0  # an error rate is not clipped (WER can exceed 100 %)


def test_metric_paths_reach_flat_keys_with_dots() -> None:
    """The waveform scores are flat keys (``waveform.stoi``) inside ``listening.system``."""
    from speechae.eval.compare import METRICS, metric_value
    from speechae.eval.report import get_path

    m = {"listening": {"system": {"waveform.stoi": 0.7, "judges.asr_wer": 0.25}}, "abx": {"within_error_pct": 3.0}}
    assert get_path(m, "listening.system.waveform.stoi") == 0.7 and get_path(m, "abx.within_error_pct") == 3.0
    assert get_path(m, "listening.system.waveform.pesq_wb") is None and get_path(m, "abx.x") is None
    assert metric_value(m, METRICS["STOI"]) == 0.7 and metric_value(m, METRICS["ASR WER %"]) == 25.0
