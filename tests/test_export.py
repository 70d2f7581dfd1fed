"""speechae.export: ONNX (torch.onnx dynamo exporter) and TorchScript exports of the tiny preset's
encoder+bottleneck, decoder and a tiny vocoder, checked against the eager model.

Tolerance: max |exported - eager| <= 1e-3 on every float output.  Both run float32 with other
kernels (GEMM blocking, fused softmax, conv algorithms), so outputs differ by rounding that grows
through the ~20 layers: measured 2e-6 to 4e-6 (ONNX) and <= 1e-6 (TorchScript) on log-mel values
of magnitude ~10.  1e-3 leaves a 250x margin for other CPUs while any real export fault (a
branch baked in for the traced length, a wrong mask) gives differences of order 1 (the last
test shows the check catching a change of the weights by 1e-2).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from speechae.export import PARTS, example_inputs, export_model, load_exported, make_part, parity, run_exported

TOL = 1e-3


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Small tensors: one thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset (gaussian bottleneck, 16 latent channels) and the tiny vocoder preset."""
    from speechae.models import build_model
    from speechae.models.vocoder import VocoderConfig, build_vocoder

    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "bottleneck": {"kind": "gaussian", "latent_dim": 16}}).eval()
    return model, build_vocoder(VocoderConfig(preset="tiny")).eval()


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """Every part in both formats (the ONNX encoder export takes ~30-60 s on one CPU thread)."""
    model, voc = tiny
    out = tmp_path_factory.mktemp("export")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = export_model(model, out, formats=("onnx", "torchscript"), vocoder=voc)
    finally:
        torch.set_num_threads(before)
    return out, report


def test_parity_of_every_part_and_format(exported) -> None:
    out, report = exported
    assert set(report["parity_max_abs"]) == {f"{p}.{f}" for p in PARTS for f in ("onnx", "torchscript")}
    for key, diff in report["parity_max_abs"].items():
        assert diff <= TOL, (key, diff)
    assert json.loads((out / "export.json").read_text())["parity_max_abs"] == report["parity_max_abs"]
    assert report["frame_ratio"] == 4 and report["latent_dim"] == 16


@pytest.mark.parametrize("fmt", ["onnx", "pt"])
def test_encoder_any_length_and_batch(tiny, exported, fmt) -> None:
    """Lengths never traced, down to the 17-frame minimum, unpadded and padded batches."""
    model, _ = tiny
    out, _ = exported
    mod = make_part("encoder", model)
    lengths = [(17,), (20,), (33,), (64, 64), (1000, 17, 250)]
    assert parity(mod, "encoder", out / f"encoder.{fmt}", lengths) <= TOL


def test_onnx_files_load_with_dynamic_axes(tiny, exported) -> None:
    import onnxruntime as ort

    model, _ = tiny
    out, _ = exported
    names = {"encoder": (["features", "lengths"], ["z", "z_lengths"]),
             "decoder": (["z", "z_lengths", "num_frames"], ["log_mel"]), "vocoder": (["log_mel"], ["wav"])}
    for part, (ins, outs) in names.items():
        sess = load_exported(out / f"{part}.onnx")
        assert isinstance(sess, ort.InferenceSession)
        assert [i.name for i in sess.get_inputs()] == ins and [o.name for o in sess.get_outputs()] == outs
        shape = sess.get_inputs()[0].shape  # (batch, time, channels): batch and time symbolic
        assert all(isinstance(d, str) for d in shape[:2]) and isinstance(shape[2], int), (part, shape)


def test_decoder_output_is_zero_past_num_frames(tiny, exported) -> None:
    model, _ = tiny
    out, _ = exported
    mod = make_part("decoder", model)
    z, z_lens, frames = example_inputs("decoder", mod, (150, 61), seed=3)
    (mel,) = run_exported(load_exported(out / "decoder.onnx"), (z, z_lens, frames))
    assert mel.shape == (2, z.shape[1] * 4, 80)
    assert np.all(mel[1, 61:] == 0) and np.abs(mel[1, :61]).min() > 0
    with torch.no_grad():  # the second item alone, unpadded, gives the same frames
        alone = model.decoder(z[1:, : int(z_lens[1])], z_lens[1:], frames[1:], 61)[0]
    np.testing.assert_allclose(mel[1, :61], alone.numpy(), atol=TOL, rtol=0)


def test_vocoder_length_contract(tiny, exported) -> None:
    _, voc = tiny
    out, _ = exported
    x = torch.randn(2, 37, 80) - 5
    for fmt in ("onnx", "pt"):
        (wav,) = run_exported(load_exported(out / f"vocoder.{fmt}"), (x,))
        assert wav.shape == (2, 37 * 160)
        with torch.no_grad():
            np.testing.assert_allclose(wav, voc(x).numpy(), atol=TOL, rtol=0)


def test_parity_detects_a_different_model(tiny, exported) -> None:
    model, _ = tiny
    out, _ = exported
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.decoder.out_proj.weight.add_(1e-2)
    assert parity(make_part("decoder", other), "decoder", out / "decoder.pt") > 10 * TOL
    assert parity(make_part("decoder", other), "decoder", out / "decoder.onnx") > 10 * TOL


def test_load_exported_names_a_bad_file(tmp_path) -> None:
    bad = tmp_path / "encoder.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=str(bad)):
        load_exported(bad)
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(torch.nn.Linear(1, 1), tmp_path, formats=("tflite",))


def test_cli_export_torchscript(tmp_path) -> None:
    """``speechae export`` on a trainer-format experiment (small model, deterministic bottleneck)."""
    from click.testing import CliRunner

    from speechae.cli import main
    from speechae.train.testing import SMALL_MODEL
    from test_inference import make_experiment

    exp = make_experiment(tmp_path / "exp" / "run", SMALL_MODEL)
    r = CliRunner().invoke(main, ["export", str(exp), "--format", "torchscript", "--out-dir", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "x" / "export.json").read_text())
    assert sorted(report["files"]) == ["decoder.torchscript", "encoder.torchscript"]
    assert max(report["parity_max_abs"].values()) <= TOL and report["weights"].startswith("window")
    assert (tmp_path / "x" / "encoder.pt").is_file()
