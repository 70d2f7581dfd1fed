"""The autoencoder task: a :class:`~speechae.models.SpeechAE` trained with the loss composer.

Modules: ``model`` (the autoencoder, averaged and stored as the checkpoint's ``model``) and
``losses`` (the composer: it holds the objective heads, which are trained too).  One optimizer
``model`` covers both.  One update per step::

    plan = composer.plan(batch, step)
    out = model(*composer.model_inputs(batch, plan))
    total, metrics = composer(out, batch, plan)

Under DDP one wrapper holds model and composer (:class:`AEModule`), so the heads' gradients are
synchronised and DDP sees one forward and one backward per micro-batch.

End-to-end waveform decoding (``waveform.enabled``, :class:`~speechae.train.config.WaveformConfig`)
adds the modules ``waveform_head`` (a Vocos-style generator on the decoder's log-mel, its own
AdamW) and ``discriminator`` (MPD + MRD, its own AdamW).  A step then is: the autoencoder
forward, which also vocodes a random window of each reconstruction; a discriminator update on
the detached windows (from ``adv_start_step``); one update of the autoencoder and the head
together on the autoencoder loss plus the waveform terms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from speechae.data.datamodule import Labels, load_cuts, make_dataloader, subset_fraction
from speechae.losses import build_losses
from speechae.models import build_model
from speechae.optim import build_optimizer
from speechae.train.config import ExperimentConfig, WaveformConfig
from speechae.train.task import TASKS, Batch, Task, Updater


def forward_losses(model: nn.Module, composer: nn.Module, batch: Batch,
                   step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """One model call and the composer's terms on it: ``(total loss, float metrics)``."""
    plan = composer.plan(batch, step)
    feats, lens, mask = composer.model_inputs(batch, plan)
    out = model(feats, lens, input_mask=mask, **generative_target(model, batch, plan))
    return composer(out, batch, plan)


def generative_target(model: nn.Module, batch: Batch, plan: Any) -> dict[str, Any]:
    """``target`` / ``target_rows`` for a model whose decoder is generative (trained from the
    clean log-mel of the clean rows); {} otherwise."""
    decoder = getattr(model, "decoder", None)
    if not getattr(decoder, "generative", False):
        return {}
    target = batch.get("target_features")
    target = batch["features"] if target is None else target
    b = batch["features"].shape[0]
    return {"target": target, "target_rows": slice(b, 2 * b) if plan.double else None}


class WaveformHead(nn.Module):
    """The waveform side of end-to-end decoding: vocodes a random window of each utterance's
    reconstructed log-mel and scores it against the same window of the recording (mel L1 of the
    audio's features and multi-resolution STFT); the adversarial terms are added by the task."""

    def __init__(self, cfg: WaveformConfig) -> None:
        super().__init__()
        from speechae.losses.adversarial import MelL1Loss, MultiResolutionSTFTLoss
        from speechae.models.vocoder import build_vocoder

        self.cfg = cfg
        self.generator = build_vocoder(cfg.vocoder)
        self.hop = cfg.vocoder.hop
        self.frames = max(1, int(round(cfg.segment_seconds * cfg.vocoder.sampling_rate / self.hop)))
        self.mel = MelL1Loss(cfg.vocoder.num_mel_bins, cfg.vocoder.sampling_rate, floor=-11.5)
        self.stft = MultiResolutionSTFTLoss()

    def windows(self, recon: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(vocoded windows (B, W*hop), recorded windows (B, W*hop)); W frames start at a random
        valid frame of each utterance (global torch RNG: checkpointed, so resume is exact)."""
        lens = batch["feature_lens"]
        w = min(self.frames, recon.shape[1])
        room = (lens - w).clamp_min(0).cpu()
        starts = (torch.rand(len(room)) * (room + 1).float()).long().clamp(max=room)
        idx = starts[:, None] + torch.arange(w)[None]
        mel = torch.gather(recon, 1, idx.to(recon.device)[..., None].expand(-1, -1, recon.shape[-1]))
        audio = batch["audio"]
        need = (int(starts.max()) + w) * self.hop
        if audio.shape[1] < need:
            audio = torch.nn.functional.pad(audio, (0, need - audio.shape[1]))
        sidx = (starts * self.hop)[:, None] + torch.arange(w * self.hop)[None]
        return self.generator(mel), torch.gather(audio, 1, sidx.to(audio.device))

    def forward(self, recon: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                                                   torch.Tensor, torch.Tensor]:
        """(weighted mel + STFT loss, metrics, fake windows, real windows)."""
        fake, real = self.windows(recon, batch)
        mel = self.mel(fake, real)
        stft, _ = self.stft(fake, real, torch.full((real.shape[0],), real.shape[1], device=real.device))
        loss = self.cfg.mel_weight * mel + self.cfg.stft_weight * stft
        return loss, {"loss/wave_mel_l1": mel.detach(), "loss/wave_stft": stft.detach()}, fake, real


class AEModule(nn.Module):
    """Model + loss composer (+ the waveform head) in one module (what DDP wraps):
    ``forward(batch, step)`` -> (total loss, float metrics); with a head, the vocoded and the
    recorded windows of the step are kept in ``last_windows`` for the discriminator."""

    def __init__(self, model: nn.Module, composer: nn.Module, head: WaveformHead | None = None) -> None:
        super().__init__()
        self.model = model
        self.composer = composer
        self.head = head
        self.last_windows: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, float]]:  # noqa: D102
        if self.head is None:
            return forward_losses(self.model, self.composer, batch, step)
        plan = self.composer.plan(batch, step)
        feats, lens, mask = self.composer.model_inputs(batch, plan)
        out = self.model(feats, lens, input_mask=mask, **generative_target(self.model, batch, plan))
        total, metrics = self.composer(out, batch, plan)
        recon = out.recon[batch["features"].shape[0]:] if plan.double else out.recon
        wave, wave_metrics, fake, real = self.head(recon, batch)
        self.last_windows = (fake, real)
        metrics.update({k: float(v) for k, v in wave_metrics.items()})
        return total + self.head.cfg.weight * wave, metrics


@TASKS.register("autoencoder")
class AutoencoderTask(Task):
    """encoder -> bottleneck -> decoder on log-mel, with the reconstruction, regularizer and
    semantic terms of ``cfg.losses`` (see :mod:`speechae.losses.composer`)."""

    config_class = ExperimentConfig
    primary = "model"
    primary_optimizer = "model"

    def __init__(self, cfg: ExperimentConfig, device: torch.device, distributed: bool = False) -> None:
        super().__init__(cfg, device, distributed)
        self.model = build_model(cfg.model).to(device)
        if cfg.train.compile:
            self.model.compile_parts()  # in place: parameter names and checkpoints unchanged
        self.composer = build_losses(cfg.losses, cfg.model.bottleneck.latent_dim).to(device)
        # objectives that need the model itself (an EMA teacher of the encoder: ema_codebook)
        self._after_update = []
        for obj in self.composer.objectives.values():
            if hasattr(obj, "attach"):
                obj.attach(self.model)
            if hasattr(obj, "after_update"):
                self._after_update.append(obj)
        self.modules = {"model": self.model, "losses": self.composer}
        ae_params = list(self.model.named_parameters()) + [(f"composer.{n}", p) for n, p in
                                                          self.composer.named_parameters()]
        opt, sched = build_optimizer(ae_params, cfg.optim)
        self.optimizers, self.schedulers = {"model": opt}, {"model": sched}
        self.head: WaveformHead | None = None
        self.discriminator: nn.Module | None = None
        if cfg.waveform.enabled:
            from speechae.config import ConfigError
            from speechae.models.discriminators import build_discriminator

            if getattr(self.model.decoder, "generative", False):
                raise ConfigError("waveform.enabled needs a log-mel decoder: the waveform head vocodes the "
                                  "decoder's reconstruction, which a generative decoder only samples at evaluation")
            w = cfg.waveform
            self.head = WaveformHead(w).to(device)
            self.discriminator = build_discriminator(w.discriminator).to(device)
            self.modules.update(waveform_head=self.head, discriminator=self.discriminator)
            for name, m in (("waveform_head", self.head), ("discriminator", self.discriminator)):
                self.optimizers[name] = torch.optim.AdamW(m.parameters(), lr=w.lr, betas=tuple(w.betas))
        self.module = AEModule(self.model, self.composer, self.head)
        self.wrapped: nn.Module = self.module
        self.d_wrapped: nn.Module | None = self.discriminator

    @classmethod
    def check_inputs(cls, cfg: ExperimentConfig) -> None:  # noqa: D102
        from speechae.train.run import check_inputs

        check_inputs(cfg)

    @classmethod
    def build_dataloaders(cls, cfg: ExperimentConfig, world_size: int, rank: int) -> tuple[Any, Any]:  # noqa: D102
        labels = Labels(cfg.data.lang_dir)
        train_cuts = subset_fraction(load_cuts(cfg.data.train_cuts), cfg.data.train_fraction, cfg.data.seed)
        audio = bool(getattr(getattr(cfg, "waveform", None), "enabled", False))
        train_dl = make_dataloader(train_cuts, labels, cfg.data, train=True, world_size=world_size, rank=rank,
                                   audio=audio)
        valid_dl = None
        if cfg.data.dev_cuts and Path(cfg.data.dev_cuts).is_file():
            valid_dl = make_dataloader(load_cuts(cfg.data.dev_cuts), labels, cfg.data, train=False,
                                       world_size=world_size, rank=rank, audio=audio)
        return train_dl, valid_dl

    def wrap(self, wrap_fn: Any) -> None:  # noqa: D102
        self.wrapped = wrap_fn(self.module)
        if self.discriminator is not None:
            self.d_wrapped = wrap_fn(self.discriminator)

    def set_batch_count(self, step: int, batch_count: float) -> None:  # noqa: D102
        self.model.set_batch_count(batch_count)

    def train_step(self, batches: Sequence[Batch], step: int, updater: Updater) -> dict[str, float]:  # noqa: D102
        if self.head is None:
            metrics = updater.update("model", batches, lambda b: self.wrapped(b, step), module=self.wrapped)
        else:
            metrics = self._waveform_step(batches, step, updater)
        for obj in self._after_update:  # e.g. the EMA teacher's step toward the updated encoder
            metrics["train/teacher_decay"] = obj.after_update(step, self.model)
        return metrics

    def _waveform_step(self, batches: Sequence[Batch], step: int, updater: Updater) -> dict[str, float]:
        """Autoencoder forward (with the vocoded windows) once per micro-batch; discriminator
        update on the detached windows; autoencoder + head update with the GAN terms."""
        from speechae.losses.adversarial import discriminator_loss, feature_matching_loss, generator_loss
        from speechae.train.vocoder_task import frozen

        w = self.cfg.waveform
        adversarial = step >= w.adv_start_step and (w.adv_weight > 0 or w.fm_weight > 0)
        cache: dict[int, tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]] = {}

        def forward(b: Batch) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
            if id(b) not in cache:
                loss, metrics = self.wrapped(b, step)
                fake, real = self.module.last_windows
                cache[id(b)] = (loss, metrics, fake, real)
            return cache[id(b)]

        def d_loss(b: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
            _, _, fake, real = forward(b)
            logits, _ = self.d_wrapped(torch.cat([real, fake.detach().to(real.dtype)]))
            n = real.shape[0]
            loss, m = discriminator_loss([lg[:n] for lg in logits], [lg[n:] for lg in logits], w.gan)
            return loss, {"loss/disc": loss.detach(), **m}

        def g_loss(b: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
            loss, metrics, fake, real = cache.pop(id(b), None) or forward(b)
            metrics = dict(metrics)
            if adversarial:
                with frozen(self.discriminator):
                    with torch.no_grad():
                        _, real_maps = self.discriminator(real)
                    fake_logits, fake_maps = self.discriminator(fake)
                adv = generator_loss(fake_logits, w.gan)
                fm = feature_matching_loss(real_maps, fake_maps, "sum")
                loss = loss + w.weight * (w.adv_weight * adv + w.fm_weight * fm)
                metrics.update({"loss/wave_adv": float(adv), "loss/wave_fm": float(fm)})
            return loss, metrics

        metrics: dict[str, float] = {}
        if adversarial:
            metrics.update(updater.update("discriminator", batches, d_loss, module=self.d_wrapped))
        metrics.update(updater.update(("model", "waveform_head"), batches, g_loss, module=self.wrapped))
        metrics["train/adversarial"] = float(adversarial)
        return metrics

    def valid_metrics(self, batch: Batch, step: int) -> dict[str, Any]:  # noqa: D102
        return self.module(batch, step)[1]

    def vocoder(self) -> nn.Module | None:
        """The waveform head's generator (log-mel -> audio), when waveform decoding is on."""
        return None if self.head is None else self.head.generator

    def log_media(self, batch: Batch, step: int, logger: Any) -> None:
        """Target/reconstruction spectrogram pairs and latent histograms."""
        out = self.model(batch["features"], batch["feature_lens"])
        log_spectrogram_pairs(logger, step, batch, out.recon, self.cfg.train.num_images)
        valid = torch.arange(out.z.shape[1], device=out.z.device)[None] < out.z_lengths[:, None]
        hists: dict[str, torch.Tensor] = {"latent/z": out.z[valid]}
        if out.z_mean is not None:
            hists["latent/z_mean"] = out.z_mean[valid]
            hists["latent/z_std"] = (0.5 * out.z_logvar[valid]).exp()
        logger.log_histograms(step, hists)
        if self.head is not None and "audio" in batch:
            n = int(batch["feature_lens"][0])
            logger.log_audio(step, "valid/audio_0/recording", batch["audio"][0, : int(batch["audio_lens"][0])], 16000)
            logger.log_audio(step, "valid/audio_0/decoded", self.head.generator(out.recon[:1, :n])[0], 16000)

    def describe(self) -> str:  # noqa: D102
        n = sum(p.numel() for p in self.model.parameters())
        h = sum(p.numel() for p in self.composer.parameters())
        return f"model: {n / 1e6:.2f}M parameters (+{h / 1e6:.2f}M in objective heads)"


def log_spectrogram_pairs(logger: Any, step: int, batch: Batch, recon: torch.Tensor, num: int) -> None:
    """The first ``num`` (clean target, reconstruction) log-mel pairs of a dev batch as images."""
    for i in range(min(num, recon.shape[0])):
        n = int(batch["feature_lens"][i])
        target = batch.get("target_features", batch["features"])[i, :n]
        logger.log_spectrograms(step, f"valid/spectrogram_{i}", target, recon[i, :n])
