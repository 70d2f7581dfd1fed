"""Export a trained autoencoder (and vocoder) to ONNX or TorchScript, and check parity.

Parts, each a small module with plain tensor inputs and a dynamic batch and time axis:

==========  ==========================================================  =========================
part        inputs                                                      outputs
==========  ==========================================================  =========================
encoder     features (B, T, F) float32 log-mel, lengths (B,) int64      z (B, T_z, D) (gaussian:
                                                                        the mean), z_lengths (B,)
decoder     z (B, T_z, D), z_lengths (B,), num_frames (B,) int64        log_mel (B, T_z*ratio, F),
                                                                        zero past num_frames
vocoder     log_mel (B, T, F)                                           wav (B, T*hop)
==========  ==========================================================  =========================

The decoder's padded output length is ``T_z * frame_ratio`` (a function of the input shape, so
no data-dependent shape enters the graph); frames past ``num_frames`` are zero: cut them.

ONNX: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript, opset 18).  Under
torch.export the model takes its compile-friendly branches (:func:`speechae.models.scaling.compiling`
is true): padding masks are always applied instead of being skipped for unpadded batches, so
one graph is right for every batch.  The legacy TorchScript-based exporter (``dynamo=False``)
also runs, but bakes those eager branches in (a graph traced on an unpadded batch then fails on
other lengths), so it is not used.  TorchScript: ``torch.jit.trace`` in eval mode on a *padded*
batch of two lengths, with the compile-friendly branches (:func:`_export_mode`).

Both exporters run inside :func:`_export_mode`, which makes the model take its torch.compile
branches and skips the bottleneck's diagnostic metrics (not outputs; they cannot be exported).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from speechae.utils.io import atomic_path

log = logging.getLogger("speechae.export")

FORMATS = ("onnx", "torchscript")
PARTS = ("encoder", "decoder", "vocoder")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
OPSET = 18
# Traced / exported on a padded batch of these feature lengths (two lengths, so the masking
# branch is the one recorded); parity is checked on other lengths and batch sizes.
TRACE_LENGTHS = (203, 101)
PARITY_LENGTHS = ((157,), (400, 333, 61))
# Shortest input the exported encoder graph accepts (it is exported for T >= 17); shorter
# inputs must be padded (speechae.inference.MIN_FRAMES does).
MIN_ENCODER_FRAMES = 17


class EncoderPart(nn.Module):
    """features (B, T, F), lengths (B,) -> (z (B, T_z, D), z_lengths (B,)): the encoder and the
    bottleneck at inference (gaussian: the mean; deterministic: the normalised projection)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        enc = self.model.encoder(features, lengths)
        bn = self.model.bottleneck(enc.x, enc.lengths)
        return (bn.mean if bn.mean is not None else bn.z), bn.lengths


class DecoderPart(nn.Module):
    """z (B, T_z, D), z_lengths (B,), num_frames (B,) -> log-mel (B, T_z * frame_ratio, F),
    zero past ``num_frames``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.decoder, self.ratio = model.decoder, int(model.frame_ratio)

    def forward(self, z: Tensor, z_lengths: Tensor, num_frames: Tensor) -> Tensor:  # noqa: D102
        return self.decoder(z, z_lengths, num_frames, z.shape[1] * self.ratio)


class VocoderPart(nn.Module):
    """log-mel (B, T, F) -> waveform (B, T * hop)."""

    def __init__(self, vocoder: nn.Module) -> None:
        super().__init__()
        self.vocoder = vocoder

    def forward(self, log_mel: Tensor) -> Tensor:  # noqa: D102
        return self.vocoder(log_mel)


IO_NAMES: dict[str, tuple[list[str], list[str]]] = {
    "encoder": (["features", "lengths"], ["z", "z_lengths"]),
    "decoder": (["z", "z_lengths", "num_frames"], ["log_mel"]),
    "vocoder": (["log_mel"], ["wav"]),
}


def make_part(part: str, model: nn.Module | None = None, vocoder: nn.Module | None = None) -> nn.Module:
    """The exportable module of ``part`` (eval mode)."""
    if part == "encoder":
        return EncoderPart(model).eval()
    if part == "decoder":
        return DecoderPart(model).eval()
    if part == "vocoder":
        if vocoder is None:
            raise ValueError("the vocoder part needs a vocoder")
        return VocoderPart(vocoder).eval()
    raise ValueError(f"unknown part {part!r}; choose one of {PARTS}")


def example_inputs(part: str, module: nn.Module, lengths: Sequence[int], seed: int = 0) -> tuple[Tensor, ...]:
    """Inputs of ``part`` for a batch whose feature lengths are ``lengths`` (random log-mel-like
    values, zero-padded; latents from the encoder's shapes)."""
    from speechae.models.testing import make_batch

    if part == "encoder":
        return make_batch(lengths, _num_mel_bins(module), seed=seed)
    if part == "decoder":
        ratio = module.ratio
        lens = torch.tensor(list(lengths))
        z_lens = torch.div(lens + ratio - 1, ratio, rounding_mode="floor")
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(len(lengths), int(z_lens.max()), _latent_dim(module), generator=g)
        z = z * (torch.arange(z.shape[1])[None, :, None] < z_lens[:, None, None])
        return z, z_lens, lens
    if part == "vocoder":
        x, _ = make_batch([max(lengths)] * len(lengths), _num_mel_bins(module), seed=seed)
        return (x,)
    raise ValueError(f"unknown part {part!r}")


def _num_mel_bins(module: nn.Module) -> int:
    if isinstance(module, EncoderPart):
        return int(module.model.num_mel_bins)
    if isinstance(module, VocoderPart):
        return int(module.vocoder.embed.in_channels) if hasattr(module.vocoder, "embed") else 80
    raise ValueError("no mel bins for this part")


def _latent_dim(module: DecoderPart) -> int:
    return int(module.decoder.in_proj.in_features)


def latent_dim_of(model: nn.Module) -> int:
    """Channels of z: the bottleneck's ``latent_dim`` (else the decoder's input width)."""
    dim = getattr(model.bottleneck, "latent_dim", None)
    return int(dim) if dim is not None else int(model.decoder.in_proj.in_features)


@contextlib.contextmanager
def _export_mode() -> Iterator[None]:
    """While exporting or tracing, the model code behaves as under torch.compile
    (:func:`speechae.models.scaling.compiling` is true: masks always applied, Swoosh as plain
    ops instead of an autograd.Function, which TorchScript cannot save), and the bottleneck
    computes no metrics (``.item()`` on a boolean-indexed tensor: a data-dependent shape).

    Both are module globals patched for the duration (export is a one-off, single-threaded
    step); the equivalent permanent change is two lines of model code (docs/inference.md)."""
    import speechae.models.bottleneck as bottleneck
    import speechae.models.scaling as scaling

    patches = [(scaling, "compiling", lambda: True)]
    if hasattr(bottleneck, "_latent_metrics"):
        patches.append((bottleneck, "_latent_metrics", lambda z, valid: {}))
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    for mod, name, value in patches:
        setattr(mod, name, value)
    # the exporter's passes log every step at INFO (hundreds of lines) and torch.onnx warns
    # about optional torchvision ops: keep errors only
    quiet = {name: logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")}
    levels = {name: lg.level for name, lg in quiet.items()}
    for lg in quiet.values():
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)
        for name, lg in quiet.items():
            lg.setLevel(levels[name])


def _dynamic_shapes(part: str) -> dict[str, dict[int, Any]]:
    from torch.export import Dim

    b = Dim("batch", min=1, max=1024)
    if part == "encoder":
        return {"features": {0: b, 1: Dim("frames", min=MIN_ENCODER_FRAMES, max=1_000_000)}, "lengths": {0: b}}
    if part == "decoder":
        return {"z": {0: b, 1: Dim("latent_frames", min=2, max=250_000)}, "z_lengths": {0: b}, "num_frames": {0: b}}
    return {"log_mel": {0: b, 1: Dim("frames", min=2, max=1_000_000)}}


def export_part(module: nn.Module, part: str, fmt: str, path: str | Path) -> Path:
    """Write ``module`` (from :func:`make_part`) as ``fmt`` to ``path`` (atomically)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    path = Path(path)
    inputs = example_inputs(part, module, TRACE_LENGTHS)
    in_names, out_names = IO_NAMES[part]
    with _export_mode(), torch.no_grad(), atomic_path(path) as tmp:
        if fmt == "torchscript":
            traced = torch.jit.trace(module, inputs, check_trace=False)
            torch.jit.save(traced, str(tmp))
        else:
            torch.onnx.export(module, inputs, str(tmp), dynamo=True, opset_version=OPSET, input_names=in_names,
                              output_names=out_names, dynamic_shapes=_dynamic_shapes(part), verbose=False,
                              external_data=False)
    return path


def load_exported(path: str | Path, num_threads: int | None = None) -> Any:
    """An exported part: an ``onnxruntime.InferenceSession`` (CPU) for ``.onnx``, a TorchScript
    module for ``.pt``.  A file that is not one is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported model")
    try:
        if path.suffix == ".onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if num_threads:
                opts.intra_op_num_threads = num_threads
                opts.inter_op_num_threads = 1
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:
        raise ValueError(f"{path}: cannot load the exported model ({str(e).strip()[:300]})") from e


def run_exported(runner: Any, inputs: Sequence[Tensor]) -> list[np.ndarray]:
    """Outputs (numpy) of a loaded exported part on ``inputs``."""
    if isinstance(runner, torch.jit.ScriptModule):
        with torch.inference_mode():
            out = runner(*inputs)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.numpy() for o in out]
    names = [i.name for i in runner.get_inputs()]
    return list(runner.run(None, {n: t.numpy() for n, t in zip(names, inputs)}))


def parity(module: nn.Module, part: str, path: str | Path,
           lengths: Sequence[Sequence[int]] = (TRACE_LENGTHS,) + PARITY_LENGTHS) -> float:
    """Max abs difference between the exported file at ``path`` and eager ``module`` over the
    float outputs of batches with feature ``lengths`` (integer outputs must match exactly: a
    mismatch is reported as inf).  The default lengths include ones never traced."""
    runner = load_exported(path)
    worst = 0.0
    for k, lens in enumerate(lengths):
        inputs = example_inputs(part, module, lens, seed=k + 1)
        with torch.inference_mode():
            ref = module(*inputs)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = run_exported(runner, inputs)
        for r, g in zip(ref, got):
            r = r.numpy()
            if r.shape != g.shape:
                return float("inf")
            if np.issubdtype(r.dtype, np.integer):
                if not np.array_equal(r, g):
                    return float("inf")
            else:
                worst = max(worst, float(np.abs(r - g).max()) if r.size else 0.0)
    return worst


def export_model(model: nn.Module, out_dir: str | Path, formats: Sequence[str] = ("onnx",),
                 vocoder: nn.Module | None = None, check: bool = True,
                 meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export the encoder, decoder and (when given) vocoder of ``model`` in each of ``formats``
    to ``out_dir`` as ``<part>.onnx`` / ``<part>.pt``; with ``check``, measure :func:`parity`.

    Writes ``out_dir/export.json`` (files, parity, shapes, the frame ratio) and returns it."""
    out_dir = Path(out_dir)
    for f in formats:
        if f not in FORMATS:
            raise ValueError(f"unknown export format {f!r}; choose one of {FORMATS}")
    model = model.cpu().eval()
    parts = ["encoder", "decoder"] + (["vocoder"] if vocoder is not None else [])
    report: dict[str, Any] = {"frame_ratio": int(model.frame_ratio), "latent_frame_rate": float(model.latent_frame_rate),
                              "num_mel_bins": int(model.num_mel_bins), "latent_dim": latent_dim_of(model),
                              "hop": 160, "sampling_rate": 16000, "min_encoder_frames": MIN_ENCODER_FRAMES,
                              "io": {p: {"inputs": IO_NAMES[p][0], "outputs": IO_NAMES[p][1]} for p in parts},
                              "files": {}, "parity_max_abs": {}, "export_seconds": {}, **(meta or {})}
    for part in parts:
        module = make_part(part, model, vocoder.cpu().eval() if vocoder is not None else None)
        for fmt in formats:
            path = out_dir / f"{part}{SUFFIX[fmt]}"
            t0 = time.perf_counter()
            export_part(module, part, fmt, path)
            key = f"{part}.{fmt}"
            report["export_seconds"][key] = round(time.perf_counter() - t0, 2)
            report["files"][key] = path.name
            if check:
                report["parity_max_abs"][key] = parity(module, part, path)
                log.info("%s: parity max |diff| %.3g", path, report["parity_max_abs"][key])
    with atomic_path(out_dir / "export.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
