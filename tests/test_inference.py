"""speechae.inference (the ``speechae.SpeechAE`` wrapper) and ``speechae encode / decode / resynth``.

The experiment is a trainer-format directory (config + two checkpoints with running averages) of
the small test model (:data:`speechae.train.testing.SMALL_MODEL`), built without training; the
audio is synthesised (tones + noise) at several rates.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from click.testing import CliRunner

from speechae.inference import SpeechAE, output_samples, to_mono_16k

SR = 16000


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Small tensors: one thread (tests/conftest.py)."""


def make_experiment(exp: Path, model_cfg: dict, seed: int = 3) -> Path:
    """``exp``: config.yaml and checkpoints at steps 3 and 6 with running averages (so the
    'window' weights differ from the raw ones)."""
    from speechae.models import build_model
    from speechae.train.checkpoint import checkpoint_path, save_checkpoint
    from speechae.train.config import experiment_config_from_dict
    from speechae.train.testing import small_experiment

    cfg = experiment_config_from_dict(small_experiment("train.jsonl.gz", "dev.jsonl.gz", "lang",
                                                       model=model_cfg)).to_dict()
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    torch.manual_seed(seed)
    model = build_model(cfg["model"])
    for step in (3, 6):
        avg = {k: v + 1e-2 * step if v.is_floating_point() else v for k, v in model.state_dict().items()}
        save_checkpoint(checkpoint_path(exp / "checkpoints", step),
                        {"config": cfg, "step": step, "model": model.state_dict(), "model_avg": avg, "avg_step": step})
    return exp


def tone(seconds: float, sr: int, freq: float = 440.0, seed: int = 0, noise: float = 0.01) -> np.ndarray:
    """A harmonic tone (3 partials) plus white noise of std ``noise`` (float32, peak ~0.5)."""
    t = np.arange(int(round(seconds * sr))) / sr
    rng = np.random.default_rng(seed)
    x = sum(0.3 / k * np.sin(2 * np.pi * freq * k * t) for k in (1, 2, 3)) + noise * rng.standard_normal(t.size)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def exp_dir(tmp_path_factory) -> Path:
    """<recipe>/exp/run with the small model (gaussian bottleneck, 8 latent channels)."""
    from speechae.train.testing import SMALL_MODEL

    cfg = dict(SMALL_MODEL, bottleneck={"kind": "gaussian", "latent_dim": 8})
    return make_experiment(tmp_path_factory.mktemp("recipe") / "exp" / "run", cfg)


@pytest.fixture(scope="module")
def ae(exp_dir) -> SpeechAE:
    return SpeechAE.from_exp_dir(exp_dir, device="cpu")


# ------------------------------------------------------------------------------------ API


def test_lazy_export_and_model_weights_are_evaluates(exp_dir, ae) -> None:
    import speechae
    from speechae.eval.pipeline import load_experiment_model

    assert speechae.SpeechAE is SpeechAE
    model, _, info = load_experiment_model(exp_dir, weights="window")
    ref = model.state_dict()
    assert info["weights"].startswith("window")
    for k, v in ae.model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    raw = SpeechAE.from_exp_dir(exp_dir, weights="raw", device="cpu")
    assert not torch.equal(raw.model.decoder.in_proj.weight, ae.model.decoder.in_proj.weight)
    assert ae.vocoder_name == "griffin-lim" and ae.frame_rate == 25.0 and ae.latent_dim == 8


def test_features_are_stage_2_features(ae) -> None:
    from speechae.data.features import make_extractor

    x = tone(1.03, SR)
    f = ae.features(x, SR)
    ref = make_extractor(80).extract(x, SR)
    assert f.shape == (round(x.size / 160), 80) == ref.shape
    np.testing.assert_array_equal(f.numpy(), ref)


def test_resampling_matches_native_16k(ae) -> None:
    """The same clean tone generated at 22.05 / 44.1 / 8 kHz gives the 16 kHz tone's features
    where it has energy (bins within 6 nats of the peak: measured error ~0.002), with the same
    number of frames.  (White noise would not match: its density per Hz depends on the rate.)"""
    ref = ae.features(tone(1.0, SR, noise=0.0), SR).numpy()[5:-5]
    loud = ref > ref.max() - 6.0
    assert loud.sum() > 500
    for sr in (22050, 44100, 8000):
        f = ae.features(tone(1.0, sr, noise=0.0), sr).numpy()
        assert f.shape[0] == ref.shape[0] + 10
        err = np.abs(f[5:-5] - ref)[loud]
        assert err.max() < 0.01, (sr, err.max())
    assert to_mono_16k(tone(1.0, 22050), 22050).size == 16000


def test_encode_shapes_and_stereo_uses_channel_0(ae) -> None:
    x = tone(0.97, 22050)
    z = ae.encode(x, 22050)
    t = ae.features(x, 22050).shape[0]
    assert z.shape == (math.ceil(t / ae.frame_ratio), 8)
    stereo = np.stack([x, np.random.default_rng(1).standard_normal(x.size).astype(np.float32)])
    torch.testing.assert_close(ae.encode(torch.from_numpy(stereo), 22050), z, rtol=0, atol=0)


def test_encode_batch_equals_single_encodes(ae) -> None:
    """Padding a batch (lengths 0.09 s .. 1.6 s, mixed rates) changes no valid latent frame."""
    wavs = [tone(1.6, SR, 300), tone(0.09, SR, 500, seed=1), tone(0.71, 22050, 200, seed=2), tone(1.1, 8000, 250)]
    rates = [SR, SR, 22050, 8000]
    batch = ae.encode_batch(wavs, rates)
    for w, r, zb in zip(wavs, rates, batch):
        z = ae.encode(w, r)
        assert zb.shape == z.shape
        torch.testing.assert_close(zb, z, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="2 waveforms but 3 sample rates"):
        ae.encode_batch(wavs[:2], [SR] * 3)


def test_decode_is_the_models_reconstruction(ae) -> None:
    """decode(encode(x), T) equals the eval-mode forward's reconstruction; frames default to
    T_z * frame_ratio; a batch decodes like its items."""
    x = tone(0.83, SR)
    feats = ae.features(x, SR)
    z = ae.encode(x, SR)
    mel = ae.decode(z, num_frames=feats.shape[0])
    with torch.no_grad():
        out = ae.model(feats[None], torch.tensor([feats.shape[0]]))
    torch.testing.assert_close(mel, out.recon[0], rtol=0, atol=1e-4)
    assert ae.decode(z).shape == (z.shape[0] * ae.frame_ratio, 80)
    z2 = ae.encode(tone(0.3, SR), SR)
    b = ae.decode_batch([z, z2], [feats.shape[0], 17])
    torch.testing.assert_close(b[0], mel, rtol=0, atol=1e-4)
    torch.testing.assert_close(b[1], ae.decode(z2, 17), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="num_frames"):
        ae.decode(z, num_frames=z.shape[0] * ae.frame_ratio + 1)
    with pytest.raises(ValueError, match=r"shape \(T_z, 8\)"):
        ae.decode(torch.zeros(5, 7))


@pytest.mark.parametrize("sr", [22050, 16000, 44100])
def test_resynth_keeps_duration(ae, sr) -> None:
    x = tone(0.777, sr)
    y, sr_out = ae.resynth(x, sr)
    assert sr_out == 16000
    assert y.shape == (output_samples(x.size, sr),) == (round(x.size * 16000 / sr),)
    assert torch.isfinite(y).all() and y.abs().max() > 0


def test_vocoder_auto_and_module(exp_dir, tmp_path) -> None:
    """vocoder='auto' loads <recipe>/exp/vocoder when it holds a checkpoint; to_wav then uses it."""
    import shutil

    from speechae.models.vocoder import VocoderConfig, build_vocoder
    from speechae.train.checkpoint import checkpoint_path, save_checkpoint

    run = tmp_path / "exp" / "run"
    shutil.copytree(exp_dir, run)
    assert SpeechAE.from_exp_dir(run, device="cpu", vocoder="auto").vocoder_name == "griffin-lim"
    torch.manual_seed(0)
    voc = build_vocoder(VocoderConfig(preset="tiny"))
    save_checkpoint(checkpoint_path(tmp_path / "exp" / "vocoder" / "checkpoints", 1),
                    {"config": {"vocoder": {"preset": "tiny"}}, "step": 1, "model": voc.state_dict()})
    ae = SpeechAE.from_exp_dir(run, device="cpu", vocoder="auto")
    assert ae.vocoder_name.startswith("vocoder:") and ae.vocoder is not None
    mel = torch.randn(23, 80) - 5
    with torch.no_grad():
        ref = voc.eval()(mel[None])[0]
    torch.testing.assert_close(ae.to_wav(mel), ref)
    assert ae.to_wav(mel[None].repeat(2, 1, 1)).shape == (2, 23 * 160)
    with pytest.raises(FileNotFoundError, match="no such vocoder"):
        SpeechAE.from_exp_dir(run, device="cpu", vocoder=tmp_path / "missing")


def test_bad_waveforms_are_named(ae) -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        ae.encode(np.full(1600, np.nan, dtype=np.float32), SR)
    with pytest.raises(ValueError, match="empty waveform"):
        ae.encode(np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(ValueError, match="expected a waveform"):
        ae.encode(np.zeros((2, 2, 10), dtype=np.float32), SR)


# ------------------------------------------------------------------------------------ CLI


def _cli(args: list[str]):  # noqa: ANN202
    from speechae.cli import main

    return CliRunner().invoke(main, args)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    """a.wav (16 kHz), sub/b.flac (22.05 kHz stereo), c.wav (8 kHz)."""
    d = tmp_path_factory.mktemp("audio")
    (d / "sub").mkdir()
    sf.write(d / "a.wav", tone(0.61, SR), SR)
    sf.write(d / "sub" / "b.flac", np.stack([tone(1.23, 22050, 300), tone(1.23, 22050, 900)], axis=1), 22050)
    sf.write(d / "c.wav", tone(0.33, 8000, 200), 8000)
    return d


def test_cli_encode_npy_then_decode(exp_dir, ae, audio_dir, tmp_path) -> None:
    out = tmp_path / "lat"
    r = _cli(["encode", str(exp_dir), str(audio_dir), "--out-dir", str(out), "--batch-seconds", "2"])
    assert r.exit_code == 0, r.output
    rows = [line.split("\t") for line in (out / "index.tsv").read_text().splitlines()]
    assert rows[0][:3] == ["id", "file", "latent_frames"] and sorted(r[0] for r in rows[1:]) == ["a", "b", "c"]
    for name, sr in (("a.wav", SR), ("sub/b.flac", 22050), ("c.wav", 8000)):
        wav, _ = sf.read(audio_dir / name, dtype="float32", always_2d=True)
        z = np.load(out / f"{Path(name).stem}.npy")
        np.testing.assert_allclose(z, ae.encode(wav.T, sr).numpy(), atol=1e-4, rtol=0)
    wavs = tmp_path / "wav"
    r = _cli(["decode", str(exp_dir), str(out), "--out-dir", str(wavs), "--vocoder", "none"])
    assert r.exit_code == 0, r.output
    for stem, seconds in (("a", 0.61), ("b", 1.23), ("c", 0.33)):
        info = sf.info(str(wavs / f"{stem}.wav"))
        assert info.samplerate == 16000 and info.frames == round(seconds * 16000), stem


def test_cli_encode_lhotse_from_manifest(exp_dir, ae, audio_dir, tmp_path) -> None:
    from lhotse import CutSet, Recording, load_manifest

    cuts = CutSet.from_cuts([Recording.from_file(str(audio_dir / "a.wav"), recording_id="a").to_cut(),
                             Recording.from_file(str(audio_dir / "sub" / "b.flac"), recording_id="b").to_cut()])
    manifest = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    out = tmp_path / "lat"
    r = _cli(["encode", str(exp_dir), str(manifest), str(audio_dir / "c.wav"), "--out-dir", str(out),
              "--format", "lhotse"])
    assert r.exit_code == 0, r.output
    got = load_manifest(out / "cuts.jsonl.gz")
    assert sorted(c.id for c in got) == ["a", "b", "c"]
    for c in got:
        assert c.latents.frame_shift == pytest.approx(1 / 25.0)
        ref = ae.encode(c.load_audio(), c.sampling_rate).numpy()
        np.testing.assert_allclose(c.latents.load(), ref, atol=1e-4, rtol=0)  # every latent frame
        # Lhotse's cut view: frames for the cut's duration (a last partial frame dropped, as for fbank)
        z = c.load_latents()
        assert len(z) == round(c.duration * 25.0) and np.array_equal(z, c.latents.load()[: len(z)])


def test_cli_resynth_22k(exp_dir, audio_dir, tmp_path) -> None:
    src = tmp_path / "in22k.wav"
    sf.write(src, tone(1.37, 22050), 22050)
    dst = tmp_path / "out.wav"
    r = _cli(["resynth", str(exp_dir), str(src), str(dst), "--vocoder", "none"])
    assert r.exit_code == 0, r.output
    info = sf.info(str(dst))
    assert info.samplerate == 16000 and info.frames == round(round(1.37 * 22050) * 16000 / 22050)
    assert "1.370 s" in r.output


@pytest.mark.parametrize("kind", ["garbage_wav", "garbage_npy", "bad_manifest"])
def test_cli_bad_inputs_one_line_naming_the_file(exp_dir, tmp_path, kind) -> None:
    bad = tmp_path / {"garbage_wav": "bad.wav", "garbage_npy": "bad.npy", "bad_manifest": "bad.jsonl"}[kind]
    bad.write_bytes(b"RIFF\x00\x01garbage" * 10 if kind != "bad_manifest" else b'{"id": 1, "nonsense": true}\n')
    cmd = "decode" if kind == "garbage_npy" else "encode"
    r = _cli([cmd, str(exp_dir), str(bad), "--out-dir", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(bad) in lines[0] and lines[0].startswith(f"speechae {cmd}: error:"), r.output
