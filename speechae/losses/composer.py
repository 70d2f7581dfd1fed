"""LossComposer: the named objectives of the autoencoder, combined with scheduled weights.

The composer is a set of pure terms over a model output; it never calls the model.  One
training step (``speechae.train.ae_task.forward_losses``) is::

    plan = composer.plan(batch, step)                       # 1 + 2
    out = model(*composer.model_inputs(batch, plan))        # 3
    total, metrics = composer(out, batch, plan)             # 4

1. evaluate every weight schedule at ``step`` (logged as ``weight/<name>``);
2. draw a span mask of the input frames when an objective that needs one has a non-zero
   weight (a log-only mask objective is evaluated only when some other term already masks:
   logging must not change what is trained);
3. the caller runs ``model(features, feature_lens, input_mask)`` exactly once.  When
   ``latent_prediction`` is active the inputs are doubled -- rows [0, B) masked, rows [B, 2B)
   clean -- so DDP sees one forward and one backward;
4. apply the terms.  Reconstruction and the regularizers use the clean view when the batch
   is doubled (the view the decoder and downstream probes see); mask-based semantic
   objectives use the masked view; distill / ctc use the clean view.  Without doubling there
   is one view, possibly masked (then the reconstruction target is the unmasked input,
   i.e. inpainting, as in masked-autoencoder training).  The reconstruction target is always
   the clean features: ``batch["target_features"]`` when the data pipeline augmented the
   input (SpecAugment), else ``batch["features"]``.  With a generative decoder
   (``model.decoder.kind: flow``) the model is given that target and ``loss/recon`` is the
   decoder's own (flow-matching) loss; at validation the sampled log-mel's L1 is logged as
   ``recon/sampled_l1``.  With the Prism split the semantic
   heads see the low-band (DCT) view of z, both for inputs and latent-prediction targets.

A term with weight 0 at this step is computed under ``torch.no_grad`` and only logged.  Every
term is normalised per valid frame (see each module), so batches of different lengths weigh
correctly.  Metrics are plain floats gathered with a single host sync.

Regularizers read ``out.z`` (what the decoder saw, before decoder-input noise: the posterior
sample for a gaussian bottleneck) for SIGReg, and ``z_mean`` / ``z_logvar`` for KL.

Under DDP the objective heads live in this module, not in the model: wrap model and composer
in one parent module (or give the composer its own DDP wrapper) so the heads' gradients are
synchronised too, and put ``composer.parameters()`` in the optimiser.

Model contract (docs/CONTRACTS.md): the output has ``recon (B, T, F)``, ``z (B, T_z, D)``,
``z_mean``/``z_logvar`` (gaussian bottleneck only), ``z_lengths (B,)``, ``frame_ratio`` and
``metrics``.  Model metrics are passed through unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Mapping, Optional

import torch
from torch import nn

from speechae.losses.masking import latent_frame_mask, lengths_to_mask, span_mask
from speechae.losses.prism import lowpass_dct
from speechae.losses.reconstruction import ReconstructionLoss
from speechae.losses.schedules import Schedule
from speechae.losses.semantic import REGULARIZERS, SEMANTIC_OBJECTIVES, RegularizerInputs, SemanticInputs

# The built-in names, read from the registries (speechae.losses.semantic) at import.
REGULARIZER_NAMES = tuple(REGULARIZERS.names())
SEMANTIC_NAMES = tuple(SEMANTIC_OBJECTIVES.names())


@dataclasses.dataclass
class StepPlan:
    """How one step calls the model (see :meth:`LossComposer.plan`)."""

    step: int
    weights: dict[str, float]
    input_mask: Optional[torch.Tensor]
    double: bool


@dataclasses.dataclass
class _View:
    """The slice of a model output one loss group looks at."""

    recon: torch.Tensor
    z: torch.Tensor
    z_mean: Optional[torch.Tensor]
    z_logvar: Optional[torch.Tensor]
    z_lengths: torch.Tensor


def _view(out: Any, rows: slice) -> _View:
    def cut(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if x is None else x[rows]

    return _View(out.recon[rows], out.z[rows], cut(getattr(out, "z_mean", None)),
                 cut(getattr(out, "z_logvar", None)), out.z_lengths[rows])


class LossComposer(nn.Module):
    """Named objectives + weight schedules + the single model call of a training step.

    Args:
        schedules: ``{name: schedule}`` for every active term (``recon``, a regularizer,
            semantic objectives); see :mod:`speechae.losses.schedules`.
        recon: the feature reconstruction loss.
        regularizers: ``{"sigreg": SIGReg, "kl": KLRegularizer}`` subset.
        objectives: ``{name: semantic objective module}``.
        mask_prob, mask_span, mask_realised, min_spans: span-masking settings
            (see :mod:`speechae.losses.masking`).
        prism_keep: fraction of DCT bands the semantic heads see (None: no band split).
        seed: base seed of the mask generator (combined with step and rank).

    The heads of the objectives are parameters of this module: put them in the optimiser
    (and under DDP together with the model).
    """

    def __init__(self, schedules: Mapping[str, Schedule], recon: ReconstructionLoss,
                 regularizers: Mapping[str, nn.Module], objectives: Mapping[str, nn.Module],
                 mask_prob: float = 0.65, mask_span: int = 10, mask_realised: bool = False,
                 min_spans: int = 1, prism_keep: Optional[float] = None, seed: int = 0) -> None:
        super().__init__()
        self.schedules = dict(schedules)
        self.recon = recon
        self.regularizers = nn.ModuleDict(dict(regularizers))
        self.objectives = nn.ModuleDict(dict(objectives))
        for name in list(self.regularizers) + list(self.objectives) + ["recon"]:
            if name not in self.schedules:
                raise ValueError(f"no weight schedule for loss term '{name}'")
        self.mask_prob, self.mask_span = float(mask_prob), int(mask_span)
        self.mask_realised, self.min_spans = bool(mask_realised), int(min_spans)
        self.prism_keep = prism_keep
        self.seed = int(seed)

    def weights(self, step: int) -> dict[str, float]:
        """Every term's weight at ``step`` (the values logged as ``weight/<name>``)."""
        return {name: float(s(step)) for name, s in self.schedules.items()}

    def _mask(self, batch: Mapping[str, Any], step: int) -> torch.Tensor:
        rank = torch.distributed.get_rank() if (torch.distributed.is_available()
                                                and torch.distributed.is_initialized()) else 0
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + int(step)) * 1009 + rank)
        feats = batch["features"]
        return span_mask(batch["feature_lens"].to(feats.device), feats.shape[1], self.mask_prob,
                         self.mask_span, generator=g, realised=self.mask_realised,
                         min_spans=self.min_spans)

    def plan(self, batch: Mapping[str, Any], step: int) -> StepPlan:
        """What the model call of this step looks like: the weights at ``step``, the input
        span mask (when an objective that needs one has a non-zero weight) and whether the batch
        is doubled (masked rows, then clean rows)."""
        w = self.weights(step)
        need_mask = any(getattr(m, "needs_mask", False) and w[n] > 0 for n, m in self.objectives.items())
        double = any(getattr(m, "needs_clean_view", False) and w[n] > 0 for n, m in self.objectives.items())
        mask = self._mask(batch, step) if (need_mask or double) else None
        return StepPlan(int(step), w, mask, double)

    @staticmethod
    def model_inputs(batch: Mapping[str, Any], plan: StepPlan) -> tuple[torch.Tensor, torch.Tensor,
                                                                        Optional[torch.Tensor]]:
        """``(features, feature_lens, input_mask)`` for the single model call of the step:
        doubled (rows [0, B) masked, rows [B, 2B) clean) when ``plan.double``."""
        feats, lens, mask = batch["features"], batch["feature_lens"], plan.input_mask
        if not plan.double:
            return feats, lens, mask
        assert mask is not None
        return torch.cat([feats, feats]), torch.cat([lens, lens]), torch.cat([mask, torch.zeros_like(mask)])

    def forward(self, out: Any, batch: Mapping[str, Any],
                plan: StepPlan) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss (scalar tensor) and metrics (floats) of the model output ``out`` of
        the inputs :meth:`model_inputs` gave for ``plan``; see the module docstring."""
        w, step, double, input_mask = plan.weights, plan.step, plan.double, plan.input_mask
        feats, lens = batch["features"], batch["feature_lens"]
        if double:
            b = feats.shape[0]
            masked, clean = _view(out, slice(0, b)), _view(out, slice(b, 2 * b))
        else:
            masked = clean = _view(out, slice(None))

        total = feats.new_zeros((), dtype=torch.float32)
        metrics: dict[str, Any] = {}

        def apply(name: str, fn: Any) -> None:
            nonlocal total
            ctx = contextlib.nullcontext() if w[name] > 0 else torch.no_grad()
            with ctx:
                loss, extra = fn()
            if w[name] > 0:
                total = total + w[name] * loss
            metrics[f"loss/{name}"] = loss.detach()
            metrics.update(extra)

        # The target is the clean input: with SpecAugment on, ``features`` is the augmented
        # view and ``target_features`` the unaugmented one (docs/CONTRACTS.md).
        target = batch.get("target_features")
        target = feats if target is None else target.to(feats.device)
        if getattr(out, "decoder_loss", None) is not None:  # a generative decoder: its own objective
            apply("recon", lambda: (out.decoder_loss, {}))
            if not self.training:  # validation: the sampled log-mel is scored too
                valid = lengths_to_mask(lens, target.shape[1])
                metrics["recon/sampled_l1"] = (clean.recon - target).abs()[valid].mean()
        else:
            apply("recon", lambda: self.recon(clean.recon, target, lens))
        self._apply_regularizers(apply, clean, step, metrics)
        self._apply_semantic(apply, w, batch, out, masked, clean, input_mask, double)

        metrics["loss/total"] = total.detach()
        metrics.update({f"weight/{n}": v for n, v in w.items()})
        metrics.update(self._z_stats(clean))
        return total, _to_floats(metrics, getattr(out, "metrics", None))

    def _apply_regularizers(self, apply: Any, clean: _View, step: int, metrics: dict) -> None:
        if "sigreg" in self.regularizers:
            reg = self.regularizers["sigreg"]
            apply("sigreg", lambda: (reg(clean.z, clean.z_lengths, step=step), {}))
            # expected value for Gaussian latents at this step's frame count (budget-normalised)
            metrics["sigreg/floor"] = reg.expected_floor()
            metrics["sigreg/frames"] = reg.last_num_frames
        if "kl" in self.regularizers:
            if clean.z_mean is None or clean.z_logvar is None:
                raise ValueError("the 'kl' loss needs a gaussian bottleneck (z_mean / z_logvar are None)")
            reg = self.regularizers["kl"]
            apply("kl", lambda: reg(clean.z_mean, clean.z_logvar, clean.z_lengths))
        for name, reg in self.regularizers.items():  # registered ones: (RegularizerInputs) -> (loss, metrics)
            if name not in ("sigreg", "kl"):
                inp = RegularizerInputs(clean.z, clean.z_lengths, clean.z_mean, clean.z_logvar, step)
                apply(name, lambda reg=reg, inp=inp: reg(inp))

    def _apply_semantic(self, apply: Any, w: Mapping[str, float], batch: Mapping[str, Any], out: Any,
                        masked: _View, clean: _View, input_mask: Optional[torch.Tensor],
                        double: bool) -> None:
        if not self.objectives:
            return
        ratio = float(out.frame_ratio)
        latent_mask = None
        if input_mask is not None:
            latent_mask = latent_frame_mask(input_mask, batch["feature_lens"].to(input_mask.device),
                                            masked.z.shape[1], ratio)
        band = (lambda z, n: lowpass_dct(z, n, self.prism_keep)) if self.prism_keep else (lambda z, n: z)
        for name, obj in self.objectives.items():
            if getattr(obj, "needs_mask", False) and latent_mask is None:
                continue  # log-only mask objective on an unmasked step: nothing to measure
            if getattr(obj, "needs_clean_view", False) and not double:
                continue
            view = masked if getattr(obj, "needs_mask", False) else clean
            target = band(clean.z, clean.z_lengths) if getattr(obj, "needs_clean_view", False) else None
            inp = SemanticInputs(z=band(view.z, view.z_lengths), z_lengths=view.z_lengths, batch=batch,
                                 frame_ratio=ratio, latent_mask=latent_mask, target_z=target)
            apply(name, lambda obj=obj, inp=inp: obj(inp))

    @staticmethod
    def _z_stats(clean: _View) -> dict[str, torch.Tensor]:
        """Cheap collapse indicator: mean per-dimension std of valid latent frames."""
        frames = clean.z.detach()[lengths_to_mask(clean.z_lengths, clean.z.shape[1])].float()
        if frames.shape[0] < 2:
            return {}
        return {"z/std": frames.std(0).mean()}


def _to_floats(metrics: Mapping[str, Any], model_metrics: Optional[Mapping[str, Any]]) -> dict[str, float]:
    """Convert tensor metrics to floats with one host sync; append the model's own metrics."""
    keys = [k for k, v in metrics.items() if torch.is_tensor(v)]
    result = {k: float(v) for k, v in metrics.items() if not torch.is_tensor(v)}
    if keys:
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in keys]).tolist()
        result.update(zip(keys, values))
    for k, v in (model_metrics or {}).items():
        result.setdefault(k, float(v))
    return {k: result[k] for k in sorted(result)}
