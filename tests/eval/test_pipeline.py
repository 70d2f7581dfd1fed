"""End to end: ``speechae evaluate`` on a checkpoint of a tiny model, ``speechae compare``,
and the Hugging Face baseline loader on a tiny randomly initialised wav2vec 2.0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from speechae.eval.report import check_report

SECTIONS = ("reconstruction", "probes", "abx", "pnmi", "geometry", "resources", "baselines")


def _make_experiment(root: Path, ds, seed: int = 7, fraction: float = 1.0) -> Path:
    """A trainer-format experiment dir: config.yaml, one checkpoint, a short metrics.jsonl."""
    from speechae.models import build_model
    from speechae.train.checkpoint import checkpoint_path, save_checkpoint
    from speechae.train.config import experiment_config_from_dict
    from speechae.train.testing import small_experiment

    cfg = experiment_config_from_dict(small_experiment(
        ds.cuts("train"), ds.cuts("dev"), ds.lang, train={"seed": seed}, data={"train_fraction": fraction})).to_dict()
    exp = root / f"exp_f{fraction}_seed{seed}"
    (exp / "log").mkdir(parents=True)
    (exp / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    torch.manual_seed(seed)
    model = build_model(cfg["model"])
    for step in (3, 6):  # two checkpoints with running averages: the "window" average applies
        state = {k: v + 1e-3 * step if v.is_floating_point() else v for k, v in model.state_dict().items()}
        save_checkpoint(checkpoint_path(exp / "checkpoints", step),
                        {"config": cfg, "step": step, "model": model.state_dict(), "model_avg": state,
                         "avg_step": step})
    # one reconstruction spike (step 30) and one regularizer-only spike (step 20: loss/total only)
    recs = [{"step": s, "loss/recon": 5.0 / s + (20.0 if s == 30 else 0.0),
             "loss/total": 5.0 / s + (20.0 if s in (20, 30) else 0.0), "train/audio_s_per_s": 50.0,
             "train/steps_per_s": 2.0, "train/peak_memory_mb": 300.0 + s, "train/nonfinite_steps": 0.0}
            for s in range(1, 41)]
    recs.append({"step": 40, "split": "valid", "valid/loss/total": 1.0})
    (exp / "log" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return exp


def _tiny_hf_model(path: Path) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                         conv_dim=(16, 16, 16), conv_stride=(5, 8, 8), conv_kernel=(10, 8, 8),
                         num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    Wav2Vec2Model(cfg).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def evaluated(tiny_dataset, tmp_path_factory):
    """One experiment evaluated through the CLI with every baseline kind."""
    from speechae.cli import main

    root = tmp_path_factory.mktemp("eval")
    exp = _make_experiment(root, tiny_dataset)
    hf = _tiny_hf_model(root / "w2v_tiny")
    torch.set_num_threads(1)
    result = CliRunner().invoke(main, [
        "evaluate", str(exp), "--baselines", f"fbank,mfcc,random_init,mean_spectrum,hf:{hf}",
        "--probe-epochs", "2", "--probe-seeds", "2", "--token-probe-epochs", "1", "--kmeans-k", "8",
        "--abx-max-cells", "50",
        "--test-cuts", str(tiny_dataset.cuts("test"))], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return exp, root


def test_metrics_json_has_every_section(evaluated) -> None:
    exp, _ = evaluated
    m = json.loads((exp / "eval" / "metrics.json").read_text(encoding="utf-8"))
    for s in SECTIONS:
        assert m.get(s), f"section {s} missing or empty"
    assert m["checkpoint_step"] == 6 and m["weights"] == "window (3, 6]"
    rec = m["reconstruction"]
    assert rec["mel_lsd_db"] > 0 and rec["mcd_db"] > 0 and "utterance_mean" in rec["reference"]
    assert "lsd_db" not in rec
    phone = m["probes"]["phone"]
    assert phone["seeds"] == 2 and phone["per_std"] >= 0
    assert phone["per"] == pytest.approx(np.mean(phone["per_by_seed"]))
    assert 0 <= m["probes"]["token"]["cer"]
    assert 0 <= m["probes"]["speaker"]["accuracy"] <= 1
    assert 0 <= m["abx"]["within_error_pct"] <= 100
    assert 0 <= m["pnmi"]["pnmi"] <= 1
    g = m["geometry"]
    assert 1 <= g["effective_rank"] <= g["dim"] and g["ep_floor"] == pytest.approx(1.05, abs=0.01)
    assert m["resources"]["params"] > 0 and m["resources"]["gflops_per_audio_s"] > 0
    train = m["resources"]["training"]
    assert train["loss_spikes"] == 1 and train["peak_memory_mb"] == 340.0 and train["nonfinite_steps"] == 0
    assert train["loss_spike_key"] == "loss/recon" and train["loss_spikes_by_term"] == {"recon": 1, "total": 2}
    base = m["baselines"]
    assert set(base) == {"fbank", "mfcc", "random_init", "mean_spectrum", "hf_w2v_tiny"}
    assert "reconstruction" in base["random_init"] and "reconstruction" not in base["fbank"]
    assert set(base["mean_spectrum"]) == {"reconstruction"}
    assert base["hf_w2v_tiny"]["geometry"]["frame_rate_hz"] == pytest.approx(50.0)
    assert base["hf_w2v_tiny"]["resources"]["params"] > 0
    # probes count CTC-infeasible utterances; PNMI on the common grid with its chance level
    assert m["probes"]["phone"]["infeasible"] >= 0 and m["probes"]["token"]["infeasible"] >= 0
    for sys_ in (m, *(b for b in base.values() if "pnmi" in b)):
        assert sys_["pnmi"]["grid_hz"] == 25.0 and 0 <= sys_["pnmi"]["pnmi_chance"] <= 1
    assert m["abx"]["context_ms"] == 40.0 and m["abx"]["distance"] == "angular"
    assert m["geometry"]["measured_on"] == "latent" and "ep_std" in m["geometry"]
    # the default caps (1 h of training audio; test and dev whole) are recorded
    samp = m["sampling"]
    assert set(samp) == {"train", "test", "dev", "seed"} and samp["seed"] == 0
    assert samp["train"]["max_hours"] == 1.0 and not samp["train"]["capped"]
    assert samp["test"]["max_hours"] is None and not samp["test"]["capped"]
    assert samp["train"]["num_utts"] == samp["train"]["num_utts_total"] == m["num_train_utts"]
    assert m["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_chance_levels_in_metrics_json(evaluated) -> None:
    """Top-level ``chance``: metric key path -> chance value of the evaluated system."""
    exp, _ = evaluated
    m = json.loads((exp / "eval" / "metrics.json").read_text(encoding="utf-8"))
    ch = m["chance"]
    assert ch["abx.within_error_pct"] == 50.0
    assert ("abx.across_error_pct" in ch) == ("across_error_pct" in m["abx"])  # one test speaker: no across
    assert ch["probes.speaker.accuracy"] == m["probes"]["speaker"]["chance"]
    assert ch["pnmi.pnmi"] == m["pnmi"]["pnmi_chance"] and ch["geometry.ep_std"] == 0.0
    assert ch["geometry.ep"] == m["geometry"]["ep_null_mean"]
    assert ch["reconstruction.mel_lsd_db"] == m["reconstruction"]["reference"]["utterance_mean"]["mel_lsd_db"]


def test_report_has_no_empty_cells(evaluated) -> None:
    exp, _ = evaluated
    text = (exp / "eval" / "report.md").read_text(encoding="utf-8")
    assert check_report(text) == []
    for title in ("Reconstruction", "Probes", "ABX", "PNMI" if False else "k-means", "Geometry", "Resources"):
        assert f"## {title}" in text
    for header in ("mel-LSD (dB) ↓", "phone PER % ↓", "speaker acc % ↑", "within-speaker % ↓", "PNMI ↑",
                   "EP vs null (z) → 0"):
        assert header in text
    assert "Chance / reference level: " in text and "within-speaker % 50.00" in text
    for png in ("spectrograms.png", "covariance_spectrum.png", "pca_phones.png", "summary.png", "training_loss.png"):
        assert (exp / "eval" / png).stat().st_size > 1000
        assert f"]({png})" in text


def test_check_report_flags_placeholders() -> None:
    assert check_report("| a | b |\n|---|---|\n| x | nan |\n") != []
    assert check_report("| a | b |\n|---|---|\n| x |  |\n") != []
    assert check_report("| a | b |\n|---|---|\n| x | 1.0 |\n") == []


def test_compare_pools_seeds_and_plots_data_efficiency(evaluated, tmp_path) -> None:
    from speechae.cli import main

    exp, _ = evaluated
    runs = []
    for seed, fraction, shift in ((7, 1.0, 0.0), (8, 1.0, 0.1), (7, 0.5, 0.3)):
        d = tmp_path / f"arm_f{fraction}_seed{seed}"
        shutil.copytree(exp, d)
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        cfg["train"]["seed"], cfg["data"]["train_fraction"] = seed, fraction
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        m = json.loads((d / "eval" / "metrics.json").read_text())
        m["probes"]["phone"]["per"] += shift
        (d / "eval" / "metrics.json").write_text(json.dumps(m))
        runs.append(str(d))
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["compare", *runs, "--out-dir", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = (out / "compare.md").read_text()
    assert check_report(text) == []
    assert "±" in text and "data.train_fraction" in text
    per = {r["group"]: r for r in __import__("csv").DictReader(open(out / "compare.csv"))}
    assert len(per) == 2
    pooled = [r for r in per.values() if r["n"] == "2"][0]
    base = json.loads((exp / "eval" / "metrics.json").read_text())["probes"]["phone"]["per"] * 100
    assert float(pooled["phone PER % mean"]) == pytest.approx(base + 5.0)
    assert float(pooled["phone PER % std"]) == pytest.approx(np.std([base, base + 10.0], ddof=1))
    for png in ("compare.png", "data_efficiency.png"):
        assert (out / png).stat().st_size > 1000


def test_window_average_weights(evaluated) -> None:
    from speechae.eval.pipeline import load_experiment_model

    exp, _ = evaluated
    # running averages A_3 = w + 3e-3, A_6 = w + 6e-3 -> mean over (3, 6] = (6 A_6 - 3 A_3) / 3 = w + 9e-3
    window, _, info = load_experiment_model(exp, "window")
    raw, _, _ = load_experiment_model(exp, "raw")
    running, _, info_r = load_experiment_model(exp, "running")
    name, w = next((k, v) for k, v in raw.state_dict().items() if v.is_floating_point())
    assert torch.allclose(window.state_dict()[name], w + 9e-3, atol=1e-5)
    assert torch.allclose(running.state_dict()[name], w + 6e-3, atol=1e-5)
    assert info["weights"] == "window (3, 6]" and info_r["weights"].startswith("running")


def test_never_updated_average_falls_back_to_raw_weights(tiny_dataset, tmp_path) -> None:
    """A run shorter than train.average_every leaves the averaged model at the initial weights
    (avg_step 0).  Pre-fix, evaluate scored those initial weights (a 30-step Bengali run read
    the random-init mel-LSD 29.13 dB instead of 17.51); now it scores the raw weights and says so."""
    from speechae.eval.pipeline import load_experiment_model
    from speechae.models import build_model
    from speechae.train.checkpoint import checkpoint_path, save_checkpoint

    exp = _make_experiment(tmp_path, tiny_dataset)
    cfg = yaml.safe_load((exp / "config.yaml").read_text(encoding="utf-8"))
    torch.manual_seed(0)
    init = build_model(cfg["model"]).state_dict()
    trained = {k: v + 0.5 if v.is_floating_point() else v for k, v in init.items()}
    for p in (exp / "checkpoints").iterdir():
        p.unlink()
    for step in (3, 6):
        save_checkpoint(checkpoint_path(exp / "checkpoints", step),
                        {"config": cfg, "step": step, "model": trained, "model_avg": init, "avg_step": 0})
    name = next(k for k, v in init.items() if v.is_floating_point())
    for weights in ("window", "running"):
        model, _, info = load_experiment_model(exp, weights)
        assert torch.allclose(model.state_dict()[name], trained[name])
        assert info["weights"] == "raw" and "never updated" in info["weights_note"]
    from speechae.eval.report import build_report

    text = build_report({"system": "x", "weights_note": info["weights_note"]}, {})
    assert "never updated" in text


def test_hf_loader_on_tiny_saved_model(tiny_dataset, tmp_path) -> None:
    from speechae.data.datamodule import Labels, load_cuts
    from speechae.eval.encoders import HFEncoder, load_utterances
    from speechae.eval.pipeline import make_baseline

    path = _tiny_hf_model(tmp_path / "w2v")
    enc = make_baseline(f"hf:{path}@1", None)
    assert isinstance(enc, HFEncoder) and enc.frame_rate == pytest.approx(50.0)
    utts = load_utterances(load_cuts(tiny_dataset.cuts("test")), Labels(tiny_dataset.lang))[:2]
    out = enc.encode(utts)
    for u, f in zip(utts, out.feats):
        assert f.shape[1] == 16 and np.isfinite(f).all()
        assert abs(len(f) - len(u.log_mel) / 2) <= 2  # 50 Hz vs 100 Hz fbank


def test_stack_probes_and_geometry_of_gaussian_model(tiny_dataset) -> None:
    from speechae.eval.encoders import ModelEncoder
    from speechae.eval.pipeline import load_eval_data
    from speechae.eval.probes import ProbeConfig
    from speechae.eval.suite import EvalConfig, score_system
    from speechae.models import build_model
    from speechae.train.testing import SMALL_MODEL

    cfg = EvalConfig(phone_probe=ProbeConfig(epochs=1), token_probe=ProbeConfig(epochs=1), stack_probe_epochs=1,
                     kmeans_k=4, abx_max_cells=10, stacks=True)
    data = load_eval_data(tiny_dataset.cuts("train"), tiny_dataset.cuts("test"), tiny_dataset.cuts("dev"),
                          tiny_dataset.lang, cfg)
    torch.manual_seed(0)
    model = build_model({**SMALL_MODEL, "bottleneck": {"kind": "gaussian", "latent_dim": 8}})
    res = score_system(ModelEncoder(model, "gauss", stacks=True), data, cfg)
    stacks = res.sections["probes"]["phone_by_stack"]
    assert [v["frame_rate"] for v in stacks.values()] == [50.0, 25.0, 12.5, 6.25, 12.5, 25.0]
    assert all(v["per"] >= 0 and v["infeasible"] >= 0 for v in stacks.values())
    g = res.sections["geometry"]
    assert len(g["kl_per_dim"]) == 8 and g["kl_total_nats"] == pytest.approx(sum(g["kl_per_dim"]), rel=1e-5)
    assert g["measured_on"] == "posterior samples" and 1 <= g["effective_rank_means"] <= 8


def test_baselines_are_scored_once_per_grid(evaluated, tiny_dataset, monkeypatch) -> None:
    """A second arm on the same data reuses the baseline scores (the arms of a grid share
    them); other settings miss the cache."""
    from speechae.eval import pipeline
    from speechae.eval.suite import EvalConfig

    exp, root = evaluated
    first = json.loads((exp / "eval" / "metrics.json").read_text(encoding="utf-8"))
    cached = sorted(p.name.split("-")[0] for p in (root / ".eval_cache").glob("*.json")
                    if not p.name.startswith("listening-"))
    assert {"fbank", "mfcc", "random_init"} <= set(cached) and len(cached) == 4, cached  # + the hf model
    # the listening references (originals, copy-synthesis) are scored once per test set too
    assert len(list((root / ".eval_cache").glob("listening-*.json"))) == 1
    calls = []
    real = pipeline.score_system
    monkeypatch.setattr(pipeline, "score_system", lambda s, d, c: calls.append(s.name) or real(s, d, c))
    other = _make_experiment(root, tiny_dataset, seed=8)
    cfg = EvalConfig(kmeans_k=8, abx_max_cells=50)
    cfg.phone_probe.epochs = cfg.token_probe.epochs = 1
    m = pipeline.evaluate_experiment(other, test_cuts=tiny_dataset.cuts("test"), baselines=("fbank", "mfcc"),
                                     cfg=cfg)
    assert calls == [other.name, "fbank", "mfcc"]  # new settings: scored ...
    calls.clear()
    again = pipeline.evaluate_experiment(other, test_cuts=tiny_dataset.cuts("test"), baselines=("fbank", "mfcc"),
                                         cfg=cfg)
    assert calls == [other.name]  # ... once
    assert again["baselines"]["fbank"] == m["baselines"]["fbank"]
    assert first["baselines"]["fbank"]["abx"] is not None


def test_evaluate_from_outside_the_recipe_directory(tiny_dataset, tmp_path, monkeypatch) -> None:
    """Recipe manifests hold recipe-relative feature paths; evaluate works from any directory."""
    import os

    from lhotse import CutSet

    from speechae.eval import pipeline
    from speechae.eval.suite import EvalConfig

    recipe = tmp_path / "recipe"
    (recipe / "data").mkdir(parents=True)
    for split in ("train", "dev", "test"):
        cuts = CutSet.from_file(tiny_dataset.cuts(split))
        rel = []
        for c in cuts:
            c.features.storage_path = os.path.relpath(c.features.storage_path, recipe)
            rel.append(c)
        CutSet.from_cuts(rel).to_file(recipe / "data" / f"x_cuts_{split}.jsonl.gz")
    os.symlink(tiny_dataset.lang, recipe / "data" / "lang")
    exp = _make_experiment(recipe / "exp", tiny_dataset)
    cfg_path = exp / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    cfg["data"].update(train_cuts="data/x_cuts_train.jsonl.gz", dev_cuts="data/x_cuts_dev.jsonl.gz",
                       lang_dir="data/lang")
    cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ecfg = EvalConfig(kmeans_k=4, abx_max_cells=10)
    ecfg.phone_probe.epochs = ecfg.token_probe.epochs = 1
    m = pipeline.evaluate_experiment(Path(os.path.relpath(exp, elsewhere)), baselines=(), cfg=ecfg,
                                     cache_dir=None)
    assert m["num_test_utts"] > 0 and m["num_dev_utts"] > 0 and Path.cwd() == elsewhere
    assert (exp / "eval" / "metrics.json").is_file()
