"""``speechae encode / decode / resynth / export``: thin wrappers over speechae.inference and
speechae.export."""

from __future__ import annotations

import json
from pathlib import Path

import click

_CTX = {"help_option_names": ["-h", "--help"]}
_weights = click.option("--weights", type=click.Choice(["window", "running", "raw"]), default="window",
                        show_default=True, help="which weights (as speechae evaluate): window / running average, raw")
_device = click.option("--device", default="auto", show_default=True, help="auto (GPU when present), cpu, cuda[:i]")
_vocoder = click.option("--vocoder", default="auto", show_default=True,
                        help="auto: <recipe>/exp/vocoder when trained, else Griffin-Lim; none: Griffin-Lim; "
                             "or a vocoder experiment directory")
_threads = click.option("--num-threads", type=int, default=0, help="torch threads (0: leave the default)")


def _load(exp_dir: str, weights: str, device: str, vocoder: str | None, num_threads: int):  # noqa: ANN202
    import torch

    from speechae.inference import SpeechAE
    from speechae.utils.logging import setup_logging

    setup_logging()
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    return SpeechAE.from_exp_dir(exp_dir, weights=weights, device=device, vocoder=vocoder)


@click.command(context_settings=_CTX)
@click.argument("exp_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out-dir", required=True, help="where latents and their index go")
@click.option("--format", "fmt", type=click.Choice(["npy", "lhotse"]), default="npy", show_default=True,
              help="npy: <id>.npy (T_z, D) + index.tsv; lhotse: cuts.jsonl.gz with a 'latents' array per cut")
@click.option("--storage", type=click.Choice(["numpy_files", "lilcom_chunky"]), default="numpy_files",
              show_default=True, help="Lhotse writer of --format lhotse (lilcom is lossy)")
@click.option("--batch-seconds", type=float, default=120.0, show_default=True,
              help="padded audio per batch (utterances are sorted by duration)")
@_weights
@_device
@_threads
def encode(exp_dir: str, inputs: tuple[str, ...], out_dir: str, fmt: str, storage: str, batch_seconds: float,
           weights: str, device: str, num_threads: int) -> None:
    """Latents of INPUTS (audio files, directories of .wav/.flac, Lhotse cut manifests) with EXP_DIR's model."""
    from speechae.inference import encode_files

    ae = _load(exp_dir, weights, device, None, num_threads)
    index = encode_files(ae, inputs, out_dir, fmt=fmt, batch_seconds=batch_seconds, storage=storage)
    click.echo(f"wrote {index}")


@click.command(context_settings=_CTX)
@click.argument("exp_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("latents", nargs=-1, required=True)
@click.option("--out-dir", required=True, help="where <id>.wav (16 kHz) go")
@_vocoder
@_weights
@_device
@_threads
def decode(exp_dir: str, latents: tuple[str, ...], out_dir: str, vocoder: str, weights: str, device: str,
           num_threads: int) -> None:
    """16 kHz WAVs of LATENTS (.npy files or directories of them, as written by `speechae encode`)."""
    from speechae.inference import decode_files

    ae = _load(exp_dir, weights, device, vocoder, num_threads)
    paths = decode_files(ae, latents, out_dir)
    click.echo(f"wrote {len(paths)} wav file(s) to {out_dir} ({ae.vocoder_name})")


@click.command(context_settings=_CTX)
@click.argument("exp_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("src")
@click.argument("dst")
@_vocoder
@_weights
@_device
@_threads
def resynth(exp_dir: str, src: str, dst: str, vocoder: str, weights: str, device: str, num_threads: int) -> None:
    """Encode and decode SRC (any rate; channel 0) into DST, a 16 kHz WAV of the same duration."""
    from speechae.inference import resynth_file

    ae = _load(exp_dir, weights, device, vocoder, num_threads)
    t_in, t_out = resynth_file(ae, src, dst)
    click.echo(f"wrote {dst}: {t_out:.3f} s at 16 kHz from {t_in:.3f} s ({ae.vocoder_name})")


@click.command(context_settings=_CTX)
@click.argument("exp_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "formats", type=click.Choice(["onnx", "torchscript"]), multiple=True, default=("onnx",),
              show_default=True, help="repeat for both")
@click.option("--out-dir", required=True, help="where encoder/decoder[/vocoder].{onnx,pt} and export.json go")
@click.option("--vocoder", default="none", show_default=True,
              help="also export a vocoder: auto (<recipe>/exp/vocoder), a vocoder experiment directory, or none")
@click.option("--check/--no-check", default=True, show_default=True,
              help="measure parity (max |diff|) against the eager model on lengths never traced")
@_weights
@_threads
def export(exp_dir: str, formats: tuple[str, ...], out_dir: str, vocoder: str, check: bool, weights: str,
           num_threads: int) -> None:
    """Export EXP_DIR's encoder+bottleneck, decoder (and vocoder) with a dynamic time axis."""
    from speechae.export import export_model

    ae = _load(exp_dir, weights, "cpu", vocoder, num_threads)
    report = export_model(ae.model, out_dir, formats=formats, vocoder=ae.vocoder, check=check,
                          meta={"exp_dir": str(Path(exp_dir)), "weights": ae.info.get("weights"),
                                "vocoder": ae.vocoder_name if ae.vocoder is not None else None})
    click.echo(json.dumps({"files": report["files"], "parity_max_abs": report["parity_max_abs"]}, indent=2))
