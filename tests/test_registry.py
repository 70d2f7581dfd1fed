"""One registry per extension point: a new bottleneck, decoder, regularizer or semantic objective is
one registration plus its config, and the built-in recipe configs build the same models as the
hard-coded tables did before."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from speechae.config import ConfigError, from_dict
from speechae.losses.builder import DEFAULT_WEIGHTS, LossConfig, build_losses
from speechae.losses.composer import LossComposer
from speechae.losses.kl import KLRegularizer
from speechae.losses.semantic import (REGULARIZERS, SEMANTIC_OBJECTIVES, CTCObjective, Distillation,
                                      LatentPrediction, LossContext, MaskedUnitPrediction, RegularizerInputs,
                                      SemanticInputs, register_term)
from speechae.losses.sigreg import SIGReg
from speechae.models.bottleneck import (BOTTLENECKS, BottleneckContext, BottleneckOutput, DeterministicBottleneck,
                                        GaussianBottleneck, register_bottleneck)
from speechae.models.builder import _OUTPUT_DOWNSAMPLING, PRESETS, _merge, build_model, model_config_from_dict
from speechae.models.decoder import DECODERS, DecoderContext, LatentDecoder, register_decoder
from speechae.models.scaling import lengths_to_mask
from speechae.models.zipformer import ZipformerEncoder
from speechae.train.ae_task import forward_losses
from speechae.train.config import load_experiment_config

sys.path.insert(0, str(Path(__file__).resolve().parent / "losses"))
from losses_testkit import StandInAE, random_batch  # noqa: E402  (the loss tests' stand-in model)

EGS = Path(__file__).resolve().parents[1] / "egs"
# the autoencoder configs (the uniwav baseline arm is another task, with its own model)
CONFIGS = [p for p in sorted(EGS.glob("*/ae/conf/arms/*.yaml")) if p.stem != "uniwav"] + \
    sorted(EGS.glob("*/ae/conf/train_base.yaml"))


# --------------------------------------------------------------- entries registered by this file

@dataclasses.dataclass
class L2Options:
    """Settings of the test regularizer (``losses.options.test_l2z``)."""

    scale: float = 1.0


class L2Penalty(nn.Module):
    """scale * mean over valid latent frames of |z|^2."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, inp: RegularizerInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        valid = lengths_to_mask(inp.z_lengths, inp.z.shape[1])
        sq = inp.z[valid].float().pow(2).sum(-1).mean()
        return self.scale * sq, {"test_l2z/step": torch.tensor(float(inp.step))}


@register_term(REGULARIZERS, "test_l2z", default_weight=0.1, options=L2Options)
def build_l2z(opts: L2Options, ctx: LossContext) -> L2Penalty:
    return L2Penalty(opts.scale)


@dataclasses.dataclass
class MeanOptions:
    """Settings of the test objective (``losses.options.test_mean``)."""

    target: float = 0.0


class MeanObjective(nn.Module):
    """(mean of a linear head on z - target)^2 over valid frames."""

    needs_mask = False
    needs_clean_view = False

    def __init__(self, latent_dim: int, target: float) -> None:
        super().__init__()
        self.head = nn.Linear(latent_dim, 1)
        self.target = target

    def forward(self, inp: SemanticInputs) -> tuple[torch.Tensor, dict]:
        valid = lengths_to_mask(inp.z_lengths, inp.z.shape[1])
        return (self.head(inp.z[valid]).mean() - self.target).pow(2), {}


@register_term(SEMANTIC_OBJECTIVES, "test_mean", default_weight=0.5, options=MeanOptions)
def build_mean(opts: MeanOptions, ctx: LossContext) -> MeanObjective:
    return MeanObjective(ctx.latent_dim, opts.target)


@dataclasses.dataclass
class SphereOptions:
    """Settings of the test bottleneck (``model.bottleneck.options``)."""

    radius: float = 1.0


class SphereBottleneck(nn.Module):
    """Linear projection to z, each valid frame scaled to norm ``radius``."""

    def __init__(self, input_dim: int, latent_dim: int, radius: float) -> None:
        super().__init__()
        self.proj = nn.Linear(input_dim, latent_dim)
        self.radius = radius

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> BottleneckOutput:
        vmask = lengths_to_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
        z = nn.functional.normalize(self.proj(x), dim=-1) * self.radius * vmask
        return BottleneckOutput(z, lengths, None, None, z, {})


@register_bottleneck("test_sphere", options=SphereOptions)
def build_sphere(opts: SphereOptions, ctx: BottleneckContext) -> SphereBottleneck:
    return SphereBottleneck(ctx.input_dim, ctx.latent_dim, opts.radius)


@dataclasses.dataclass
class RepeatOptions:
    """Settings of the test decoder (``model.decoder.options``)."""

    hidden: int = 16


class RepeatDecoder(nn.Module):
    """z -> MLP -> each latent frame repeated ``ratio`` times (the decoder contract, nothing more)."""

    def __init__(self, latent_dim: int, ratio: int, num_mel_bins: int, hidden: int) -> None:
        super().__init__()
        self.ratio = ratio
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.GELU(), nn.Linear(hidden, num_mel_bins))

    def forward(self, z: torch.Tensor, z_lengths: torch.Tensor, lengths: torch.Tensor, length: int) -> torch.Tensor:
        y = self.net(z).repeat_interleave(self.ratio, dim=1)[:, :length]
        return y * lengths_to_mask(lengths, length).unsqueeze(-1).to(y.dtype)


@register_decoder("test_repeat", options=RepeatOptions)
def build_repeat(opts: RepeatOptions, ctx: DecoderContext) -> RepeatDecoder:
    return RepeatDecoder(ctx.latent_dim, ctx.frame_ratio, ctx.num_mel_bins, opts.hidden)


def _losses(data: dict) -> LossConfig:
    return from_dict(LossConfig, data, "losses")


def _tiny(bottleneck: dict | None = None, decoder: dict | None = None) -> dict:
    return {"preset": "tiny", "num_mel_bins": 16, "bottleneck": {"latent_dim": 8, **(bottleneck or {})},
            "decoder": decoder or {}}


# --------------------------------------------------------------------------- new entries work

def test_a_registered_regularizer_trains_through_the_composer() -> None:
    cfg = _losses({"regularizer": "test_l2z", "options": {"test_l2z": {"scale": 2.0}},
                   "recon": {"multires": 0.0}})
    composer = build_losses(cfg, latent_dim=8)
    assert isinstance(composer, LossComposer) and isinstance(composer.regularizers["test_l2z"], L2Penalty)
    assert composer.regularizers["test_l2z"].scale == 2.0
    torch.manual_seed(0)
    model = StandInAE(latent_dim=8)
    batch = random_batch()
    total, metrics = forward_losses(model, composer, batch, step=3)
    assert metrics["weight/test_l2z"] == pytest.approx(0.1)  # the registered default weight
    assert metrics["test_l2z/step"] == 3.0
    assert metrics["loss/total"] == pytest.approx(metrics["loss/recon"] + 0.1 * metrics["loss/test_l2z"], rel=1e-5)
    with torch.no_grad():
        out = model(batch["features"], batch["feature_lens"])
    z = out.z[lengths_to_mask(out.z_lengths, out.z.shape[1])]
    assert metrics["loss/test_l2z"] == pytest.approx(2.0 * float(z.pow(2).sum(-1).mean()), rel=1e-5)
    # one training step: the penalty's gradient reaches the encoder and the step lowers it
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt.zero_grad()
    total.backward()
    assert model.to_z.weight.grad is not None and model.to_z.weight.grad.abs().sum() > 0
    opt.step()
    _, after = forward_losses(model, composer, batch, step=4)
    assert after["loss/test_l2z"] < metrics["loss/test_l2z"]


def test_a_registered_regularizer_gets_the_shared_ramp_and_a_weight_override() -> None:
    cfg = _losses({"regularizer": "test_l2z", "weights": {"test_l2z": 0.4},
                   "regularizer_ramp": {"type": "linear_warmup", "steps": 10}})
    composer = build_losses(cfg, latent_dim=8)
    assert composer.weights(0)["test_l2z"] == 0.0 and composer.weights(10)["test_l2z"] == pytest.approx(0.4)
    assert DEFAULT_WEIGHTS["test_l2z"] == 0.1 and "test_l2z" in DEFAULT_WEIGHTS


def test_a_registered_semantic_objective_trains_through_the_composer() -> None:
    cfg = _losses({"regularizer": "none", "semantic": ["test_mean"], "options": {"test_mean": {"target": 3.0}}})
    composer = build_losses(cfg, latent_dim=8)
    assert composer.objectives["test_mean"].target == 3.0
    total, metrics = forward_losses(StandInAE(latent_dim=8), composer, random_batch(), step=0)
    assert metrics["weight/test_mean"] == 0.5 and metrics["loss/test_mean"] > 0
    total.backward()
    assert composer.objectives["test_mean"].head.weight.grad.abs().sum() > 0


def test_a_registered_bottleneck_and_decoder_build_and_train() -> None:
    torch.manual_seed(0)
    model = build_model(_tiny({"kind": "test_sphere", "options": {"radius": 3.0}},
                              {"kind": "test_repeat", "options": {"hidden": 12}}))
    assert isinstance(model.bottleneck, SphereBottleneck) and isinstance(model.decoder, RepeatDecoder)
    assert model.decoder.net[0].out_features == 12
    composer = build_losses(_losses({"regularizer": "test_l2z"}), latent_dim=8)
    batch = random_batch(t=64)
    total, metrics = forward_losses(model, composer, batch, step=1)
    # every valid frame of z lies on the sphere of radius 3, so the L2 penalty is exactly 9
    assert metrics["loss/test_l2z"] == pytest.approx(9.0, rel=1e-4)
    total.backward()
    assert model.bottleneck.proj.weight.grad.abs().sum() > 0


def test_registered_options_are_strict() -> None:
    with pytest.raises(ConfigError, match=r"model.bottleneck.options: unknown key\(s\) \['radius_'\]"):
        model_config_from_dict(_tiny({"kind": "test_sphere", "options": {"radius_": 3.0}}))
    with pytest.raises(ConfigError, match="model.decoder.options"):
        model_config_from_dict(_tiny(decoder={"kind": "test_repeat", "options": {"hiden": 3}}))
    with pytest.raises(ConfigError, match=r"losses.options.test_l2z: unknown key\(s\) \['scal'\]"):
        build_losses(_losses({"regularizer": "test_l2z", "options": {"test_l2z": {"scal": 1.0}}}), 8)
    # a built-in kind keeps its typed keys and takes no options, and vice versa
    with pytest.raises(ConfigError, match="kind 'gaussian' takes no options"):
        model_config_from_dict(_tiny({"kind": "gaussian", "options": {"radius": 3.0}}))
    with pytest.raises(ConfigError, match=r"\['noise_tau'\] apply to the built-in kinds only"):
        model_config_from_dict(_tiny({"kind": "test_sphere", "noise_tau": 0.5}))
    with pytest.raises(ConfigError, match=r"\['dim'\] apply to the built-in kinds only"):
        model_config_from_dict(_tiny(decoder={"kind": "test_repeat", "dim": 32}))
    with pytest.raises(ConfigError, match="losses.options.sigreg: only registered terms that are not built in"):
        build_losses(_losses({"options": {"sigreg": {"num_directions": 8}}}), 8)


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("what, build, choices", [
    ("bottleneck", lambda: model_config_from_dict(_tiny({"kind": "vq"})), ["deterministic", "gaussian"]),
    ("decoder", lambda: model_config_from_dict(_tiny(decoder={"kind": "hifigan"})), ["zipformer"]),
    ("regularizer", lambda: build_losses(_losses({"regularizer": "vicreg"}), 8), ["kl", "none", "sigreg"]),
    ("semantic objective", lambda: build_losses(_losses({"semantic": ["hubert"]}), 8),
     ["ctc", "distill", "latent_prediction", "masked_units"]),
    ("loss term in weights", lambda: build_losses(_losses({"weights": {"sigreeg": 1.0}}), 8),
     ["kl", "recon", "sigreg"]),
])
def test_unknown_names_list_the_registered_choices(what: str, build, choices: list[str]) -> None:
    with pytest.raises(ConfigError, match=f"unknown {what} ") as err:
        build()
    for name in choices:
        assert f"'{name}'" in str(err.value)


def test_a_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="regularizer 'sigreg' is already registered"):
        register_term(REGULARIZERS, "sigreg", default_weight=1.0)(build_l2z)
    with pytest.raises(ValueError, match="regularizer 'test_l2z' is already registered"):
        register_term(REGULARIZERS, "test_l2z", default_weight=0.1, options=L2Options)(build_l2z)
    with pytest.raises(ValueError, match="semantic objective 'ctc' is already registered"):
        register_term(SEMANTIC_OBJECTIVES, "ctc", default_weight=1.0)(build_mean)
    with pytest.raises(ValueError, match="bottleneck 'gaussian' is already registered"):
        register_bottleneck("gaussian")(build_sphere)
    with pytest.raises(ValueError, match="decoder 'zipformer' is already registered"):
        register_decoder("zipformer")(build_repeat)
    assert {"gaussian", "deterministic", "test_sphere"} <= set(BOTTLENECKS)
    assert {"zipformer", "test_repeat"} <= set(DECODERS)


# ------------------------------------------------- the built-ins are unchanged (recipe configs)

def test_built_in_default_weights_are_unchanged() -> None:
    assert {n: DEFAULT_WEIGHTS[n] for n in ("recon", "sigreg", "kl", "masked_units", "latent_prediction",
                                            "distill", "ctc")} == {
        "recon": 1.0, "sigreg": 0.05,
        "kl": {"type": "linear_warmup", "start": 0.0, "end": 1.0e-3, "steps": 2000},
        "masked_units": 1.0, "latent_prediction": 1.0, "distill": 1.0, "ctc": 1.0}


def _direct_model(cfg) -> nn.Module:
    """The model as build_model made it before the registries (hard-coded classes)."""
    from speechae.models.autoencoder import SpeechAE
    preset = PRESETS[cfg.preset]
    enc_kwargs = _merge(preset["encoder"], cfg.encoder)
    encoder = ZipformerEncoder(num_mel_bins=cfg.num_mel_bins, output_downsampling=_OUTPUT_DOWNSAMPLING[cfg.output_rate],
                               **enc_kwargs)
    bn = cfg.bottleneck
    if bn.kind == "gaussian":
        bottleneck = GaussianBottleneck(encoder.output_dim, bn.latent_dim, logvar_min=bn.logvar_min,
                                        logvar_max=bn.logvar_max)
    else:
        bottleneck = DeterministicBottleneck(encoder.output_dim, bn.latent_dim, norm=bn.norm, noise_tau=bn.noise_tau)
    dec = {f.name: getattr(cfg.decoder, f.name) for f in dataclasses.fields(cfg.decoder)
           if f.name not in ("kind", "options") and getattr(cfg.decoder, f.name) is not None}
    decoder = LatentDecoder(bn.latent_dim, encoder.frame_ratio, num_mel_bins=cfg.num_mel_bins,
                            pos_dim=enc_kwargs["pos_dim"], **{**preset["decoder"], **dec})
    return SpeechAE(encoder, bottleneck, decoder, num_mel_bins=cfg.num_mel_bins)


def _direct_terms(cfg: LossConfig) -> dict[str, type]:
    """The term classes the hard-coded builder chose before the registries."""
    classes = {"sigreg": SIGReg, "kl": KLRegularizer, "masked_units": MaskedUnitPrediction,
               "latent_prediction": LatentPrediction, "distill": Distillation, "ctc": CTCObjective}
    names = ["recon"] + ([cfg.regularizer] if cfg.regularizer != "none" else []) + list(cfg.semantic)
    names += [n for n in cfg.weights if n not in names]
    return {n: classes[n] for n in names if n != "recon"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: "/".join(p.parts[-5:]))
def test_recipe_configs_build_the_same_model_and_losses(path: Path) -> None:
    cfg = load_experiment_config(path)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    torch.manual_seed(0)
    ref = _direct_model(cfg.model)
    assert type(model.bottleneck) is type(ref.bottleneck) and type(model.decoder) is LatentDecoder
    got, want = model.state_dict(), ref.state_dict()
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].shape == tensor.shape and torch.equal(got[name], tensor), name
    if cfg.model.preset == "tiny":
        model.eval(), ref.eval()
        feats = torch.randn(2, 96, cfg.model.num_mel_bins, generator=torch.Generator().manual_seed(1))
        lens = torch.tensor([96, 71])
        with torch.no_grad():
            a, b = model(feats, lens), ref(feats, lens)
        assert torch.equal(a.recon, b.recon) and torch.equal(a.z, b.z)
    composer = build_losses(cfg.losses, cfg.model.bottleneck.latent_dim)
    assert type(composer) is LossComposer  # the built-in arms keep the plain composer
    terms = {**dict(composer.regularizers), **dict(composer.objectives)}
    assert {n: type(m) for n, m in terms.items()} == _direct_terms(cfg.losses)
