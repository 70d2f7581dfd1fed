"""Semantic objectives that shape the geometry of z; chosen by name in the loss config.

Every objective is an ``nn.Module`` holding its own small head, called by the composer with a
:class:`SemanticInputs` and returning ``(loss, metrics)``.  Losses are means over the latent
frames they concern, so batches of different lengths weigh alike.

* ``masked_units`` (HuBERT / k2SSL): cosine-similarity logits / temperature against learned
  class embeddings, cross-entropy on masked latent frames only;
* ``latent_prediction`` (JEPA without teacher, without stop-gradient): a predictor maps the
  masked-view z to the clean-view z at masked frames; pair it with SIGReg against collapse;
* ``distill``: cosine + L1 regression of frozen-teacher features from a linear head on z;
* ``ctc``: CTC on token or phone sequences through a linear head on z.

The loss-term registries live here: :data:`SEMANTIC_OBJECTIVES` and :data:`REGULARIZERS` map a
name to a :class:`LossTerm` (a builder, its default weight and, for a term that is not built
in, the dataclass of its ``losses.options.<name>`` block).  A new objective is one module that
registers itself with :func:`register_term` plus its config (docs/extending.md).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from speechae.losses.masking import frames_to_latent, lengths_to_mask, resample_lengthwise
from speechae.registry import Registry

if TYPE_CHECKING:
    from speechae.losses.builder import CTCConfig, DistillConfig, LatentPredictionConfig, MaskedUnitsConfig


@dataclasses.dataclass
class SemanticInputs:
    """What the composer hands a semantic objective.

    Attributes:
        z: latent view the head sees (B, T_z, D): the masked view for mask-based objectives,
            the clean view otherwise; low-band when the Prism split is on.
        z_lengths: valid latent frames (B,).
        batch: the original (un-doubled, unmasked) batch dict.
        frame_ratio: input frames per latent frame.
        latent_mask: (B, T_z) bool, True on masked latent frames (None without masking).
        target_z: clean-view latents (B, T_z, D) for latent prediction, else None.
    """

    z: torch.Tensor
    z_lengths: torch.Tensor
    batch: Mapping[str, Any]
    frame_ratio: float
    latent_mask: Optional[torch.Tensor] = None
    target_z: Optional[torch.Tensor] = None


@dataclasses.dataclass
class RegularizerInputs:
    """What a registered regularizer receives (the built-in ``sigreg`` and ``kl`` are called by
    the composer with their own signatures): the clean view of the latent.  The module returns
    ``(loss, metrics)``.

    Attributes:
        z: (B, T_z, D) what the decoder saw, before decoder-input noise.
        z_lengths: valid latent frames (B,).
        z_mean, z_logvar: posterior parameters (B, T_z, D) of a gaussian bottleneck, else None.
        step: the training step.
    """

    z: torch.Tensor
    z_lengths: torch.Tensor
    z_mean: Optional[torch.Tensor]
    z_logvar: Optional[torch.Tensor]
    step: int


@dataclasses.dataclass(frozen=True)
class LossContext:
    """What a loss-term builder may need besides its settings block.

    Attributes:
        latent_dim: D of the model's z.
        teacher: frozen teacher module given to ``build_losses`` (distillation), or None.
        teacher_factory: builds the teacher architecture when a teacher file is a state dict.
    """

    latent_dim: int
    teacher: Optional[nn.Module] = None
    teacher_factory: Optional[Callable[[], nn.Module]] = None


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """A registry entry: ``build(settings, ctx) -> nn.Module``.

    Attributes:
        build: the builder; ``settings`` is the term's typed block ``losses.<name>`` when
            ``options`` is None (the built-in terms), else ``losses.options.<name>`` parsed
            strictly into ``options``.
        default_weight: the weight (a number or a schedule mapping, see
            :mod:`speechae.losses.schedules`) used when ``losses.weights`` has no entry.
        options: dataclass of the term's ``losses.options.<name>`` block, or None.
    """

    build: Callable[[Any, LossContext], nn.Module]
    default_weight: Any
    options: Optional[type] = None


REGULARIZERS: Registry[LossTerm] = Registry("regularizer", builtins=("speechae.losses.sigreg", "speechae.losses.kl"))
"""Regularizers on z (``losses.regularizer``)."""

SEMANTIC_OBJECTIVES: Registry[LossTerm] = Registry("semantic objective",
                                                   builtins=("speechae.losses.semantic", "speechae.losses.ema_teacher"))
"""Semantic objectives (``losses.semantic``); the built-ins are registered below."""


def register_term(registry: Registry[LossTerm], name: str, default_weight: Any,
                  options: Optional[type] = None) -> Callable[[Callable[[Any, LossContext], nn.Module]],
                                                              Callable[[Any, LossContext], nn.Module]]:
    """Decorator: register a builder ``fn(settings, ctx) -> nn.Module`` as loss term ``name``
    of ``registry`` (see :class:`LossTerm`); a name can be registered once.  Returns ``fn``."""
    def add(fn: Callable[[Any, LossContext], nn.Module]) -> Callable[[Any, LossContext], nn.Module]:
        registry.register(name, LossTerm(fn, default_weight, options))
        return fn

    return add


def masked_unit_loss(logits: torch.Tensor, targets: torch.Tensor,
                     select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy over selected frames only.

    Args:
        logits: (B, T, K); targets: (B, T) int (negative = unknown); select: (B, T) bool.
    Returns:
        (mean CE over selected frames with a known target, accuracy on the same frames).
    """
    sel = select & (targets >= 0)
    lg = logits[sel].float()
    tg = targets[sel]
    if tg.numel() == 0:
        zero = logits.sum() * 0.0
        return zero, zero.detach()
    loss = F.cross_entropy(lg, tg, reduction="mean")
    acc = (lg.argmax(-1) == tg).float().mean()
    return loss, acc.detach()


class MaskedUnitPrediction(nn.Module):
    """HuBERT-style masked prediction of k-means units from z.

    Args:
        latent_dim: D.
        num_classes: number of k-means units (500 on LibriSpeech).
        proj_dim: dimension of the head output and the class embeddings.
        temperature: cosine-similarity temperature (HuBERT: 0.1).
        target_key: batch key of the per-input-frame unit ids (B, T), -1 on padding.
    """

    needs_mask = True
    needs_clean_view = False

    def __init__(self, latent_dim: int, num_classes: int = 500, proj_dim: int = 256,
                 temperature: float = 0.1, target_key: str = "units") -> None:
        super().__init__()
        self.head = nn.Linear(latent_dim, proj_dim)
        self.embed = nn.Parameter(torch.randn(num_classes, proj_dim) / proj_dim**0.5)
        self.temperature = float(temperature)
        self.target_key = target_key

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine similarity between projected frames and class embeddings / temperature."""
        h = F.normalize(self.head(z).float(), dim=-1)
        e = F.normalize(self.embed.float(), dim=-1)
        return h @ e.t() / self.temperature

    def forward(self, inp: SemanticInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """CE over masked latent frames; targets are the units at each latent frame's centre."""
        if self.target_key not in inp.batch:
            raise KeyError(f"masked_units needs batch['{self.target_key}'] (k-means units per frame)")
        if inp.latent_mask is None:
            raise ValueError("masked_units needs a latent mask (the composer generates it)")
        t_z = inp.z.shape[1]
        units = inp.batch[self.target_key].to(inp.z.device)
        targets = frames_to_latent(units, inp.batch["feature_lens"], t_z, inp.frame_ratio)
        select = inp.latent_mask & lengths_to_mask(inp.z_lengths, t_z)
        loss, acc = masked_unit_loss(self.logits(inp.z), targets, select)
        frac = select.float().sum() / lengths_to_mask(inp.z_lengths, t_z).float().sum().clamp_min(1)
        return loss, {"masked_units/acc": acc, "masked_units/masked_frac": frac.detach()}


class LatentPrediction(nn.Module):
    """JEPA-style prediction of clean-view latents at masked frames from the masked view.

    No EMA teacher and no stop-gradient (LeJEPA): both views come from the same forward, and
    collapse is prevented by the regularizer (SIGReg) rather than by asymmetry.

    Args:
        latent_dim: D.
        hidden: predictor MLP width.
        distance: ``l2`` (mean squared error per dimension) or ``cosine`` (1 - cos).
    """

    needs_mask = True
    needs_clean_view = True

    def __init__(self, latent_dim: int, hidden: int = 256, distance: str = "l2") -> None:
        super().__init__()
        if distance not in ("l2", "cosine"):
            raise ValueError(f"distance must be 'l2' or 'cosine', got {distance!r}")
        self.predictor = nn.Sequential(nn.Linear(latent_dim, hidden), nn.GELU(), nn.Linear(hidden, latent_dim))
        self.distance = distance

    def forward(self, inp: SemanticInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Distance between predicted and clean latents averaged over masked valid frames."""
        if inp.target_z is None or inp.latent_mask is None:
            raise ValueError("latent_prediction needs the clean view and a latent mask")
        sel = inp.latent_mask & lengths_to_mask(inp.z_lengths, inp.z.shape[1])
        pred = self.predictor(inp.z[sel]).float()
        tgt = inp.target_z[sel].float()
        if pred.shape[0] == 0:
            return inp.z.sum() * 0.0, {}
        if self.distance == "l2":
            loss = (pred - tgt).pow(2).mean()
        else:
            loss = (1.0 - F.cosine_similarity(pred, tgt, dim=-1)).mean()
        metrics = {"latent_prediction/target_std": tgt.detach().std(0).mean()} if tgt.shape[0] > 1 else {}
        return loss, metrics


def load_teacher(path: str, factory: Optional[Callable[[], nn.Module]] = None) -> nn.Module:
    """Load a frozen teacher from a local file.

    With ``factory`` the file is a state dict read with ``torch.load(weights_only=True)`` into
    ``factory()``; a ``.pt2`` file is a ``torch.export`` program; anything else must be a
    TorchScript archive (``torch.jit.load``).  Pickled whole modules are refused on purpose
    (arbitrary code execution).
    """
    if factory is None and str(path).endswith(".pt2"):
        module = torch.export.load(path).module()
        for p in module.parameters():
            p.requires_grad_(False)
        return module
    if factory is not None:
        module = factory()
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
            state = state["model"]
        module.load_state_dict(state)
    else:
        module = torch.jit.load(path, map_location="cpu")
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class Distillation(nn.Module):
    """Regress frozen-teacher features from z with a linear head (cosine + L1).

    Teacher features come from ``batch["teacher"]`` (B, T_t, C) + ``batch["teacher_lens"]``
    when present (precomputed arrays), else from ``teacher(features, feature_lens)``, which
    may return a tensor or ``(features, lengths)``.  Either is linearly resampled per
    utterance to the latent rate.  The loss averages over valid latent frames.

    Args:
        latent_dim: D.  teacher_dim: C.
        teacher: optional frozen module (not registered as a submodule: never trained, never
            saved in this module's state dict).
        cos_weight, l1_weight: weights of (1 - cos) and mean |.| per frame.
    """

    needs_mask = False
    needs_clean_view = False

    def __init__(self, latent_dim: int, teacher_dim: int, teacher: Optional[nn.Module] = None,
                 cos_weight: float = 1.0, l1_weight: float = 1.0) -> None:
        super().__init__()
        self.head = nn.Linear(latent_dim, teacher_dim)
        self._teacher = [teacher] if teacher is not None else []  # list: keep it out of .parameters()
        self.cos_weight = float(cos_weight)
        self.l1_weight = float(l1_weight)

    def _teacher_features(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if "teacher" in batch:
            feats = batch["teacher"]
            lens = batch.get("teacher_lens")
            if lens is None:
                raise KeyError("batch['teacher'] needs batch['teacher_lens']")
            return feats, lens
        if not self._teacher:
            raise KeyError("distill needs batch['teacher'] or a teacher module")
        teacher = self._teacher[0]
        feats_in, lens_in = batch["features"], batch["feature_lens"]
        teacher.to(feats_in.device)  # not a submodule, so .to() on the composer misses it
        with torch.no_grad():
            res = teacher(feats_in, lens_in)
        if isinstance(res, (tuple, list)):
            return res[0], res[1]
        # No lengths returned: assume a fixed rate and scale the input lengths.
        lens = torch.ceil(lens_in.double() * res.shape[1] / feats_in.shape[1]).long()
        return res, lens

    def forward(self, inp: SemanticInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """cos_weight * (1 - cos) + l1_weight * L1 averaged over valid latent frames."""
        feats, lens = self._teacher_features(inp.batch)
        t_z = inp.z.shape[1]
        target = resample_lengthwise(feats.to(inp.z.device).float(), lens.to(inp.z.device),
                                     inp.z_lengths, t_z)
        valid = lengths_to_mask(inp.z_lengths, t_z)
        pred = self.head(inp.z[valid]).float()
        tgt = target[valid]
        if pred.shape[0] == 0:
            return inp.z.sum() * 0.0, {}
        cos = F.cosine_similarity(pred, tgt, dim=-1).mean()
        l1 = (pred - tgt).abs().mean()
        loss = self.cos_weight * (1.0 - cos) + self.l1_weight * l1
        return loss, {"distill/cos": cos.detach(), "distill/l1": l1.detach()}


_LENGTH_KEYS = {"tokens": "token_lens", "phone_seq": "phone_seq_lens"}


def ctc_min_frames(targets: torch.Tensor, target_lens: torch.Tensor) -> torch.Tensor:
    """Fewest input frames a CTC alignment of each label sequence needs: its length U plus one
    blank between every pair of equal neighbours.  targets (B, U) padded, target_lens (B,)."""
    u = targets.shape[1]
    valid = torch.arange(u, device=targets.device).unsqueeze(0) < target_lens.unsqueeze(1)
    repeats = (targets[:, 1:] == targets[:, :-1]) & valid[:, 1:]
    return target_lens.long() + repeats.sum(1)


class CTCObjective(nn.Module):
    """CTC on a label sequence through a linear head on z (blank = 0).

    ``tokens`` are already shifted so that 0 is free for the blank.  For ``phone_seq`` set
    ``target_offset: 1`` if phone id 0 is a real phone.  The summed per-utterance CTC loss is
    divided by the number of valid latent frames (per-frame normalisation, as in icefall).
    torch's ``ctc_loss`` is used with ``zero_infinity=True`` (utterances whose label sequence
    cannot fit in T_z frames contribute 0 instead of inf); they are counted, never silently:
    ``ctc/infeasible`` is the number of such utterances in the batch (a CTC alignment needs
    U frames plus one blank between each pair of repeated labels).  Many of them mean the
    latent frame rate is too low for the label inventory.  k2's CTC would be an optional
    accelerator and is not wired here.

    Args:
        latent_dim: D.  vocab_size: output classes including the blank.
        target_key: ``tokens`` or ``phone_seq``.  target_offset: added to label ids.
    """

    needs_mask = False
    needs_clean_view = False

    def __init__(self, latent_dim: int, vocab_size: int, target_key: str = "tokens",
                 target_offset: int = 0) -> None:
        super().__init__()
        if target_key not in _LENGTH_KEYS:
            raise ValueError(f"ctc target_key must be one of {sorted(_LENGTH_KEYS)}, got {target_key!r}")
        self.head = nn.Linear(latent_dim, vocab_size)
        self.target_key = target_key
        self.target_offset = int(target_offset)

    def forward(self, inp: SemanticInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum of per-utterance CTC losses / number of valid latent frames."""
        key, len_key = self.target_key, _LENGTH_KEYS[self.target_key]
        if key not in inp.batch or len_key not in inp.batch:
            raise KeyError(f"ctc needs batch['{key}'] and batch['{len_key}']")
        log_probs = self.head(inp.z).float().log_softmax(-1)
        targets = inp.batch[key].to(inp.z.device).long() + self.target_offset
        target_lens = inp.batch[len_key].to(inp.z.device).long()
        total = F.ctc_loss(log_probs.transpose(0, 1), targets, inp.z_lengths.long(), target_lens,
                           blank=0, reduction="sum", zero_infinity=True)
        frames = inp.z_lengths.sum().clamp_min(1).float()
        tokens = target_lens.sum().clamp_min(1).float()
        infeasible = (ctc_min_frames(targets, target_lens) > inp.z_lengths.long()).sum()
        return total / frames, {"ctc/per_token": (total / tokens).detach(), "ctc/infeasible": infeasible}


# Built-in objectives: settings are the typed blocks of LossConfig (speechae.losses.builder).

@register_term(SEMANTIC_OBJECTIVES, "masked_units", default_weight=1.0)
def build_masked_units(c: MaskedUnitsConfig, ctx: LossContext) -> MaskedUnitPrediction:
    """``masked_units`` from ``losses.masked_units``."""
    return MaskedUnitPrediction(ctx.latent_dim, c.num_classes, c.proj_dim, c.temperature, c.target_key)


@register_term(SEMANTIC_OBJECTIVES, "latent_prediction", default_weight=1.0)
def build_latent_prediction(c: LatentPredictionConfig, ctx: LossContext) -> LatentPrediction:
    """``latent_prediction`` from ``losses.latent_prediction``."""
    return LatentPrediction(ctx.latent_dim, c.hidden, c.distance)


@register_term(SEMANTIC_OBJECTIVES, "distill", default_weight=1.0)
def build_distill(c: DistillConfig, ctx: LossContext) -> Distillation:
    """``distill`` from ``losses.distill``; the teacher is ``ctx.teacher``, else loaded from
    ``teacher_path`` when set (else the batch must carry precomputed ``teacher`` features)."""
    teacher = ctx.teacher
    if teacher is None and c.teacher_path:
        teacher = load_teacher(c.teacher_path, ctx.teacher_factory)
    return Distillation(ctx.latent_dim, c.teacher_dim, teacher, c.cos_weight, c.l1_weight)


@register_term(SEMANTIC_OBJECTIVES, "ctc", default_weight=1.0)
def build_ctc(c: CTCConfig, ctx: LossContext) -> CTCObjective:
    """``ctc`` from ``losses.ctc``."""
    return CTCObjective(ctx.latent_dim, c.vocab_size, c.target_key, c.target_offset)
