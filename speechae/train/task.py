"""Training tasks: what one experiment trains, separated from how the loop runs.

The :class:`~speechae.train.trainer.Trainer` owns everything a run needs whatever it trains:
distributed set-up, the data position, logging, validation scheduling, checkpoints and exact
resume, the running average of the primary module, mixed precision, non-finite handling and
signals.  A :class:`Task` owns the rest (as audiocraft's solvers and descript-audio-codec's
train step do):

* named modules (``self.modules``): every one is saved in each checkpoint;
* named optimizers and their schedulers (``self.optimizers`` / ``self.schedulers``, same keys);
* the training step: one or several updates per batch (e.g. a discriminator update, then a
  generator update), each done through :meth:`Updater.update`, which applies autocast,
  gradient accumulation, DDP ``no_sync``, clipping, the all-rank non-finite check (a skipped
  update changes nothing) and the scheduler and optimizer step;
* validation metrics and TensorBoard media.

Tasks are registered by name in :data:`TASKS`; the experiment config's ``task:`` key picks one
(``autoencoder`` when absent) and its ``config_class`` parses the rest of the config.  A task
class needs: ``config_class``, ``primary`` (the module that is averaged and stored as the
checkpoint's ``model``), ``primary_optimizer`` (its lr and grad norm are logged as
``train/lr``/``train/grad_norm``; others as ``train/<name>/lr``), and the methods below.

Scheduler protocol (``speechae.optim`` schedulers follow it): ``step(step, epoch)`` sets the lr
for the coming update, ``get_last_lr()``, ``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence

import torch
from torch import nn

from speechae.registry import Registry

Batch = Mapping[str, Any]
LossFn = Callable[[Batch], "tuple[torch.Tensor, Mapping[str, Any]]"]

TASKS: Registry[type["Task"]] = Registry("task", builtins=("speechae.train.ae_task", "speechae.train.vocoder_task",
                                                            "speechae.train.uniwav_task"))


class Updater(Protocol):
    """What the trainer offers a task for its updates (implemented by the Trainer)."""

    def update(self, name: str | Sequence[str], batches: Sequence[Batch], loss_fn: LossFn,
               module: nn.Module | None = None) -> dict[str, float]:
        """One update of optimizer ``name`` (or of several, on one backward, when ``name`` is a
        sequence of names): for every micro-batch ``b``, ``loss, metrics =
        loss_fn(b)`` under autocast, backward of ``loss / len(batches)`` (DDP-synchronised on the
        last micro-batch only, when ``module`` is a DDP wrapper); then clipping, the all-rank
        finite check, scheduler and optimizer step.  Returns the metrics averaged over the
        micro-batches plus the update's grad norm (``train/grad_norm`` for the primary
        optimizer, ``train/<name>/grad_norm`` otherwise)."""
        ...


class Task:
    """Base class of a training task (see the module docstring).

    Args:
        cfg: the parsed experiment config (an instance of ``config_class``).
        device: where the modules live.
        distributed: True under DDP (the task wraps the modules that need gradient sync in
            :meth:`wrap`).
    """

    config_class: ClassVar[type]
    primary: ClassVar[str] = "model"
    primary_optimizer: ClassVar[str] = "model"

    def __init__(self, cfg: Any, device: torch.device, distributed: bool = False) -> None:
        self.cfg, self.device, self.distributed = cfg, device, distributed
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}

    # ---------------------------------------------------------------- set-up (class level)

    @classmethod
    def check_inputs(cls, cfg: Any) -> None:
        """Raise ConfigError listing every problem in the config's inputs (main rank, before
        anything is built).  Default: nothing to check."""

    @classmethod
    def build_dataloaders(cls, cfg: Any, world_size: int, rank: int) -> tuple[Any, Any]:
        """(train, dev or None) DataLoaders for this rank; their ``sampler`` must have
        ``state_dict``/``load_state_dict``/``set_epoch`` (Lhotse samplers do)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- per run

    def wrap(self, wrap_fn: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap the modules whose gradients must be synchronised (``wrap_fn`` returns a DDP
        wrapper); called once under DDP, after the modules are on their device."""

    def set_batch_count(self, step: int, batch_count: float) -> None:
        """Advance step-dependent model schedules before an update (default: none)."""

    def train_step(self, batches: Sequence[Batch], step: int, updater: Updater) -> dict[str, float]:
        """One training step on ``batches`` (``accum_grad`` micro-batches, on the device);
        every parameter change goes through ``updater.update``.  Returns float metrics."""
        raise NotImplementedError

    def valid_metrics(self, batch: Batch, step: int) -> dict[str, Any]:
        """Metrics of one dev batch under ``torch.no_grad`` (weighted by the batch's frames)."""
        raise NotImplementedError

    def log_media(self, batch: Batch, step: int, logger: Any) -> None:
        """TensorBoard images / audio / histograms for the first dev batch (main rank)."""

    def describe(self) -> str:
        """One log line: what is trained and its size."""
        sizes = ", ".join(f"{n} {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M" for n, m in self.modules.items())
        return f"task {type(self).__name__}: {sizes} parameters"

    def train(self, mode: bool = True) -> None:
        """Set every module's train/eval mode."""
        for m in self.modules.values():
            m.train(mode)


def task_class(name: str) -> type[Task]:
    """The task registered as ``name`` (ConfigError listing the choices otherwise)."""
    return TASKS.get(name)


def task_name_of(config: Mapping[str, Any]) -> str:
    """The task a plain config dict asks for (``autoencoder`` when it has no ``task`` key)."""
    name = config.get("task", "autoencoder") if isinstance(config, Mapping) else "autoencoder"
    return str(name)
