"""``speechae model-summary``: parameter counts and FLOPs per second of audio."""

from __future__ import annotations

import json
from typing import Any

import click
import torch

from speechae.models import ModelConfig, build_model
from speechae.utils.modelstats import count_flops
from speechae.utils.modelstats import count_parameters as _count


@torch.no_grad()
def summarize(cfg: ModelConfig, seconds: float = 10.0) -> dict[str, Any]:
    """Parameter counts per part and inference FLOPs (matmul/conv, as counted by
    torch.utils.flop_counter: 2 per multiply-add) per second of audio, from one ``seconds``-long
    utterance at 100 frames/s."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    frames = int(round(seconds * 100))
    feats, lens = torch.randn(1, frames, cfg.num_mel_bins), torch.tensor([frames])
    enc_flops = count_flops(lambda: model.encoder(feats, lens))
    total_flops = count_flops(lambda: model(feats, lens))
    return {
        "preset": cfg.preset,
        "output_rate_hz": cfg.output_rate,
        "latent_dim": cfg.bottleneck.latent_dim,
        "bottleneck": cfg.bottleneck.kind,
        "encoder_params": _count(model.encoder),
        "bottleneck_params": _count(model.bottleneck),
        "decoder_params": _count(model.decoder),
        "total_params": _count(model),
        "encoder_gflops_per_audio_second": enc_flops / seconds / 1e9,
        "gflops_per_audio_second": total_flops / seconds / 1e9,
        "flops_input_seconds": seconds,
    }


@click.command("model-summary")
@click.option("--preset", default="tiny", show_default=True, help="tiny | S | M | L")
@click.option("--output-rate", type=click.Choice(["25", "12.5"]), default="25", show_default=True,
              help="latent frame rate in Hz")
@click.option("--latent-dim", type=int, default=64, show_default=True)
@click.option("--bottleneck", type=click.Choice(["gaussian", "deterministic"]), default="gaussian",
              show_default=True)
@click.option("--seconds", type=float, default=10.0, show_default=True,
              help="length of the input used for FLOP counting")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def model_summary(preset: str, output_rate: str, latent_dim: int, bottleneck: str, seconds: float,
                  as_json: bool) -> None:
    """Parameter counts (encoder, bottleneck, decoder, total) and GFLOPs per audio second."""
    cfg = ModelConfig(preset=preset, output_rate=float(output_rate))
    cfg.bottleneck.kind = bottleneck  # type: ignore[assignment]
    cfg.bottleneck.latent_dim = latent_dim
    info = summarize(cfg, seconds)
    if as_json:
        click.echo(json.dumps(info))
        return
    click.echo(f"preset {preset}, latent {latent_dim}-dim {bottleneck} at {output_rate} Hz")
    for part in ("encoder", "bottleneck", "decoder", "total"):
        click.echo(f"  {part + ' params':<18} {info[part + '_params'] / 1e6:9.3f} M")
    click.echo(f"  {'encoder GFLOPs/s':<18} {info['encoder_gflops_per_audio_second']:9.3f}")
    click.echo(f"  {'total GFLOPs/s':<18} {info['gflops_per_audio_second']:9.3f}")
