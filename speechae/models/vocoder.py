"""A Vocos-style neural vocoder: log-mel ``(B, T, 80)`` -> waveform ``(B, T * 160)``.

Vocos (Siuzdenko, arXiv 2306.00814) keeps the frame rate of its input all the way: a Conv1d
embedding, a stack of ConvNeXt blocks (Liu et al. 2022: depthwise conv k=7, LayerNorm,
pointwise MLP with GELU, layer scale) and a linear head predicting, per frame, the log
magnitude and the phase angle of an STFT that an inverse STFT turns into samples.  No
upsampling layers: the cost per second of audio is that of a 100 Hz sequence model, which is
what makes it usable on CPU.

Alignment with the features: the inverse STFT uses "same" padding (``(n_fft - hop) / 2``
trimmed on both sides), so frame t is centred on sample ``t * 160 + 80``, exactly where the
Kaldi-style features of :mod:`speechae.audio` centre their frame t, and T frames give exactly
``T * 160`` samples.

:func:`build_vocoder` is the only reader of :class:`VocoderConfig`; :func:`load_vocoder`
rebuilds a trained generator from an experiment directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from speechae.config import ConfigError, from_dict

# Presets: "cpu" is the CPU recipe's size; "vocos" is the paper's generator (Table 5 of
# arXiv 2306.00814: dim 512, intermediate 1536, 8 ConvNeXt blocks).
VOCODER_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"dim": 32, "intermediate_dim": 64, "num_layers": 2},
    "cpu": {"dim": 128, "intermediate_dim": 384, "num_layers": 6},
    "vocos": {"dim": 512, "intermediate_dim": 1536, "num_layers": 8},
}


@dataclass
class VocoderConfig:
    """The generator (the ``vocoder:`` block of a vocoder experiment config).

    ``preset`` fills ``dim`` / ``intermediate_dim`` / ``num_layers`` unless overridden.  ``n_fft``
    is the synthesis window (4 x hop, as Vocos's 1024 / 256); ``hop`` must equal the features'
    frame shift in samples.  ``max_log_mag``: magnitudes are ``exp`` of the prediction clipped
    at ``exp(max_log_mag)`` (Vocos clips at 1e2).
    """

    preset: str = "cpu"
    dim: int | None = None
    intermediate_dim: int | None = None
    num_layers: int | None = None
    num_mel_bins: int = 80
    sampling_rate: int = 16000
    hop: int = 160
    n_fft: int = 640
    kernel_size: int = 7
    max_log_mag: float = 4.605  # log(1e2)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block (Liu et al. 2022) on ``(B, C, T)``: depthwise conv, LayerNorm, MLP with
    GELU, layer scale, residual.  ``layer_scale`` is the initial value of the per-channel gain
    (Vocos: 1 / num_layers)."""

    def __init__(self, dim: int, intermediate_dim: int, layer_scale: float, kernel_size: int = 7) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` -> ``(B, C, T)``."""
        h = self.dwconv(x).transpose(1, 2)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class ISTFTHead(nn.Module):
    """Per-frame linear map to ``n_fft // 2 + 1`` log magnitudes and phase angles, then an
    inverse STFT with "same" padding: ``(B, T, dim)`` -> ``(B, T * hop)``.

    Magnitude ``exp(m)`` (clipped), phase as ``cos p + i sin p`` (Vocos: a predicted angle,
    no phase wrapping needed).  Overlap-add divides by the summed squared window of the *valid*
    frames of each item, so padded frames never change the valid samples.
    """

    def __init__(self, dim: int, n_fft: int, hop: int, max_log_mag: float) -> None:
        super().__init__()
        if (n_fft - hop) % 2:
            raise ConfigError(f"n_fft - hop must be even for 'same' padding (n_fft {n_fft}, hop {hop})")
        self.n_fft, self.hop, self.max_log_mag = n_fft, hop, max_log_mag
        self.out = nn.Linear(dim, n_fft + 2)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """Complex STFT ``(B, T, n_fft // 2 + 1)`` predicted from ``(B, T, dim)``."""
        log_mag, phase = self.out(x).float().chunk(2, dim=-1)
        mag = log_mag.clamp(max=self.max_log_mag).exp()
        return torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, dim)`` (+ ``(B, T)`` bool valid frames) -> waveform ``(B, T * hop)``."""
        return self.istft(self.spectrum(x), frame_mask)

    def istft(self, spec: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Inverse STFT with "same" padding: ``(B, T, n_fft // 2 + 1)`` -> ``(B, T * hop)``.

        Frame t is the Hann-windowed ``n_fft`` samples starting at ``t * hop - (n_fft - hop) / 2``;
        least-squares overlap-add (Griffin & Lim 1984) divided by the summed squared window."""
        b, t, _ = spec.shape
        n, hop = self.n_fft, self.hop
        mask = torch.ones(b, t, device=spec.device) if frame_mask is None else frame_mask.to(torch.float32)
        frames = torch.fft.irfft(spec, n=n) * self.window * mask[..., None]  # (B, T, n)
        length = (t - 1) * hop + n
        fold = dict(output_size=(1, length), kernel_size=(1, n), stride=(1, hop))
        y = F.fold(frames.transpose(1, 2), **fold).reshape(b, length)
        env = F.fold((mask[..., None] * self.window ** 2).transpose(1, 2), **fold).reshape(b, length)
        pad = (n - hop) // 2
        y, env = y[:, pad:pad + t * hop], env[:, pad:pad + t * hop]
        return y / env.clamp_min(1e-8)


class Vocoder(nn.Module):
    """Vocos generator: log-mel ``(B, T, F)`` -> waveform ``(B, T * hop)``.

    Args:
        num_mel_bins: input features (80 log-mel of :func:`speechae.audio.fbank_module`).
        dim / intermediate_dim / num_layers: ConvNeXt width, MLP width, depth.
        n_fft / hop: synthesis STFT (hop = the features' frame shift in samples).
        kernel_size: embedding and depthwise convolution size.
        max_log_mag: clip of the predicted log magnitude.
    """

    def __init__(self, num_mel_bins: int = 80, dim: int = 128, intermediate_dim: int = 384, num_layers: int = 6,
                 n_fft: int = 640, hop: int = 160, kernel_size: int = 7, max_log_mag: float = 4.605) -> None:
        super().__init__()
        self.hop = hop
        self.embed = nn.Conv1d(num_mel_bins, dim, kernel_size, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim, 1.0 / num_layers, kernel_size)
                                    for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = ISTFTHead(dim, n_fft, hop, max_log_mag)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # Vocos initialises convolutions and linears with N(0, 0.02), zero bias.
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``feats`` ``(B, T, F)`` log-mel, ``lengths`` ``(B,)`` valid frames (None: all) ->
        waveform ``(B, T * hop)``; samples past ``lengths * hop`` are zero, and padding frames
        never change the valid samples (hidden states are zeroed there before every conv)."""
        b, t, _ = feats.shape
        mask = None
        if lengths is not None:
            mask = torch.arange(t, device=feats.device)[None] < lengths.to(feats.device)[:, None]
            feats = feats * mask[..., None]
        m = None if mask is None else mask[:, None, :].to(feats.dtype)
        x = self.embed(feats.transpose(1, 2))
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x if m is None else x * m)
        x = self.final_norm(x.transpose(1, 2))
        wav = self.head(x, mask)
        if mask is not None:
            wav = wav * mask.repeat_interleave(self.hop, dim=1)
        return wav

    @torch.no_grad()
    def synthesize(self, feats: torch.Tensor) -> torch.Tensor:
        """Inference on ``(T, F)`` or ``(B, T, F)``: waveform ``(T * hop,)`` or ``(B, T * hop)``."""
        squeeze = feats.dim() == 2
        wav = self(feats.unsqueeze(0) if squeeze else feats)
        return wav[0] if squeeze else wav


def resolve_vocoder(cfg: VocoderConfig) -> dict[str, Any]:
    """The constructor keyword arguments of ``cfg`` (preset values filled in)."""
    if cfg.preset not in VOCODER_PRESETS:
        raise ConfigError(f"unknown vocoder preset '{cfg.preset}'; choose one of {sorted(VOCODER_PRESETS)}")
    sizes = dict(VOCODER_PRESETS[cfg.preset])
    for key in sizes:
        if getattr(cfg, key) is not None:
            sizes[key] = getattr(cfg, key)
    if cfg.hop * 100 != cfg.sampling_rate:
        raise ConfigError(f"vocoder.hop {cfg.hop} must be the 10 ms frame shift at {cfg.sampling_rate} Hz")
    return dict(num_mel_bins=cfg.num_mel_bins, n_fft=cfg.n_fft, hop=cfg.hop, kernel_size=cfg.kernel_size,
                max_log_mag=cfg.max_log_mag, **sizes)


def build_vocoder(cfg: VocoderConfig) -> Vocoder:
    """The generator described by ``cfg`` (the only place that reads a VocoderConfig)."""
    return Vocoder(**resolve_vocoder(cfg))


def vocoder_config_from_dict(data: Mapping[str, Any] | None) -> VocoderConfig:
    """A VocoderConfig from a plain dict (unknown keys are an error)."""
    return from_dict(VocoderConfig, dict(data or {}), where="vocoder")


def load_vocoder(exp_dir: str | Path, device: str | torch.device = "cpu", weights: str = "auto") -> Vocoder:
    """The generator of a vocoder experiment's newest checkpoint, in eval mode.

    ``weights``: ``auto`` (the running average ``model_avg`` when the checkpoint has one, else
    the trained weights), ``avg`` (the average; error if absent) or ``last`` (the trained
    weights, ``modules["generator"]``).
    """
    from speechae.train.checkpoint import load_checkpoint

    if weights not in ("auto", "avg", "last"):
        raise ValueError(f"weights must be auto, avg or last, got {weights!r}")
    state = load_checkpoint(exp_dir)
    config = state.get("config") or {}
    if "vocoder" not in config:
        raise ConfigError(f"{exp_dir}: the checkpoint's config has no 'vocoder' block (not a vocoder experiment)")
    model = build_vocoder(vocoder_config_from_dict(config["vocoder"]))
    avg = state.get("model_avg")
    if weights == "avg" and avg is None:
        raise ValueError(f"{exp_dir}: the checkpoint holds no averaged weights")
    if weights != "last" and avg is not None:
        sd = avg
    else:
        modules = state.get("modules") or {}
        sd = modules.get("generator", state.get("model"))
        if sd is None:
            raise ValueError(f"{exp_dir}: the checkpoint holds no generator weights")
    model.load_state_dict(sd)
    return model.to(device).eval()


__all__ = ["ConvNeXtBlock", "ISTFTHead", "VOCODER_PRESETS", "Vocoder", "VocoderConfig", "build_vocoder",
           "load_vocoder", "resolve_vocoder", "vocoder_config_from_dict"]
