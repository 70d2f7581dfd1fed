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
from speechae.train import checkpoint as ck
from speechae.train.config import adjusted_batch_count
from speechae.train.distributed import DistEnv, all_reduce_max, all_reduce_sum
from speechae.train.faults import (EXIT_INTERRUPTED, EXIT_NONFINITE, EXIT_OK, NonFiniteError, StopFlag,
                                   dump_debug)
from speechae.train.logger import ExperimentLogger, Throughput, format_duration, peak_memory_mb
from speechae.train.task import LossFn, Task, task_class

log = logging.getLogger("speechae.train")

Batch = Mapping[str, Any]
FRAME_SHIFT_S = 0.01  # 100 Hz fbank


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


def build_dataloaders(cfg: Any, env: DistEnv) -> tuple[Any, Any, None]:
    """Train and dev DataLoaders of ``cfg``'s task for this rank (the sampler shards by
    world_size/rank); the third value is kept for callers that unpack three."""
    train_dl, valid_dl = task_class(cfg.task).build_dataloaders(cfg, env.world_size, env.rank)
    return train_dl, valid_dl, None


class Trainer:
    """The training loop around a :class:`~speechae.train.task.Task` (the config's ``task``).

    Owns the data position, the scaler, the running average of the task's primary module,
    checkpoints, logging, validation scheduling and fault handling; the task owns the modules,
    optimizers and the step (see :mod:`speechae.train.task`).

    Args:
        cfg: the resolved experiment config.
        exp_dir: experiment directory (created).
        env: distributed placement (see :func:`speechae.train.distributed.init_distributed`).
        train_dl / valid_dl: DataLoaders whose ``sampler`` is a Lhotse sampler (valid may be None).
    """

    def __init__(self, cfg: Any, exp_dir: str | Path, env: DistEnv, train_dl: Any = None,
                 valid_dl: Any = None) -> None:
        self.cfg, self.env, self.exp_dir = cfg, env, Path(exp_dir)
        self.tc = cfg.train
        self.device = env.device
        if self.tc.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs a GPU; use bf16 or none on CPU")
        seed_everything(self.tc.seed)  # identical initial weights on every rank
        self.task: Task = task_class(cfg.task)(cfg, self.device, env.distributed)
        if env.distributed:
            self.task.wrap(lambda m: DistributedDataParallel(
                m, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.tc.find_unused_parameters))
        self.scaler = torch.amp.GradScaler("cuda") if self.tc.amp == "fp16" else None
        primary = self.task.modules[self.task.primary]
        self.model_avg = ck.init_average(primary) if (self.tc.average_every > 0 and env.is_main) else None
        self.avg_step = 0
        seed_everything(self.tc.seed + env.rank)  # per-rank dropout / noise streams
        self.train_dl, self.valid_dl = train_dl, valid_dl
        self.step, self.epoch = 0, 0
        self.counters: dict[str, float] = {"nonfinite_steps": 0, "consecutive_nonfinite": 0,
                                           "audio_seconds": 0.0}
        self._iter: Iterator | None = None
        self._skipped = False
        self.stop = StopFlag()
        self.logger: ExperimentLogger | None = None
        self.throughput: Throughput | None = None
        self._last_batch: Any = None

    # Short-hands for the autoencoder task (tests, benchmarks and tools use them).
    @property
    def model(self) -> nn.Module:
        """The task's primary module (the autoencoder for ``task: autoencoder``)."""
        return self.task.modules[self.task.primary]

    @property
    def composer(self) -> nn.Module:
        """The autoencoder task's loss composer."""
        return self.task.modules["losses"]

    @property
    def module(self) -> nn.Module:
        """The autoencoder task's model + composer module (unwrapped)."""
        return getattr(self.task, "module")

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The primary optimizer."""
        return self.task.optimizers[self.task.primary_optimizer]

    @property
    def scheduler(self) -> Any:
        """The primary optimizer's scheduler."""
        return self.task.schedulers[self.task.primary_optimizer]

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

    def train_step(self, batch: Batch | Sequence[Batch]) -> dict[str, float]:
        """One training step of the task on ``batch`` (or a list of ``accum_grad`` micro-batches).

        An update whose loss or gradient norm is non-finite on any rank is skipped on every rank;
        a step with a skipped update counts in ``train/nonfinite_steps``.  Returns float metrics
        (``loss/*``, ``weight/*``, ``train/*``).
        """
        batches = [batch] if isinstance(batch, Mapping) else list(batch)
        batches = [to_device(b, self.device) for b in batches]
        self.task.train()
        self.task.set_batch_count(self.step, adjusted_batch_count(
            self.step, self.cfg.data.max_duration, self.env.world_size, self.tc.accum_grad, self.tc.ref_duration))
        self._skipped = False
        metrics = self.task.train_step(batches, self.step, self)
        for b in batches:
            self.counters["audio_seconds"] += float(b["feature_lens"].sum()) * FRAME_SHIFT_S * self.env.world_size
        if self.scaler is not None:
            self.scaler.update()
        self._after_step(self._skipped)
        self.step += 1
        metrics.update(self._step_metrics(self._skipped))
        return metrics

    def update(self, name: str | Sequence[str], batches: Sequence[Batch], loss_fn: LossFn,
               module: nn.Module | None = None) -> dict[str, float]:
        """One update of the task's optimizer ``name`` -- or of several optimizers on one
        backward (a tuple of names: e.g. an autoencoder and its waveform head with their own
        optimizers); see :class:`speechae.train.task.Updater`."""
        names = [name] if isinstance(name, str) else list(name)
        optimizers = [self.task.optimizers[n] for n in names]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        finite = True
        can_defer = self.env.distributed and isinstance(module, DistributedDataParallel)
        for i, b in enumerate(batches):
            sync = i == len(batches) - 1 or not can_defer
            ctx = contextlib.nullcontext() if sync else module.no_sync()
            with ctx:
                with self._autocast():
                    loss, metrics = loss_fn(b)
                finite = finite and bool(torch.isfinite(loss.detach()))
                scaled = loss.float() / len(batches)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) / len(batches)
        norms = [self._clip(opt) for opt in optimizers]
        if self.scaler is None:
            finite = finite and all(math.isfinite(g) for g in norms)
        skip = all_reduce_max(0.0 if finite else 1.0, self.env) > 0
        for n, opt, grad_norm in zip(names, optimizers, norms):
            scheduler = self.task.schedulers.get(n)
            if skip:
                opt.zero_grad(set_to_none=True)
            else:
                if scheduler is not None:
                    scheduler.step(self.step, self.epoch)
                if self.scaler is not None:
                    self.scaler.step(opt)
                else:
                    opt.step()
            prefix = "train/" if n == self.task.primary_optimizer else f"train/{n}/"
            sums[prefix + "grad_norm"] = grad_norm
            if scheduler is not None:
                sums[prefix + "lr"] = float(scheduler.get_last_lr()[0])
        self._skipped = self._skipped or skip
        return sums

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.tc.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.tc.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _clip(self, optimizer: torch.optim.Optimizer) -> float:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        max_norm = self.tc.grad_clip if self.tc.grad_clip > 0 else float("inf")
        if not params:
            return 0.0
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm, error_if_nonfinite=False))

    def _after_step(self, skipped: bool) -> None:
        if skipped:
            self.counters["nonfinite_steps"] += 1
            self.counters["consecutive_nonfinite"] += 1
            log.warning("step %d: non-finite loss or gradient; update skipped (%d in a row, %d total)",
                        self.step, self.counters["consecutive_nonfinite"], self.counters["nonfinite_steps"])
            return
        self.counters["consecutive_nonfinite"] = 0
        if self.model_avg is not None and (self.step + 1) % self.tc.average_every == 0:
            ck.update_average(self.model_avg, self.model, self.step + 1, self.tc.average_every)
            self.avg_step = self.step + 1

    def _step_metrics(self, skipped: bool) -> dict[str, float]:
        out = {"train/skipped": float(skipped), "train/nonfinite_steps": self.counters["nonfinite_steps"],
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
        self.task.train(False)
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
                metrics = self.task.valid_metrics(b, self.step)
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
            self.task.log_media(first, self.step, self.logger)
        self.task.train()
        ck.set_rng_state(rng)
        return result

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, as tensors and plain containers (weights_only-safe)."""
        samplers = [self.train_dl.sampler.state_dict() if self.train_dl is not None else None]
        rngs = [ck.rng_state()]
        if self.env.distributed:  # each rank's data position and random streams
            samplers, rngs = self._gather(samplers[0]), self._gather(rngs[0])
        modules = {n: m.state_dict() for n, m in self.task.modules.items()}
        return {
            "version": ck.CHECKPOINT_VERSION, "config": self.cfg.to_dict(), "task": self.cfg.task,
            "step": self.step, "epoch": self.epoch, "modules": modules,
            # the primary module again under the key every loader reads (storage is shared)
            "model": modules[self.task.primary], "model_avg": self.model_avg, "avg_step": self.avg_step,
            "optimizers": {n: o.state_dict() for n, o in self.task.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.task.schedulers.items()},
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
        modules = state.get("modules")
        optimizers, schedulers = state.get("optimizers"), state.get("schedulers")
        if modules is None:  # written before tasks: one model, its composer, one optimizer
            modules = {"model": state["model"], "losses": state["losses"]}
            optimizers, schedulers = {"model": state["optimizer"]}, {"model": state["scheduler"]}
        missing = sorted(set(self.task.modules) - set(modules)) + sorted(set(self.task.optimizers) - set(optimizers))
        if missing:
            raise ck.CheckpointError(self.exp_dir / "checkpoints", f"the checkpoint holds no state for {missing} "
                                     f"(written by another task?)")
        for name, module in self.task.modules.items():
            module.load_state_dict(modules[name])
        for name, opt in self.task.optimizers.items():
            opt.load_state_dict(optimizers[name])
        for name, sched in self.task.schedulers.items():
            sched.load_state_dict(schedulers[name])
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
