"""The Vocos-style vocoder, its discriminators, its data and its loading from an experiment."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording

from speechae.audio import HOP, fbank_module, num_frames
from speechae.data.vocoder_data import (VocoderCropDataset, VocoderDataConfig, crop_offset, make_vocoder_dataloader,
                                        segment_samples)
from speechae.losses.adversarial import MelL1Loss, MultiResolutionSTFTLoss
from speechae.models.discriminators import (CombinedDiscriminator, DiscriminatorConfig, PeriodDiscriminator,
                                            build_discriminator)
from speechae.models.vocoder import VOCODER_PRESETS, Vocoder, VocoderConfig, build_vocoder, load_vocoder
from speechae.train.checkpoint import checkpoint_path, save_checkpoint


def _espeak(text: str, voice: str = "en-us+m1") -> np.ndarray:
    """espeak-ng speech at 16 kHz, as the project's synthesiser writes it (data/synth.py)."""
    from scipy.signal import resample_poly

    from speechae.data.espeak import Espeak, EspeakUnavailable

    try:
        engine = Espeak.get()
    except EspeakUnavailable as e:
        pytest.skip(str(e))
    syn = engine.synthesize(text, voice=voice)
    g = math.gcd(16000, syn.sample_rate)
    audio = resample_poly(syn.audio.astype(np.float32) / 32768.0, 16000 // g, syn.sample_rate // g)
    return np.clip(audio, -1, 1).astype(np.float32)


def _tiny() -> Vocoder:
    torch.manual_seed(0)
    return build_vocoder(VocoderConfig(preset="tiny"))


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize("frames", [1, 2, 7, 50, 101])
def test_output_length_is_frames_times_hop(frames: int) -> None:
    wav = _tiny()(torch.randn(2, frames, 80))
    assert wav.shape == (2, frames * HOP)
    assert num_frames(wav.shape[1]) == frames  # the features of the output have T frames again


def test_istft_head_inverts_the_aligned_stft() -> None:
    # Frame t of the head is the Hann-windowed n_fft samples starting at t*hop - (n_fft-hop)/2,
    # i.e. centred on t*hop + hop/2 like the features' frame t: analysing a signal that way and
    # feeding the spectrum to the head gives the signal back exactly.
    head = _tiny().head.double()
    t, n, hop = 40, head.n_fft, head.hop
    y = torch.randn(2, t * hop, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pad = (n - hop) // 2
    z = torch.nn.functional.pad(y, (pad, pad))
    frames = z.unfold(-1, n, hop)[:, :t] * head.window.double()
    assert frames.shape[1] == t
    torch.testing.assert_close(head.istft(torch.fft.rfft(frames, n=n)), y, atol=1e-9, rtol=0)
    assert (n // 2 - pad) == hop // 2  # frame centre offset: hop / 2 = 80 samples, as Kaldi framing


def test_padding_never_changes_valid_samples() -> None:
    model = _tiny().eval()
    feats = torch.randn(2, 30, 80)
    short = model(feats[:1, :17])
    padded = feats.clone()
    padded[0, 17:] = 100.0  # garbage in the padding
    out = model(padded, torch.tensor([17, 30]))
    torch.testing.assert_close(out[0, : 17 * HOP], short[0], atol=1e-5, rtol=1e-4)
    assert (out[0, 17 * HOP:] == 0).all()
    torch.testing.assert_close(out[1], model(feats[1:])[0], atol=1e-5, rtol=1e-4)


def test_gradient_reaches_every_parameter() -> None:
    model = _tiny()
    model(torch.randn(2, 20, 80)).pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_presets_sizes() -> None:
    counts = {name: sum(p.numel() for p in build_vocoder(VocoderConfig(preset=name)).parameters())
              for name in VOCODER_PRESETS}
    assert counts["tiny"] < counts["cpu"] < counts["vocos"]
    assert 0.5e6 < counts["cpu"] < 1.0e6  # 0.76 M
    assert 12e6 < counts["vocos"] < 15e6  # 13.3 M (Vocos reports 13.5 M at 100 mel bins, n_fft 1024)
    assert build_vocoder(VocoderConfig(preset="cpu", num_layers=2)).blocks.__len__() == 2


# ----------------------------------------------------------------------------- discriminators


def test_discriminator_outputs() -> None:
    torch.manual_seed(0)
    cfg = DiscriminatorConfig()
    disc = build_discriminator(cfg)
    wav = torch.randn(3, 4000)
    logits, fmaps = disc(wav)
    assert len(logits) == len(fmaps) == len(cfg.periods) + len(cfg.resolutions)
    for lg, fm in zip(logits, fmaps):
        assert lg.shape[0] == 3 and lg.dim() == 2 and torch.isfinite(lg).all()
        assert len(fm) == 6 and all(f.shape[0] == 3 for f in fm)
    # A period discriminator's 2D maps keep the period as their last axis.
    for p, fm in zip(cfg.periods, fmaps):
        assert all(f.shape[-1] == p for f in fm)
    # Each item is judged on its own: logits of a batch equal those of its items.
    alone = disc(wav[1:2])[0]
    for a, b in zip(alone, logits):
        torch.testing.assert_close(a[0], b[1], atol=1e-5, rtol=1e-4)
    only_mpd = CombinedDiscriminator(periods=(2, 3), resolutions=())
    assert len(only_mpd(wav)[0]) == 2
    with pytest.raises(ValueError):
        CombinedDiscriminator(periods=(), resolutions=())


def test_period_discriminator_pads_to_a_whole_period() -> None:
    d = PeriodDiscriminator(7, channels=(4, 8))
    logits, fmaps = d(torch.randn(2, 1001))
    assert fmaps[0].shape[-1] == 7 and fmaps[0].shape[2] == math.ceil(math.ceil(1001 / 7) / 3)


# ----------------------------------------------------------------------------- loading


def test_load_vocoder_prefers_the_average(tmp_path: Path) -> None:
    cfg = {"task": "vocoder", "vocoder": {"preset": "tiny"}}
    trained, avg = _tiny(), _tiny()
    with torch.no_grad():
        for p in avg.parameters():
            p.add_(1.0)
    state = {"version": 1, "config": cfg, "step": 10, "modules": {"generator": trained.state_dict(), "discriminator": {}},
             "model_avg": {k: v.double() for k, v in avg.state_dict().items()}}
    save_checkpoint(checkpoint_path(tmp_path / "checkpoints", 10), state)
    feats = torch.randn(1, 9, 80)
    auto = load_vocoder(tmp_path)
    assert not auto.training
    torch.testing.assert_close(auto(feats), avg.eval()(feats))
    torch.testing.assert_close(load_vocoder(tmp_path, weights="last")(feats), trained.eval()(feats))
    state["model_avg"] = None
    save_checkpoint(checkpoint_path(tmp_path / "checkpoints", 20), state)  # newer, no average
    torch.testing.assert_close(load_vocoder(tmp_path)(feats), trained(feats))
    with pytest.raises(ValueError):
        load_vocoder(tmp_path, weights="avg")


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def cuts_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[CutSet, dict[str, np.ndarray]]:
    """Three espeak utterances (one stereo, channel 1 = noise) and one 0.3 s clip."""
    root = tmp_path_factory.mktemp("voc")
    texts = ["Hello there, general.", "A vocoder turns features into sound.", "Seven silver swans.", "Hi."]
    recordings, audio = [], {}
    for i, text in enumerate(texts):
        a = _espeak(text)
        if i == 3:
            a = a[:4800]
        data = np.stack([a, np.random.default_rng(i).standard_normal(len(a)).astype(np.float32) * 0.1], 1) \
            if i == 1 else a
        path = root / f"u{i}.wav"
        sf.write(path, data, 16000, subtype="FLOAT")
        recordings.append(Recording.from_file(path, recording_id=f"u{i}"))
        audio[f"u{i}"] = a
    cuts = CutSet.from_manifests(recordings=recordings)
    ids = {c.id: c.recording_id for c in cuts}
    return cuts, {cid: audio[rid] for cid, rid in ids.items()}


def _loader(cuts: CutSet, seed: int = 0, train: bool = True):  # noqa: ANN202
    cfg = VocoderDataConfig(segment_seconds=0.5, batch_size=2, seed=seed)
    return make_vocoder_dataloader(cuts, cfg, train=train)


def test_crops_are_hop_aligned_slices_with_their_features(cuts_dir) -> None:  # noqa: ANN001
    cuts, audio = cuts_dir
    seg = segment_samples(0.5)
    assert seg == 8000 and segment_samples(0.5049) == 8000
    dl = _loader(cuts)
    dl.sampler.set_epoch(0)
    seen = 0
    for batch in dl:
        assert batch["audio"].shape == (2, seg)
        assert batch["features"].shape == (2, seg // HOP, 80)
        assert batch["feature_lens"].tolist() == [seg // HOP] * 2
        torch.testing.assert_close(batch["features"], fbank_module()(batch["audio"]))
        for cid, crop in zip(batch["cut_ids"], batch["audio"].numpy()):
            full = audio[cid]
            start = crop_offset(cid, len(full), seg, 0, 0)
            assert start % HOP == 0 and start + min(seg, len(full)) <= len(full)
            n = min(seg, len(full))
            np.testing.assert_allclose(crop[:n], full[start:start + n], atol=1e-6)  # channel 0
            assert (crop[n:] == 0).all()  # the short cut is zero-padded
            seen += 1
    assert seen == 4


def test_same_seed_same_batches_and_resume(cuts_dir) -> None:  # noqa: ANN001
    cuts, _ = cuts_dir

    def epoch_batches(dl, epoch: int) -> list[dict]:  # noqa: ANN001
        dl.sampler.set_epoch(epoch)
        return list(dl)

    a, b = epoch_batches(_loader(cuts), 1), epoch_batches(_loader(cuts), 1)
    assert [x["cut_ids"] for x in a] == [x["cut_ids"] for x in b]
    for x, y in zip(a, b):
        assert torch.equal(x["audio"], y["audio"])
    other = epoch_batches(_loader(cuts), 2)
    crops = lambda bs: {c: au for x in bs for c, au in zip(x["cut_ids"], x["audio"])}  # noqa: E731
    ca, co = crops(a), crops(other)
    assert any(not torch.equal(ca[c], co[c]) for c in ca)  # a new epoch draws new crops
    # Resume: the sampler state after one batch gives the same next batch.
    dl = _loader(cuts)
    dl.sampler.set_epoch(1)
    it = iter(dl)
    next(it)
    state = dl.sampler.state_dict()
    expected = next(it)
    resumed = _loader(cuts)
    resumed.sampler.load_state_dict(state)
    got = next(iter(resumed))
    assert got["cut_ids"] == expected["cut_ids"] and torch.equal(got["audio"], expected["audio"])


def test_crop_offset_is_uniform_over_aligned_starts() -> None:
    starts = [crop_offset(f"c{i}", 8000 + 10 * HOP + 37, 8000, seed=0, epoch=0) for i in range(2000)]
    assert set(starts) == {k * HOP for k in range(11)}
    counts = np.bincount(np.array(starts) // HOP)
    assert counts.min() > 2000 / 11 * 0.7
    assert crop_offset("c", 8000, 8000, 0, 0) == 0 and crop_offset("c", 100, 8000, 0, 0) == 0
    with pytest.raises(ValueError):
        VocoderCropDataset(segment=8001)


# ----------------------------------------------------------------------------- learning


def test_overfits_one_clip() -> None:
    # A few dozen steps of mel L1 + multi-resolution STFT on one 0.5 s espeak clip.
    start = time.perf_counter()
    audio = _espeak("Speech synthesis.")
    # The loudest 0.5 s (hop-aligned), so the test is not dominated by leading silence.
    energy = np.convolve(audio ** 2, np.ones(8000), "valid")
    s = int(np.argmax(energy[::HOP])) * HOP
    wav = torch.from_numpy(audio[s:s + 8000])[None]
    feats = fbank_module()(wav)
    torch.manual_seed(0)
    model = build_vocoder(VocoderConfig(preset="tiny", dim=64, intermediate_dim=128))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.8, 0.99))
    mel, mrstft = MelL1Loss(floor=-11.5), MultiResolutionSTFTLoss(fft_sizes=(256, 512, 1024))
    lens = torch.tensor([wav.shape[1]])
    with torch.no_grad():
        first = mel(model(feats), wav, target_feats=feats).item()
    for _ in range(60):
        y = model(feats)
        loss = mel(y, wav, target_feats=feats) + mrstft(y, wav, lens)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = mel(model(feats), wav, target_feats=feats).item()
    assert last < 0.5 * first, (first, last)  # measured 3.37 -> 0.77 in 2.5 s
    assert time.perf_counter() - start < 30


# ----------------------------------------------------------------------------- training task


def test_vocoder_task_trains_resumably_with_the_generic_trainer(cuts_dir, tmp_path: Path) -> None:  # noqa: ANN001
    import json

    from speechae.train import vocoder_task
    from speechae.train.config import experiment_config_from_dict
    from speechae.train.distributed import DistEnv
    from speechae.train.trainer import Trainer

    cuts, _ = cuts_dir
    cuts.to_file(tmp_path / "train.jsonl.gz")
    cuts.subset(first=2).to_file(tmp_path / "dev.jsonl.gz")
    cfg = experiment_config_from_dict({
        "task": "vocoder", "vocoder": {"preset": "tiny"},
        "discriminator": {"periods": [2, 3], "mpd_channels": [4, 8], "mrd_channels": 4},
        "losses": {"adv_start_step": 2, "stft_fft_sizes": [256, 512]},
        "data": {"train_cuts": str(tmp_path / "train.jsonl.gz"), "dev_cuts": str(tmp_path / "dev.jsonl.gz"),
                 "segment_seconds": 0.5, "batch_size": 2},
        "train": {"max_steps": 4, "log_every": 1, "valid_every": 2, "save_every": 2, "average_every": 1,
                  "device": "cpu", "tensorboard": False}})
    assert isinstance(cfg, vocoder_task.VocoderExperimentConfig)
    vocoder_task.VocoderTask.check_inputs(cfg)

    def run(exp_dir: Path, max_steps: int) -> None:
        cfg.train.max_steps = max_steps
        trainer = Trainer(cfg, exp_dir, DistEnv(), *vocoder_task.VocoderTask.build_dataloaders(cfg, 1, 0))
        assert trainer.fit() == 0

    exp = tmp_path / "exp"
    run(exp, 4)
    records = [json.loads(line) for line in (exp / "log" / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if "split" not in r}
    # Pre-training (steps 0-1): mel + STFT only, no discriminator update; then the GAN terms.
    assert "loss/disc" not in train[2] and "loss/fm" not in train[2] and train[2]["train/adversarial"] == 0.0
    assert {"loss/disc", "loss/gen_adv", "loss/fm", "train/discriminator/grad_norm"} <= set(train[3])
    assert all(math.isfinite(v) for r in train.values() for v in r.values() if isinstance(v, float))
    valid = [r for r in records if r.get("split") == "valid"]
    assert len(valid) == 2 and "valid/loss/mel_l1" in valid[0] and "valid/metric/mel_l1_exact" in valid[0]
    ck2 = torch.load(exp / "checkpoints" / "ckpt-00000002.pt", weights_only=True)
    ck4 = torch.load(exp / "checkpoints" / "ckpt-00000004.pt", weights_only=True)
    assert ck2["optimizers"]["discriminator"]["state"] == {} != ck4["optimizers"]["discriminator"]["state"]
    assert set(ck4["modules"]) == {"generator", "discriminator"} and ck4["config"]["vocoder"]["preset"] == "tiny"
    # load_vocoder rebuilds the averaged generator on its own.
    feats = torch.randn(1, 12, 80)
    avg = {k: v.float() for k, v in ck4["model_avg"].items()}
    ref = build_vocoder(VocoderConfig(preset="tiny"))
    ref.load_state_dict(avg)
    torch.testing.assert_close(load_vocoder(exp)(feats), ref.eval()(feats))
    # Interrupted at step 2 (in pre-training) and resumed: the same weights at step 4.
    run(tmp_path / "resumed", 2)
    run(tmp_path / "resumed", 4)
    again = torch.load(tmp_path / "resumed" / "checkpoints" / "ckpt-00000004.pt", weights_only=True)
    for name in ("generator", "discriminator"):
        for k, v in ck4["modules"][name].items():
            torch.testing.assert_close(again["modules"][name][k], v, atol=0, rtol=0, msg=f"{name}.{k}")


def test_frozen_discriminator_gets_no_gradient_but_passes_one() -> None:
    from speechae.train.vocoder_task import frozen

    disc = CombinedDiscriminator(periods=(2,), mpd_channels=(4,), resolutions=((256, 64, 256),), mrd_channels=4)
    wav = torch.randn(1, 2000, requires_grad=True)
    with frozen(disc):
        sum(lg.mean() for lg in disc(wav)[0]).backward()
    assert all(p.grad is None and p.requires_grad for p in disc.parameters())
    assert wav.grad is not None and wav.grad.abs().sum() > 0


def test_a_split_smaller_than_one_batch_still_trains(cuts_dir) -> None:  # noqa: ANN001
    """Training drops incomplete batches, except when the split cannot fill a single one (a
    small corpus with the 16-cut batches of the full-size recipes yielded no batch at all)."""
    cuts, _ = cuts_dir
    big = make_vocoder_dataloader(cuts, VocoderDataConfig(segment_seconds=0.5, batch_size=16), train=True)
    assert [len(b["audio"]) for b in big] == [4]
    full = make_vocoder_dataloader(cuts, VocoderDataConfig(segment_seconds=0.5, batch_size=3), train=True)
    assert [len(b["audio"]) for b in full] == [3]  # the incomplete last batch is dropped
