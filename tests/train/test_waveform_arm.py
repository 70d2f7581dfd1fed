"""End-to-end waveform decoding of an autoencoder arm (``waveform.enabled``): audio in the batch,
aligned windows, the waveform loss reaching the encoder, and the discriminator's own schedule."""

from __future__ import annotations

from pathlib import Path

import torch

from speechae.train.checkpoint import load_checkpoint
from speechae.train.config import experiment_config_from_dict
from speechae.train.distributed import DistEnv
from speechae.train.faults import EXIT_OK
from speechae.train.trainer import Trainer, build_dataloaders

WAVE = {"enabled": True, "vocoder": {"preset": "tiny"}, "segment_seconds": 0.2, "adv_start_step": 2,
        "discriminator": {"periods": [2, 3], "mpd_channels": [4, 8], "resolutions": [[256, 64, 256]],
                          "mrd_channels": 4}}


def _trainer(make_config, exp: Path, **train) -> Trainer:  # noqa: ANN001
    cfg = experiment_config_from_dict(make_config(waveform=WAVE, train={"max_steps": 4, "valid_every": 0,
                                                                        "tensorboard": False, **train}))
    env = DistEnv()
    train_dl, valid_dl, _ = build_dataloaders(cfg, env)
    return Trainer(cfg, exp, env, train_dl, valid_dl)


def test_batches_carry_the_audio_of_their_features(tmp_path: Path, make_config) -> None:
    trainer = _trainer(make_config, tmp_path / "exp")
    b = trainer.next_batch()
    assert b["audio"].shape[0] == b["features"].shape[0]
    # Kaldi-style frames without snip_edges: T = round(S / 160)
    assert torch.equal(b["feature_lens"], torch.div(b["audio_lens"] + 80, 160, rounding_mode="floor"))
    head = trainer.task.head
    torch.manual_seed(0)
    fake, real = head.windows(b["features"], b)
    assert fake.shape == real.shape == (b["features"].shape[0], head.frames * 160)
    torch.manual_seed(0)  # the same draw of window starts
    starts = (torch.rand(len(b["feature_lens"])) * ((b["feature_lens"] - head.frames).clamp_min(0) + 1).float()).long()
    for i, s in enumerate(starts.tolist()):
        assert torch.equal(real[i], b["audio"][i, s * 160:(s + head.frames) * 160])


def test_the_waveform_loss_reaches_the_encoder(tmp_path: Path, make_config) -> None:
    trainer = _trainer(make_config, tmp_path / "exp")
    task = trainer.task
    b = trainer.next_batch()
    torch.manual_seed(1)
    task.module(b, 0)
    fake, real = task.module.last_windows
    loss = task.head.mel(fake, real)
    enc = next(p for n, p in task.model.named_parameters() if n.startswith("encoder."))
    (grad,) = torch.autograd.grad(loss, enc, allow_unused=True)
    assert grad is not None and grad.abs().sum() > 0


def test_discriminator_trains_from_adv_start_step_and_everything_is_checkpointed(tmp_path: Path, make_config) -> None:
    trainer = _trainer(make_config, tmp_path / "exp")
    d0 = {k: v.clone() for k, v in trainer.task.discriminator.state_dict().items()}
    m = [trainer.train_step(trainer.next_batch()) for _ in range(2)]
    assert all(x["train/adversarial"] == 0 and "loss/disc" not in x for x in m)
    assert all(torch.equal(v, trainer.task.discriminator.state_dict()[k]) for k, v in d0.items())
    m3 = trainer.train_step(trainer.next_batch())
    assert m3["train/adversarial"] == 1 and "loss/disc" in m3 and "loss/wave_fm" in m3
    assert "train/waveform_head/grad_norm" in m3 and "train/discriminator/grad_norm" in m3
    assert not all(torch.equal(v, trainer.task.discriminator.state_dict()[k]) for k, v in d0.items())
    exp = tmp_path / "run"
    assert _trainer(make_config, exp).fit() == EXIT_OK
    state = load_checkpoint(exp)
    assert set(state["modules"]) == {"model", "losses", "waveform_head", "discriminator"}
    assert set(state["optimizers"]) == {"model", "waveform_head", "discriminator"}
