"""The UniWav task (``task: uniwav``): an encoder trained by masked prediction of an EMA
teacher's online-codebook ids and a flow-matching decoder, jointly from scratch (Liu et al.,
ICLR 2025, arXiv 2503.00733; Sec. 2 and Fig. 1).

Modules: ``model`` (:class:`~speechae.models.uniwav.UniWav`: student encoder, layer weights,
flow decoder; averaged and stored as the checkpoint's ``model``, rebuilt by
:func:`speechae.train.checkpoint.load_model_from_checkpoint`), ``losses`` (the K codebooks and
the K prediction heads) and ``teacher`` (the EMA encoder; no optimizer).  One optimizer
``model`` over model + heads.  Per step::

    mask  = span_mask(lengths)                           # seeded by (seed, step, rank)
    codes = codebooks(instance_norm(teacher(x).stacks[top-K]))   # codebooks take an EMA step
    enc, layers = student(x with mask)
    L = w_u * CE(heads(enc.x), codes | masked frames) + w_f * FM(decoder | weighted sum(layers))
    update model + heads;  teacher <- d(step) teacher + (1 - d(step)) student encoder

Noise, flow times, condition dropout and masks come from a generator seeded by (seed, step,
rank), so a resumed run is bit-identical.  The teacher runs in eval mode (no dropout, no layer
skipping): its targets are a deterministic function of its weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from speechae.config import ConfigError, to_dict
from speechae.data.datamodule import DataConfig, Labels, load_cuts, make_dataloader, subset_fraction
from speechae.losses.builder import MaskingConfig
from speechae.losses.ema_codebook import CodebookTargets, ema_update_, teacher_decay
from speechae.losses.masking import latent_frame_mask, lengths_to_mask, resample_lengthwise, span_mask
from speechae.models.scaling import iter_scheduled_floats, refresh_schedules
from speechae.models.uniwav import UniWav, UniWavModelConfig, build_uniwav
from speechae.optim import OptimConfig, build_optimizer
from speechae.train.config import TrainConfig
from speechae.train.task import TASKS, Batch, Task, Updater

WEIGHT_KEYS = ("masked_units", "flow")


@dataclass
class TeacherConfig:
    """EMA teacher decay: linear from ``decay_start`` to ``decay_end`` over ``decay_steps``
    updates, then constant (DinoSR Sec. 3.1: 0.999 -> 0.9999 over the first 30k updates;
    UniWav follows DinoSR)."""

    decay_start: float = 0.999
    decay_end: float = 0.9999
    decay_steps: int = 30000


@dataclass
class UnitsConfig:
    """Online codebooks (``losses.masked_units``; the name keeps the recipes' override
    ``losses.masked_units.num_classes`` meaningful: here it is the codebook size V).

    ``top_k``: the teacher's last K Zipformer stacks give targets (DinoSR: top 8 of 12 layers;
    here 4 of 6 stacks, the same two thirds).  ``decay``: codebook EMA tau (DinoSR 0.9).
    ``distance``: nearest codeword by l2 (DinoSR) or cosine."""

    num_classes: int = 256
    top_k: int = 4
    decay: float = 0.9
    distance: Literal["l2", "cosine"] = "l2"
    seed: int = 0


@dataclass
class UniWavLossConfig:
    """The ``losses:`` block.  ``weights``: ``{masked_units, flow}`` (UniWav sums the encoder
    and decoder losses with weight 1 each).  ``decoder_view``: the decoder is conditioned on
    the student's masked-input pass (``masked``, one encoder pass per step) or on a second,
    unmasked pass (``clean``: the view it gets at inference, at twice the encoder cost)."""

    masking: MaskingConfig = field(default_factory=MaskingConfig)
    masked_units: UnitsConfig = field(default_factory=UnitsConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    weights: dict[str, float] = field(default_factory=lambda: {"masked_units": 1.0, "flow": 1.0})
    decoder_view: Literal["masked", "clean"] = "masked"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(WEIGHT_KEYS))
        if unknown:
            raise ConfigError(f"losses.weights: unknown term(s) {unknown}; the uniwav task has {list(WEIGHT_KEYS)}")
        m = self.masking
        if not 0.0 <= m.mask_prob <= 1.0 or m.span < 1:
            raise ConfigError(f"losses.masking: mask_prob must be in [0, 1] and span >= 1, got {m}")


@dataclass
class UniWavExperimentConfig:
    """A UniWav training run: ``task: uniwav`` plus the blocks above; ``data`` and ``train``
    are read by the generic trainer as for the autoencoder."""

    task: str = "uniwav"
    imports: list[str] = field(default_factory=list)  # as ExperimentConfig.imports
    model: UniWavModelConfig = field(default_factory=UniWavModelConfig)
    losses: UniWavLossConfig = field(default_factory=UniWavLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (YAML and ``torch.load(weights_only=True)`` safe)."""
        return to_dict(self)


def top_layers(enc: Any, k: int) -> list[torch.Tensor]:
    """The last ``k`` stacks' states of an encoder output (``return_stacks=True``), resampled to
    its output frames (B, T_z, C_l)."""
    t_z = enc.x.shape[1]
    return [resample_lengthwise(st.x, st.lengths, enc.lengths, t_z) for st in enc.stacks[-k:]]


class UniWavModule(nn.Module):
    """Model + prediction heads in one module (what DDP wraps): ``forward(batch, mask, codes,
    generator, view)`` -> (total loss, metrics)."""

    def __init__(self, model: UniWav, objective: CodebookTargets, weights: dict[str, float]) -> None:
        super().__init__()
        self.model, self.objective, self.weights = model, objective, weights

    def forward(self, batch: Batch, mask: torch.Tensor, codes: list[torch.Tensor], generator: torch.Generator,
                view: str) -> tuple[torch.Tensor, dict[str, Any]]:  # noqa: D102
        feats, lens = batch["features"], batch["feature_lens"]
        enc, hs = self.model.layers(feats, lens, mask)
        select = latent_frame_mask(mask, lens, enc.x.shape[1], self.model.frame_ratio)
        select = select & lengths_to_mask(enc.lengths, enc.x.shape[1])
        l_units, metrics = self.objective(enc.x, codes, select)
        if view == "clean":
            enc, hs = self.model.layers(feats, lens)
        cond = self.model.condition(hs, enc.lengths)
        target = batch.get("target_features", feats)
        l_flow, fm = self.model.decoder.loss(target, lens, cond, generator=generator)
        w_u, w_f = self.weights.get("masked_units", 1.0), self.weights.get("flow", 1.0)
        total = w_u * l_units + w_f * l_flow
        metrics.update(fm)
        metrics.update({"loss/masked_units": l_units.detach(), "loss/flow": l_flow.detach(),
                        "loss/total": total.detach()})
        return total, metrics


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@TASKS.register("uniwav")
class UniWavTask(Task):
    """EMA-teacher masked prediction + flow-matching decoder (module docstring)."""

    config_class = UniWavExperimentConfig
    primary = "model"
    primary_optimizer = "model"

    def __init__(self, cfg: UniWavExperimentConfig, device: torch.device, distributed: bool = False) -> None:
        super().__init__(cfg, device, distributed)
        lc = cfg.losses
        self.model = build_uniwav(cfg.model).to(device)
        k = lc.masked_units.top_k
        if not 1 <= k <= len(self.model.layer_dims):
            raise ConfigError(f"losses.masked_units.top_k={k}: the encoder has {len(self.model.layer_dims)} stacks")
        u = lc.masked_units
        self.objective = CodebookTargets(self.model.layer_dims[-k:], self.model.encoder.output_dim, u.num_classes,
                                         u.decay, u.distance, u.seed).to(device)
        self.teacher = copy.deepcopy(self.model.encoder).requires_grad_(False)
        self.module = UniWavModule(self.model, self.objective, dict(lc.weights))
        self.wrapped: nn.Module = self.module
        self.modules = {"model": self.model, "losses": self.objective, "teacher": self.teacher}
        opt, sched = build_optimizer(list(self.module.named_parameters()), cfg.optim)
        self.optimizers, self.schedulers = {"model": opt}, {"model": sched}

    # ---------------------------------------------------------------- set-up

    @classmethod
    def check_inputs(cls, cfg: UniWavExperimentConfig) -> None:
        """The cut manifests and the label directory exist (no unit targets are needed)."""
        d, problems = cfg.data, []
        if not d.train_cuts or not Path(d.train_cuts).exists():
            problems.append(f"data.train_cuts: {d.train_cuts!r} does not exist (run the data stages 0-3)")
        if d.dev_cuts and not Path(d.dev_cuts).exists():
            problems.append(f"data.dev_cuts: {d.dev_cuts!r} does not exist (set data.dev_cuts='' to go without)")
        if d.lang_dir and not Path(d.lang_dir).is_dir():
            problems.append(f"data.lang_dir: {d.lang_dir!r} is not a directory")
        if problems:
            raise ConfigError("uniwav inputs:\n  " + "\n  ".join(problems))

    @classmethod
    def build_dataloaders(cls, cfg: UniWavExperimentConfig, world_size: int, rank: int) -> tuple[Any, Any]:
        """The autoencoder's batches (features, lengths, labels); no unit targets are read."""
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
        for sf in iter_scheduled_floats(self.teacher):
            sf.batch_count = float(batch_count)
        refresh_schedules(self.teacher)

    def train(self, mode: bool = True) -> None:
        """Student and heads follow ``mode``; the teacher always runs in eval mode."""
        self.model.train(mode)
        self.objective.train(mode)
        self.teacher.eval()

    # ---------------------------------------------------------------- training

    def _generator(self, step: int, salt: int = 0) -> torch.Generator:
        seed = self.cfg.losses.masking.seed
        return torch.Generator().manual_seed(((seed * 1_000_003 + int(step)) * 1009 + _rank()) * 7 + salt)

    def _targets(self, batch: Batch, update: bool) -> list[torch.Tensor]:
        with torch.no_grad():
            enc = self.teacher(batch["features"], batch["feature_lens"], return_stacks=True)
            return self.objective.targets(top_layers(enc, self.cfg.losses.masked_units.top_k), enc.lengths, update)

    def _mask(self, batch: Batch, g: torch.Generator) -> torch.Tensor:
        m = self.cfg.losses.masking
        feats = batch["features"]
        return span_mask(batch["feature_lens"].to(feats.device), feats.shape[1], m.mask_prob, m.span, generator=g,
                         realised=m.realised, min_spans=m.min_spans)

    def _loss(self, batch: Batch, step: int, micro: int, update: bool, module: nn.Module) -> tuple[torch.Tensor, dict]:
        g = self._generator(step, micro)
        mask = self._mask(batch, g)
        codes = self._targets(batch, update)
        return module(batch, mask, codes, g, self.cfg.losses.decoder_view)

    def train_step(self, batches: Sequence[Batch], step: int, updater: Updater) -> dict[str, float]:
        """One update of student + heads, then the teacher's EMA step."""
        index = {id(b): i for i, b in enumerate(batches)}
        metrics = updater.update("model", batches, lambda b: self._loss(b, step, index[id(b)], True, self.wrapped),
                                 module=self.wrapped)
        t = self.cfg.losses.teacher
        decay = teacher_decay(step + 1, t.decay_start, t.decay_end, t.decay_steps)
        ema_update_(self.teacher, self.model.encoder, decay)
        metrics["train/teacher_decay"] = decay
        return metrics

    # ---------------------------------------------------------------- evaluation

    def valid_metrics(self, batch: Batch, step: int) -> dict[str, Any]:
        """The training losses (codebooks not updated, fixed masks and noise) and the mel L1 of
        a mel sampled with the default sampler settings."""
        _, metrics = self._loss(batch, 0, 0, False, self.module)
        lens = batch["feature_lens"]
        recon = self.model(batch["features"], lens).recon
        target = batch.get("target_features", batch["features"])
        valid = lengths_to_mask(lens, target.shape[1]).unsqueeze(-1).to(recon.dtype)
        metrics["metric/mel_l1_sampled"] = ((recon - target).abs() * valid).sum() / (valid.sum() * target.shape[-1])
        return metrics

    def log_media(self, batch: Batch, step: int, logger: Any) -> None:
        """Target / sampled-mel spectrogram pairs and the layer weights."""
        from speechae.train.ae_task import log_spectrogram_pairs

        out = self.model(batch["features"], batch["feature_lens"])
        log_spectrogram_pairs(logger, step, batch, out.recon, self.cfg.train.num_images)
        logger.log_histograms(step, {"uniwav/layer_weights": torch.softmax(self.model.layer_weights.detach(), 0)})

    def describe(self) -> str:  # noqa: D102
        n = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
        return (f"uniwav: model {n(self.model):.2f}M parameters (encoder {n(self.model.encoder):.2f}M, flow decoder "
                f"{n(self.model.decoder):.2f}M) +{n(self.objective):.2f}M in prediction heads; EMA teacher "
                f"{n(self.teacher):.2f}M")


__all__ = ["TeacherConfig", "UniWavExperimentConfig", "UniWavLossConfig", "UniWavTask", "UnitsConfig", "top_layers"]
