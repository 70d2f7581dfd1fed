"""The training loop: a small :meth:`Trainer.train_step` plus a plain outer loop
(:meth:`Trainer.fit`) that logs, validates and checkpoints on intervals.

Experiment directory layout::

    <exp>/config.yaml          resolved config (every default filled in)
    <exp>/command.sh           the exact command that re-runs (and resumes) this experiment
    <exp>/log/train.log        text log;  <exp>/log/metrics.jsonl  one JSON object per log step
    <exp>/tensorboard/         TensorBoard events
    <exp>/checkpoints/         ckpt-<step>.pt (keep-last-K, atomic; see speechae.train.checkpoint)
    <exp>/debug/               offending batch + model on non-finite runs or exceptions

Reproducibility: with ``data.num_workers=0`` the sampler state in a checkpoint is exactly the
consumed batches, and RNG states are saved after each step, so a resumed run ends with the
same weights as an uninterrupted one (CPU, fixed seed).  Validation saves and restores the RNG
state so that it never perturbs training.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from speechae.config import ConfigError
from speechae.data.datamodule import Labels, load_cuts, make_dataloader, subset_fraction
from speechae.losses import build_losses
from speechae.models import build_model
from speechae.optim import build_optimizer
from speechae.train import checkpoint as ck
from speechae.train.config import ExperimentConfig, adjusted_batch_count
from speechae.train.distributed import DistEnv, all_reduce_max, all_reduce_sum
from speechae.train.faults import (EXIT_INTERRUPTED, EXIT_NONFINITE, EXIT_OK, NonFiniteError, StopFlag,
                                   dump_debug)
from speechae.train.logger import ExperimentLogger, Throughput, format_duration, peak_memory_mb

log = logging.getLogger("speechae.train")

Batch = Mapping[str, Any]
FRAME_SHIFT_S = 0.01  # 100 Hz fbank


class TrainModule(nn.Module):
    """Model + loss composer in one module, so DDP wraps both (the objective heads are
    parameters of the composer) and the composer keeps owning the model call."""

    def __init__(self, model: nn.Module, composer: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.composer = composer

    def forward(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """``composer(model, batch, step)`` -> (total loss, float metrics)."""
        return self.composer(self.model, batch, step)


def to_device(batch: Batch, device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch to ``device`` (other values unchanged)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_dataloaders(cfg: ExperimentConfig, env: DistEnv) -> tuple[Any, Any, Labels]:
    """Train and dev DataLoaders for this rank (the sampler shards by world_size/rank)."""
    labels = Labels(cfg.data.lang_dir)
    train_cuts = subset_fraction(load_cuts(cfg.data.train_cuts), cfg.data.train_fraction, cfg.data.seed)
    train_dl = make_dataloader(train_cuts, labels, cfg.data, train=True, world_size=env.world_size, rank=env.rank)
    valid_dl = None
    if cfg.data.dev_cuts and Path(cfg.data.dev_cuts).is_file():
        valid_dl = make_dataloader(load_cuts(cfg.data.dev_cuts), labels, cfg.data, train=False,
                                   world_size=env.world_size, rank=env.rank)
    return train_dl, valid_dl, labels


class Trainer:
    """Owns model, objectives, optimiser, scheduler, scaler, averaged model and data state.

    Args:
        cfg: the resolved experiment config.
        exp_dir: experiment directory (created).
        env: distributed placement (see :func:`speechae.train.distributed.init_distributed`).
        train_dl / valid_dl: DataLoaders whose ``sampler`` is a Lhotse sampler (valid may be None).
    """

    def __init__(self, cfg: ExperimentConfig, exp_dir: str | Path, env: DistEnv, train_dl: Any = None,
                 valid_dl: Any = None) -> None:
        self.cfg, self.env, self.exp_dir = cfg, env, Path(exp_dir)
        self.tc = cfg.train
        self.device = env.device
        if self.tc.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs a GPU; use bf16 or none on CPU")
        seed_everything(self.tc.seed)  # identical initial weights on every rank
        self.model = build_model(cfg.model).to(self.device)
        if self.tc.compile:
            self.model.compile_parts()  # in place: parameter names and checkpoints unchanged
        self.composer = build_losses(cfg.losses, cfg.model.bottleneck.latent_dim).to(self.device)
        self.module = TrainModule(self.model, self.composer)
        self.wrapped: nn.Module = self.module
        if env.distributed:
            self.wrapped = DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.tc.find_unused_parameters)
        self.optimizer, self.scheduler = build_optimizer(list(self.module.named_parameters()), cfg.optim)
        self.scaler = torch.amp.GradScaler("cuda") if self.tc.amp == "fp16" else None
        self.model_avg = ck.init_average(self.model) if (self.tc.average_every > 0 and env.is_main) else None
        self.avg_step = 0
        seed_everything(self.tc.seed + env.rank)  # per-rank dropout / noise streams
        self.train_dl, self.valid_dl = train_dl, valid_dl
        self.step, self.epoch = 0, 0
        self.counters: dict[str, float] = {"nonfinite_steps": 0, "consecutive_nonfinite": 0,
                                           "audio_seconds": 0.0}
        self._iter: Iterator | None = None
        self.stop = StopFlag()
        self.logger: ExperimentLogger | None = None
        self.throughput: Throughput | None = None
        self._last_batch: Any = None

    # ------------------------------------------------------------------ data

    def _new_iter(self) -> Iterator:
        # DataLoader.__iter__ draws a base seed from the global torch RNG; keep that draw out of
        # the training stream so a resumed run (one extra iterator) stays bit-identical.
        state = torch.get_rng_state()
        it = iter(self.train_dl)
        torch.set_rng_state(state)
        return it

    def next_batch(self) -> Batch:
        """The next training batch, moving to a new epoch when the sampler is exhausted."""
        empty_epochs = 0
        while True:
            if self._iter is None:
                self._iter = self._new_iter()
            try:
                return next(self._iter)
            except StopIteration:
                self._iter = None
                self.epoch += 1
                self.train_dl.sampler.set_epoch(self.epoch)
                empty_epochs += 1
                if empty_epochs > 1:
                    raise RuntimeError("the training sampler yields no batches (too little data "
                                       "for data.max_duration and the world size?)") from None

    # ------------------------------------------------------------------ one step

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.tc.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.tc.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def train_step(self, batch: Batch | Sequence[Batch]) -> dict[str, float]:
        """One optimiser update on ``batch`` (or a list of ``accum_grad`` micro-batches).

        Non-finite loss or gradient norm: the update is skipped on every rank and counted in
        ``train/nonfinite_steps``.  Returns float metrics (``loss/*``, ``weight/*``, ``train/*``).
        """
        batches = [batch] if isinstance(batch, Mapping) else list(batch)
        self.module.train()
        self.model.set_batch_count(adjusted_batch_count(self.step, self.cfg.data.max_duration, self.env.world_size,
                                                        self.tc.accum_grad, self.tc.ref_duration))
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        finite = True
        for i, b in enumerate(batches):
            b = to_device(b, self.device)
            sync = i == len(batches) - 1 or not self.env.distributed
            ctx = contextlib.nullcontext() if sync else self.wrapped.no_sync()
            with ctx:
                with self._autocast():
                    loss, metrics = self.wrapped(b, self.step)
                finite = finite and bool(torch.isfinite(loss.detach()))
                scaled = loss.float() / len(batches)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) / len(batches)
            self.counters["audio_seconds"] += float(b["feature_lens"].sum()) * FRAME_SHIFT_S * self.env.world_size
        grad_norm = self._clip()
        if self.scaler is None:
            finite = finite and math.isfinite(grad_norm)
        skip = all_reduce_max(0.0 if finite else 1.0, self.env) > 0
        self._update(skip)
        self.step += 1
        sums.update(self._step_metrics(grad_norm, skip))
        return sums

    def _clip(self) -> float:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.module.parameters() if p.grad is not None]
        max_norm = self.tc.grad_clip if self.tc.grad_clip > 0 else float("inf")
        if not params:
            return 0.0
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm, error_if_nonfinite=False))

    def _update(self, skip: bool) -> None:
        if skip:
            self.counters["nonfinite_steps"] += 1
            self.counters["consecutive_nonfinite"] += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()
            log.warning("step %d: non-finite loss or gradient; update skipped (%d in a row, %d total)",
                        self.step, self.counters["consecutive_nonfinite"], self.counters["nonfinite_steps"])
            return
        self.counters["consecutive_nonfinite"] = 0
        self.scheduler.step(self.step, self.epoch)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.model_avg is not None and (self.step + 1) % self.tc.average_every == 0:
            ck.update_average(self.model_avg, self.model, self.step + 1, self.tc.average_every)
            self.avg_step = self.step + 1

    def _step_metrics(self, grad_norm: float, skipped: bool) -> dict[str, float]:
        out = {"train/lr": float(self.scheduler.get_last_lr()[0]), "train/grad_norm": grad_norm,
               "train/skipped": float(skipped), "train/nonfinite_steps": self.counters["nonfinite_steps"],
               "train/epoch": float(self.epoch)}
        if self.scaler is not None:
            out["train/loss_scale"] = float(self.scaler.get_scale())
        return out

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Frame-weighted mean of every metric over (at most ``valid_max_batches``) dev batches.

        Ranks iterate in lockstep (a batch is used only while every rank still has one), since
        SIGReg all-reduces inside the forward pass.  Returns {} without a dev set.
        """
        if self.valid_dl is None:
            return {}
        rng = ck.rng_state()
        self.module.eval()
        keys: list[str] = []
        totals: dict[str, float] = {}
        frames = 0.0
        first: Batch | None = None
        it = iter(self.valid_dl)
        n = 0
        while self.tc.valid_max_batches <= 0 or n < self.tc.valid_max_batches:
            b = next(it, None)
            if all_reduce_max(1.0 if b is None else 0.0, self.env) > 0:
                break
            b = to_device(b, self.device)
            first = first if first is not None else b
            with self._autocast():
                _, metrics = self.module(b, self.step)
            w = float(b["feature_lens"].sum())
            frames += w
            for k, v in metrics.items():
                if k not in totals:
                    keys.append(k)
                totals[k] = totals.get(k, 0.0) + w * float(v)
            n += 1
        keys = sorted(keys)
        summed = all_reduce_sum(torch.tensor([totals.get(k, 0.0) for k in keys] + [frames],
                                             dtype=torch.float64), self.env)
        result = {k: float(v) / max(float(summed[-1]), 1.0) for k, v in zip(keys, summed[:-1].tolist())}
        if self.env.is_main and first is not None and self.logger is not None:
            self._log_images(first)
        self.module.train()
        ck.set_rng_state(rng)
        return result

    def _log_images(self, batch: Batch) -> None:
        assert self.logger is not None
        out = self.model(batch["features"], batch["feature_lens"])
        for i in range(min(self.tc.num_images, out.recon.shape[0])):
            n = int(batch["feature_lens"][i])
            target = batch.get("target_features", batch["features"])[i, :n]
            self.logger.log_spectrograms(self.step, f"valid/spectrogram_{i}", target, out.recon[i, :n])
        valid = torch.arange(out.z.shape[1], device=out.z.device)[None] < out.z_lengths[:, None]
        hists = {"latent/z": out.z[valid]}
        if out.z_mean is not None:
            hists["latent/z_mean"] = out.z_mean[valid]
            hists["latent/z_std"] = (0.5 * out.z_logvar[valid]).exp()
        self.logger.log_histograms(self.step, hists)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, as tensors and plain containers (weights_only-safe)."""
        samplers = [self.train_dl.sampler.state_dict() if self.train_dl is not None else None]
        rngs = [ck.rng_state()]
        if self.env.distributed:  # each rank's data position and random streams
            samplers, rngs = self._gather(samplers[0]), self._gather(rngs[0])
        return {
            "version": ck.CHECKPOINT_VERSION, "config": self.cfg.to_dict(), "step": self.step,
            "epoch": self.epoch, "model": self.model.state_dict(), "model_avg": self.model_avg, "avg_step": self.avg_step,
            "losses": self.composer.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "sampler": samplers[0], "sampler_per_rank": samplers, "rng": rngs[0], "rng_per_rank": rngs,
            "counters": dict(self.counters), "world_size": self.env.world_size,
        }

    def _gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(out, obj)
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (sampler fast-forwards to the saved position)."""
        self.model.load_state_dict(state["model"])
        self.composer.load_state_dict(state["losses"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.model_avg is not None and state.get("model_avg") is not None:
            self.model_avg = {k: v.to(self.model_avg[k].dtype) for k, v in state["model_avg"].items()}
            self.avg_step = int(state.get("avg_step", 0))
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.counters.update(state.get("counters", {}))
        sampler_state = state.get("sampler")
        per_rank = state.get("sampler_per_rank") or []
        if state.get("world_size", 1) == self.env.world_size and len(per_rank) == self.env.world_size:
            sampler_state = per_rank[self.env.rank]
        if self.train_dl is not None and sampler_state is not None:
            if sampler_state.get("world_size") != self.env.world_size:
                log.warning("checkpoint sampler was for world_size %s, now %d: restarting epoch %d",
                            sampler_state.get("world_size"), self.env.world_size, self.epoch)
                self.train_dl.sampler.set_epoch(self.epoch)
            else:
                self.train_dl.sampler.load_state_dict(copy.deepcopy(sampler_state))
                self.epoch = int(self.train_dl.sampler.epoch)
        rngs = state.get("rng_per_rank") or []
        if len(rngs) == self.env.world_size:
            ck.set_rng_state(rngs[self.env.rank])
        else:  # different world size: fresh but distinct per-rank streams
            ck.set_rng_state(state["rng"])
            if self.env.rank != 0:
                seed_everything(self.tc.seed + self.env.rank + 7919 * self.step)
        self._iter = None

    def save(self) -> Path | None:
        """Write ``checkpoints/ckpt-<step>.pt`` (main rank) and prune to keep-last-K."""
        state = self.state_dict()  # collective under DDP: every rank calls it
        path = None
        if self.env.is_main:
            ckpt_dir = self.exp_dir / "checkpoints"
            path = ck.save_checkpoint(ck.checkpoint_path(ckpt_dir, self.step), state)
            ck.prune_checkpoints(ckpt_dir, self.tc.keep_last_k)
            log.info("saved %s", path)
        if self.env.distributed:
            dist.barrier()
        return path

    def resume(self) -> bool:
        """Load the newest valid checkpoint of the experiment, if any; True when resumed.

        The main rank picks it (a damaged newer one is named, moved aside to ``.corrupt`` and
        skipped, see :func:`speechae.train.checkpoint.find_resumable`); the other ranks load the
        same step.
        """
        ckpt_dir = self.exp_dir / "checkpoints"
        path, state = None, None
        if self.env.is_main:
            path, state = ck.find_resumable(ckpt_dir, quarantine=True, map_location=self.device)
        step = int(all_reduce_max(float(state["step"]) if state is not None else -1.0, self.env))
        if step < 0:
            return False
        if not self.env.is_main:
            path = ck.checkpoint_path(ckpt_dir, step)
            state = ck.read_checkpoint_file(path, map_location=self.device)
        self.load_state_dict(state)
        log.info("resumed from %s (step %d, epoch %d)", path, self.step, self.epoch)
        return True

    # ------------------------------------------------------------------ loop

    def fit(self) -> int:
        """Train until ``max_steps`` or a stop signal; returns the process exit code
        (see :mod:`speechae.train.faults`)."""
        self.resume()
        if self.step >= self.tc.max_steps:
            log.info("already at step %d >= max_steps %d: nothing to do", self.step, self.tc.max_steps)
            return EXIT_OK
        # records of steps after the checkpoint (also of a run killed before its first one) are
        # redone: drop them so the log holds exactly one record per step
        self.logger = ExperimentLogger(self.exp_dir, self.env.is_main, self.tc.tensorboard, start_step=self.step)
        self.throughput = Throughput(self.step, self.tc.max_steps)
        self.stop.install()
        try:
            return self._loop()
        except NonFiniteError as e:
            log.error("%s", e)
            return EXIT_NONFINITE
        except BaseException as e:
            self._dump("exception", e)
            raise
        finally:
            self.stop.uninstall()
            self.logger.close()

    def _loop(self) -> int:
        tc = self.tc
        log.info("training from step %d to %d (world size %d, device %s)", self.step, tc.max_steps,
                 self.env.world_size, self.device)
        while self.step < tc.max_steps:
            batches = [self.next_batch() for _ in range(tc.accum_grad)]
            self._last_batch = batches
            audio_before = self.counters["audio_seconds"]
            metrics = self.train_step(batches if tc.accum_grad > 1 else batches[0])
            assert self.throughput is not None
            self.throughput.add_audio(self.counters["audio_seconds"] - audio_before)
            if self.counters["consecutive_nonfinite"] >= tc.max_consecutive_nonfinite:
                self._dump("nonfinite", None)
                raise NonFiniteError(
                    f"{int(self.counters['consecutive_nonfinite'])} consecutive non-finite steps at step "
                    f"{self.step}: stopping. Batch and model saved under {self.exp_dir / 'debug'}; lower "
                    f"the lr, enable grad_clip or use amp=none.")
            if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                self._log_train(metrics)
            if tc.valid_every > 0 and (self.step % tc.valid_every == 0 or self.step == tc.max_steps):
                self._log_valid()
            stop = all_reduce_max(1.0 if self.stop.requested else 0.0, self.env) > 0
            if stop or self.step % tc.save_every == 0 or self.step == tc.max_steps:
                self.save()
            if stop:
                log.warning("stopped by signal at step %d; checkpoint written, re-run the same "
                            "command to resume (exit code %d)", self.step, EXIT_INTERRUPTED)
                return EXIT_INTERRUPTED
        log.info("finished %d steps", self.step)
        return EXIT_OK

    def _log_train(self, metrics: dict[str, float]) -> None:
        assert self.throughput is not None and self.logger is not None
        metrics = dict(metrics)
        metrics.update(self.throughput.report(self.step))
        metrics["train/peak_memory_mb"] = peak_memory_mb(self.device)
        metrics["train/audio_seconds"] = self.counters["audio_seconds"]
        self.logger.log_metrics(self.step, metrics)
        losses = " ".join(f"{k[5:]}={v:.4g}" for k, v in metrics.items() if k.startswith("loss/"))
        log.info("step %d/%d | %s | lr %.3g | gnorm %.3g | %.2f steps/s | %.1f audio-s/s | ETA %s",
                 self.step, self.tc.max_steps, losses, metrics["train/lr"], metrics["train/grad_norm"],
                 metrics["train/steps_per_s"], metrics["train/audio_s_per_s"],
                 format_duration(metrics["train/eta_s"]))

    def _log_valid(self) -> None:
        t0 = time.perf_counter()
        result = self.validate()
        if not result:
            return
        assert self.logger is not None
        self.logger.log_metrics(self.step, result, prefix="valid/")
        losses = " ".join(f"{k[5:]}={v:.4g}" for k, v in result.items() if k.startswith("loss/"))
        log.info("valid step %d | %s | %.1fs", self.step, losses, time.perf_counter() - t0)
        if self.throughput is not None:  # keep validation time out of the training rate
            self.throughput.t_last += time.perf_counter() - t0

    def _dump(self, reason: str, error: BaseException | None) -> None:
        try:
            dump_debug(self.exp_dir, self.step, self.env.rank, reason, self._last_batch,
                       self.model.state_dict(), self.cfg.to_dict(), error)
        except Exception as e:  # never mask the original failure
            log.error("could not write the debug dump: %s", e)
