"""The autoencoder task: a :class:`~speechae.models.SpeechAE` trained with the loss composer.

Modules: ``model`` (the autoencoder, averaged and stored as the checkpoint's ``model``) and
``losses`` (the composer: it holds the objective heads, which are trained too).  One optimizer
``model`` covers both.  One update per step::

    plan = composer.plan(batch, step)
    out = model(*composer.model_inputs(batch, plan))
    total, metrics = composer(out, batch, plan)

Under DDP one wrapper holds model and composer (:class:`AEModule`), so the heads' gradients are
synchronised and DDP sees one forward and one backward per micro-batch.
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
from speechae.train.config import ExperimentConfig
from speechae.train.task import TASKS, Batch, Task, Updater


def forward_losses(model: nn.Module, composer: nn.Module, batch: Batch,
                   step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """One model call and the composer's terms on it: ``(total loss, float metrics)``."""
    plan = composer.plan(batch, step)
    feats, lens, mask = composer.model_inputs(batch, plan)
    out = model(feats, lens, input_mask=mask)
    return composer(out, batch, plan)


class AEModule(nn.Module):
    """Model + loss composer in one module (what DDP wraps): ``forward(batch, step)`` ->
    (total loss, float metrics)."""

    def __init__(self, model: nn.Module, composer: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.composer = composer

    def forward(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, float]]:  # noqa: D102
        return forward_losses(self.model, self.composer, batch, step)


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
        self.module = AEModule(self.model, self.composer)
        self.wrapped: nn.Module = self.module
        self.modules = {"model": self.model, "losses": self.composer}
        opt, sched = build_optimizer(list(self.module.named_parameters()), cfg.optim)
        self.optimizers, self.schedulers = {"model": opt}, {"model": sched}

    @classmethod
    def check_inputs(cls, cfg: ExperimentConfig) -> None:  # noqa: D102
        from speechae.train.run import check_inputs

        check_inputs(cfg)

    @classmethod
    def build_dataloaders(cls, cfg: ExperimentConfig, world_size: int, rank: int) -> tuple[Any, Any]:  # noqa: D102
        labels = Labels(cfg.data.lang_dir)
        train_cuts = subset_fraction(load_cuts(cfg.data.train_cuts), cfg.data.train_fraction, cfg.data.seed)
        train_dl = make_dataloader(train_cuts, labels, cfg.data, train=True, world_size=world_size, rank=rank)
        valid_dl = None
        if cfg.data.dev_cuts and Path(cfg.data.dev_cuts).is_file():
            valid_dl = make_dataloader(load_cuts(cfg.data.dev_cuts), labels, cfg.data, train=False,
                                       world_size=world_size, rank=rank)
        return train_dl, valid_dl

    def wrap(self, wrap_fn: Any) -> None:  # noqa: D102
        self.wrapped = wrap_fn(self.module)

    def set_batch_count(self, step: int, batch_count: float) -> None:  # noqa: D102
        self.model.set_batch_count(batch_count)

    def train_step(self, batches: Sequence[Batch], step: int, updater: Updater) -> dict[str, float]:  # noqa: D102
        return updater.update("model", batches, lambda b: self.wrapped(b, step), module=self.wrapped)

    def valid_metrics(self, batch: Batch, step: int) -> dict[str, Any]:  # noqa: D102
        return self.module(batch, step)[1]

    def log_media(self, batch: Batch, step: int, logger: Any) -> None:
        """Target/reconstruction spectrogram pairs and latent histograms."""
        out = self.model(batch["features"], batch["feature_lens"])
        for i in range(min(self.cfg.train.num_images, out.recon.shape[0])):
            n = int(batch["feature_lens"][i])
            target = batch.get("target_features", batch["features"])[i, :n]
            logger.log_spectrograms(step, f"valid/spectrogram_{i}", target, out.recon[i, :n])
        valid = torch.arange(out.z.shape[1], device=out.z.device)[None] < out.z_lengths[:, None]
        hists: dict[str, torch.Tensor] = {"latent/z": out.z[valid]}
        if out.z_mean is not None:
            hists["latent/z_mean"] = out.z_mean[valid]
            hists["latent/z_std"] = (0.5 * out.z_logvar[valid]).exp()
        logger.log_histograms(step, hists)

    def describe(self) -> str:  # noqa: D102
        n = sum(p.numel() for p in self.model.parameters())
        h = sum(p.numel() for p in self.composer.parameters())
        return f"model: {n / 1e6:.2f}M parameters (+{h / 1e6:.2f}M in objective heads)"


def legacy_modules(state: Mapping[str, Any]) -> dict[str, Any]:
    """``modules`` of a checkpoint written before tasks existed (``model`` + ``losses``)."""
    return {"model": state["model"], "losses": state.get("losses", {})}
