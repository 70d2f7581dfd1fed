"""Experiment configuration: one YAML file with ``model``, ``losses``, ``optim``, ``data`` and
``train`` blocks, loaded strictly (unknown keys are errors) with ``base:`` inheritance and
``key=value`` command-line overrides.

The resolved config (every default filled in) is written to ``<exp_dir>/config.yaml`` and into
every checkpoint as a plain dict, so a checkpoint rebuilds its model on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from speechae.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from speechae.data.datamodule import DataConfig
from speechae.losses import LossConfig
from speechae.models import ModelConfig
from speechae.models.discriminators import DiscriminatorConfig
from speechae.models.vocoder import VocoderConfig
from speechae.optim import OptimConfig


@dataclass
class TrainConfig:
    """Settings of the training loop (the ``train:`` block).

    Steps count optimiser updates; one update consumes ``accum_grad`` batches per rank.
    ``average_every``: every that many steps the running average of all weights since step 0
    is updated (icefall's ``model_avg``: ``avg = avg * (1 - p/s) + cur * p/s`` with period p at
    step s); 0 disables it.  ``max_consecutive_nonfinite``: after that many non-finite steps in
    a row the batch and model are dumped to ``<exp>/debug`` and training stops.
    """

    max_steps: int = 1000
    log_every: int = 10
    valid_every: int = 200
    save_every: int = 200
    keep_last_k: int = 3
    grad_clip: float = 0.0  # max global grad norm; 0 = no clipping (ScaledAdam clips itself)
    accum_grad: int = 1
    amp: Literal["none", "bf16", "fp16"] = "none"
    # torch.compile the encoder and decoder (SpeechAE.compile_parts, static shapes); not worth
    # it on a 1-2 thread CPU (docs/performance.md).  Draws different random numbers than eager.
    compile: bool = False
    seed: int = 42
    average_every: int = 10
    max_consecutive_nonfinite: int = 20
    valid_max_batches: int = 20  # cap per validation pass (per rank); 0 = the whole dev set
    num_images: int = 2  # spectrogram pairs written to TensorBoard at each validation
    num_threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    ddp_backend: Literal["auto", "nccl", "gloo"] = "auto"
    find_unused_parameters: bool = True  # layer skipping and log-only heads leave params unused
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensorboard: bool = True
    # Zipformer's ScheduledFloat schedules (layer skipping, bypass, balancer limits) are defined
    # over batches of ref_duration seconds of audio in all; the trainer gives the model
    # step * max_duration * world_size * accum_grad / ref_duration (icefall's adjusted batch
    # count, reference 600 s), so they advance with the data seen, not the number of updates.
    ref_duration: float = 600.0


def adjusted_batch_count(step: int, max_duration: float, world_size: int, accum_grad: int,
                         ref_duration: float) -> float:
    """Duration-normalised batch count for the Zipformer schedules: ``step`` updates of
    ``max_duration`` s per rank and micro-batch, over ``world_size`` ranks, in units of
    ``ref_duration`` s (icefall ``get_adjusted_batch_count``)."""
    if ref_duration <= 0:
        raise ValueError(f"train.ref_duration must be > 0, got {ref_duration}")
    return float(step) * float(max_duration) * int(world_size) * int(accum_grad) / float(ref_duration)


# What a resumed run may change without --allow-config-change: these keys decide how long,
# how verbosely and where training runs, never what the model learns at a given step.
RESUME_SAFE_KEYS = frozenset({
    "train.max_steps", "train.log_every", "train.valid_every", "train.save_every", "train.keep_last_k",
    "train.valid_max_batches", "train.num_images", "train.num_threads", "train.tensorboard",
    "train.max_consecutive_nonfinite", "train.device", "train.ddp_backend", "train.find_unused_parameters",
    "data.num_workers",
})


@dataclass
class WaveformConfig:
    """End-to-end waveform decoding for an autoencoder arm (the ``waveform:`` block), in the
    manner of EnCodec / DAC: a Vocos-style head turns the decoder's log-mel into audio, trained
    jointly with the autoencoder (gradients reach the encoder) against MPD + MRD discriminators.

    Per step and utterance a random ``segment_seconds`` window (HiFi-GAN / VITS train their
    decoders on windows) of the reconstruction is vocoded and compared with the same window of
    the recording: ``weight * (mel_weight * mel-L1 + stft_weight * MR-STFT [+ adv_weight * GAN +
    fm_weight * feature matching from adv_start_step])`` is added to the autoencoder's loss;
    the discriminator has its own update and AdamW, the head its own AdamW (``lr``).  Off by
    default: on a CPU it multiplies the step time (docs/vocoder.md).
    """

    enabled: bool = False
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    segment_seconds: float = 1.0
    weight: float = 0.1
    mel_weight: float = 45.0
    stft_weight: float = 2.5
    adv_weight: float = 1.0
    fm_weight: float = 2.0
    gan: Literal["hinge", "lsgan"] = "hinge"
    adv_start_step: int = 0
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.8, 0.99])


@dataclass
class ExperimentConfig:
    """Everything one autoencoder training run needs; each block is read only by its own
    builder.  ``task`` names the training task (:data:`speechae.train.task.TASKS`); other tasks
    (e.g. ``vocoder``) have config classes of their own with the same ``data`` and ``train``."""

    task: str = "autoencoder"
    # modules imported before the config is parsed: they register a project's own bottlenecks,
    # decoders, regularizers, objectives or tasks (docs/extending.md)
    imports: list[str] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    waveform: WaveformConfig = field(default_factory=WaveformConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data (YAML/JSON/``torch.load(weights_only=True)``-safe) form."""
        return to_dict(self)


def import_extensions(modules: Sequence[str] | None) -> None:
    """Import the modules of a config's ``imports:`` list (their registrations run)."""
    import importlib

    for name in modules or ():
        try:
            importlib.import_module(str(name))
        except ImportError as e:
            raise ConfigError(f"config.imports: cannot import {name!r} ({e}); is it on PYTHONPATH?") from None


def experiment_config_from_dict(data: Mapping[str, Any]) -> Any:
    """Strictly parse a full experiment config (unknown keys raise ConfigError) with the config
    class of its task (``task:``, default ``autoencoder``)."""
    from speechae.train.task import task_class, task_name_of

    import_extensions(data.get("imports") if isinstance(data, Mapping) else None)
    cfg = from_dict(task_class(task_name_of(data)).config_class, data, "config")
    t = cfg.train
    for name in ("max_steps", "log_every", "accum_grad"):
        if getattr(t, name) < 1:
            raise ConfigError(f"config.train.{name} must be >= 1, got {getattr(t, name)}")
    if t.max_consecutive_nonfinite < 1:
        raise ConfigError("config.train.max_consecutive_nonfinite must be >= 1")
    return cfg


def load_experiment_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Any:
    """Load ``path`` (following ``base:``), apply ``key=value`` overrides, parse strictly."""
    data = load_yaml(path) if path is not None else {}
    return experiment_config_from_dict(apply_overrides(data, overrides))


def dump_config(cfg: Any) -> str:
    """The resolved config as YAML text (block order kept)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
