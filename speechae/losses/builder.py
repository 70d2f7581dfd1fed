"""Loss configuration and the builder that turns it into a :class:`LossComposer`.

Example (YAML, under the experiment config's ``loss:`` key)::

    regularizer: sigreg          # sigreg | kl | none
    semantic: [masked_units]     # any of masked_units, latent_prediction, distill, ctc
    weights:
      recon: 1.0
      sigreg: {type: linear_warmup, start: 0.0, end: 0.05, steps: 2000}
      kl: 0                      # not the regularizer, but computed and logged (no gradient)
      masked_units: 1.0
    sigreg: {num_directions: 256, num_frames: 1024}
    regularizer_ramp: {type: linear_warmup, steps: 100}   # shape of every regularizer's weight

``regularizer_ramp`` gives the regularizer weights one warm-up shape whatever the arm: a
regularizer weight written as a plain number ``w`` becomes ``{type, start: 0, end: w, steps,
delay}`` with the ramp's type/steps/delay (a weight given as a full schedule mapping is used
as written).  Arms that differ only in the regularizer then also share its warm-up, and a
weight sweep overrides a single number (``losses.weights.sigreg=0.02``).

The active terms are ``recon``, the regularizer (unless ``none``), the semantic objectives and
every key of ``weights``; a term named in ``weights`` only is therefore a log-only monitor when
its weight is 0 (e.g. ``sigreg: 0`` on a KL run to compare geometry).  Terms without an entry
in ``weights`` get their registered default weight (:data:`DEFAULT_WEIGHTS`).

Terms are looked up by name in the registries :data:`~speechae.losses.semantic.REGULARIZERS`
and :data:`~speechae.losses.semantic.SEMANTIC_OBJECTIVES`.  A built-in term reads its typed
block (``sigreg:``, ``kl:``, ``masked_units:``, ...); a registered term that is not built in
reads ``options.<name>``, parsed strictly by the dataclass it registered::

    regularizer: l2z
    options:
      l2z: {scale: 0.5}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Optional

from torch import nn

from speechae.config import ConfigError, from_dict, resolve_choice
from speechae.losses.composer import LossComposer
from speechae.losses.reconstruction import ReconstructionLoss
from speechae.losses.schedules import build_schedule
from speechae.losses.semantic import (REGULARIZERS, SEMANTIC_OBJECTIVES, LossContext, LossTerm)


class _DefaultWeights(Mapping[str, Any]):
    """``{term: default weight}`` read from the registries (``recon``: 1.0), so that a newly
    registered term has its default too."""

    def _names(self) -> list[str]:
        return ["recon"] + REGULARIZERS.names() + SEMANTIC_OBJECTIVES.names()

    def __getitem__(self, name: str) -> Any:
        if name == "recon":
            return 1.0
        for registry in (REGULARIZERS, SEMANTIC_OBJECTIVES):
            if name in registry:
                return registry.get(name).default_weight
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


DEFAULT_WEIGHTS: Mapping[str, Any] = _DefaultWeights()
"""Default weight of every term (the registered ``default_weight``; ``recon``: 1.0)."""


@dataclasses.dataclass
class ReconConfig:
    """Weights of the feature reconstruction terms (see speechae.losses.reconstruction)."""

    l1: float = 1.0
    l2: float = 0.0
    multires: float = 1.0
    delta: float = 0.0
    scales: list[list[int]] = dataclasses.field(default_factory=lambda: [[2, 2], [4, 4], [8, 8], [16, 16]])


@dataclasses.dataclass
class SIGRegConfig:
    """SIGReg settings (reference grid: 17 knots on [0, 3]; M = 256..1024)."""

    num_directions: int = 256
    num_knots: int = 17
    t_max: float = 3.0
    num_frames: Optional[int] = 1024  # global frame budget B (all ranks); value = B x distance.
    # None/0 = all frames scaled by their count (grows with batch and world size: not for training)
    seed: int = 0


@dataclasses.dataclass
class KLConfig:
    """KL settings; beta is the ``kl`` entry of the weight table."""

    free_bits: float = 0.0
    active_threshold: float = 0.01
    log_dims: bool = True


@dataclasses.dataclass
class MaskingConfig:
    """Span masking (fairseq reading of mask_prob unless ``realised``; see losses.masking)."""

    mask_prob: float = 0.65
    # Input frames (100 Hz fbank): 20 frames = 200 ms, the span HuBERT (10 frames at 50 Hz)
    # and k2SSL mask; a span in input frames would otherwise halve with the frame shift.
    span: int = 20
    realised: bool = False
    min_spans: int = 1
    seed: int = 0


@dataclasses.dataclass
class MaskedUnitsConfig:
    """HuBERT-style head: cosine logits / temperature against learned class embeddings."""

    num_classes: int = 500
    proj_dim: int = 256
    temperature: float = 0.1
    target_key: str = "units"


@dataclasses.dataclass
class LatentPredictionConfig:
    """JEPA predictor settings."""

    hidden: int = 256
    distance: str = "l2"


@dataclasses.dataclass
class DistillConfig:
    """Teacher distillation: precomputed ``batch['teacher']`` or a TorchScript file."""

    teacher_dim: int = 768
    teacher_path: Optional[str] = None
    cos_weight: float = 1.0
    l1_weight: float = 1.0


@dataclasses.dataclass
class CTCConfig:
    """CTC head; vocab_size includes the blank (id 0)."""

    vocab_size: int = 501
    target_key: str = "tokens"
    target_offset: int = 0


@dataclasses.dataclass
class PrismConfig:
    """Band split: semantic heads see the inverse DCT of z with high bands zeroed."""

    enabled: bool = False
    keep: float = 0.25


@dataclasses.dataclass
class LossConfig:
    """Everything the training objectives need; read only by :func:`build_losses`."""

    regularizer: str = "sigreg"
    semantic: list[str] = dataclasses.field(default_factory=list)
    weights: dict[str, Any] = dataclasses.field(default_factory=dict)
    recon: ReconConfig = dataclasses.field(default_factory=ReconConfig)
    sigreg: SIGRegConfig = dataclasses.field(default_factory=SIGRegConfig)
    kl: KLConfig = dataclasses.field(default_factory=KLConfig)
    masking: MaskingConfig = dataclasses.field(default_factory=MaskingConfig)
    masked_units: MaskedUnitsConfig = dataclasses.field(default_factory=MaskedUnitsConfig)
    latent_prediction: LatentPredictionConfig = dataclasses.field(default_factory=LatentPredictionConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    ctc: CTCConfig = dataclasses.field(default_factory=CTCConfig)
    prism: PrismConfig = dataclasses.field(default_factory=PrismConfig)
    regularizer_ramp: Optional[dict[str, Any]] = None
    # settings of registered terms that are not built in: {term: {key: value}}
    options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def _term(name: str) -> LossTerm:
    """The registry entry of a regularizer or semantic objective (KeyError if neither)."""
    for registry in (REGULARIZERS, SEMANTIC_OBJECTIVES):
        if name in registry:
            return registry.get(name)
    raise KeyError(name)


def active_terms(cfg: LossConfig) -> list[str]:
    """Names of all terms the config activates, validated against the registered names (and
    ``losses.options`` against the terms that take options)."""
    resolve_choice("regularizer", cfg.regularizer, {n: n for n in REGULARIZERS.names() + ["none"]})
    for name in cfg.semantic:
        SEMANTIC_OBJECTIVES.get(name)
    known = ["recon"] + REGULARIZERS.names() + SEMANTIC_OBJECTIVES.names()
    for name in cfg.weights:
        resolve_choice("loss term in weights", name, {n: n for n in known})
    with_options = [n for n in known[1:] if _term(n).options is not None]
    for name in cfg.options:
        if name not in with_options:
            raise ConfigError(f"losses.options.{name}: only registered terms that are not built in take "
                              f"options (a built-in term has its own block, losses.{name}); terms with options: "
                              f"{sorted(with_options)}")
    names = ["recon"] + ([cfg.regularizer] if cfg.regularizer != "none" else []) + list(cfg.semantic)
    names += [n for n in cfg.weights if n not in names]
    return names


def _weight_spec(cfg: LossConfig, name: str) -> Any:
    """The weight-table entry of ``name``, with the shared regularizer ramp applied to a plain
    regularizer weight (see the module docstring)."""
    spec = cfg.weights.get(name, DEFAULT_WEIGHTS[name])
    ramp = cfg.regularizer_ramp
    if ramp is None or name not in REGULARIZERS or isinstance(spec, Mapping):
        return spec
    if isinstance(spec, bool) or not isinstance(spec, (int, float)):
        raise ConfigError(f"loss.weights.{name}: expected a number or a schedule mapping, got {spec!r}")
    if spec == 0:
        return 0.0  # a log-only monitor stays at 0
    ramp = dict(ramp)
    unknown = sorted(set(ramp) - {"type", "steps", "delay"})
    if unknown:
        raise ConfigError(f"loss.regularizer_ramp: unknown key(s) {unknown}; allowed ['delay', 'steps', 'type']")
    if ramp.get("type") == "constant":
        return float(spec)
    return {**ramp, "start": 0.0, "end": float(spec)}


def _build_term(name: str, cfg: LossConfig, ctx: LossContext) -> nn.Module:
    """Build term ``name`` with its registered builder: from its typed block ``loss.<name>``
    (built-in terms) or from ``loss.options.<name>`` parsed by the term's options dataclass."""
    term = _term(name)
    if term.options is None:
        settings = getattr(cfg, name, None)
        if not dataclasses.is_dataclass(settings):
            raise ConfigError(f"loss term '{name}' registers no options dataclass and LossConfig has no "
                              f"'{name}' block: register it with options=<its settings dataclass>")
    else:
        settings = from_dict(term.options, cfg.options.get(name, {}), f"losses.options.{name}")
    return term.build(settings, ctx)


# Applied by LossComposer itself, each with its own call signature.


def build_losses(cfg: LossConfig, latent_dim: int, teacher: Optional[nn.Module] = None,
                 teacher_factory: Optional[Callable[[], nn.Module]] = None) -> LossComposer:
    """Build the composer (objective modules, heads, schedules) for latents of size ``latent_dim``.

    Args:
        cfg: the loss configuration.
        latent_dim: D of the model's z.
        teacher: frozen teacher module for ``distill`` (overrides ``distill.teacher_path``).
        teacher_factory: builds the teacher architecture when ``teacher_path`` is a state dict.
    """
    names = active_terms(cfg)
    schedules = {n: build_schedule(_weight_spec(cfg, n), f"loss.weights.{n}") for n in names}
    ctx = LossContext(latent_dim, teacher, teacher_factory)
    r = cfg.recon
    recon = ReconstructionLoss(r.l1, r.l2, r.multires, r.delta, r.scales)
    regs = {n: _build_term(n, cfg, ctx) for n in names if n in REGULARIZERS}
    objs = {n: _build_term(n, cfg, ctx) for n in names if n in SEMANTIC_OBJECTIVES}
    m = cfg.masking
    if not 0.0 <= m.mask_prob <= 1.0 or m.span < 1:
        raise ConfigError(f"loss.masking: mask_prob must be in [0, 1] and span >= 1, got {m}")
    keep = cfg.prism.keep if cfg.prism.enabled else None
    if keep is not None and not 0.0 < keep <= 1.0:
        raise ConfigError(f"loss.prism.keep must be in (0, 1], got {keep}")
    return LossComposer(schedules, recon, regs, objs, m.mask_prob, m.span, m.realised, m.min_spans,
                        keep, m.seed)
