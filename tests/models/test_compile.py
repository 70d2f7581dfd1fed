"""torch.compile of the encoder and decoder: few graphs, no recompiles across batch shapes or
steps, and the same numbers as eager.

The fast tests trace with ``backend="aot_eager"``: Dynamo and AOTAutograd run exactly as with
inductor (graph breaks, guards and the traced backward are theirs), only the C++ code
generation is skipped, which keeps them within about a minute on one core.  The Inductor run
(static shapes) is marked ``slow``.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

from speechae.models import ModelConfig, build_model
from speechae.models.builder import DecoderConfig, EncoderConfig
from speechae.models.scaling import iter_scheduled_floats
from speechae.models.testing import make_batch, no_skipping


def _deterministic_small() -> nn.Module:
    """The tiny preset cut to two encoder stacks (50 and 25 Hz) and one decoder layer and conv
    block (every kind of module, less tracing time), with no dropout, no layer skipping and
    every Balancer / Whiten check on, so eager and compiled runs draw no random numbers that
    could differ."""
    torch.manual_seed(0)
    enc = EncoderConfig(dims=[32, 48], num_layers=[1, 1], ff_dims=[64, 96], num_heads=[2, 2],
                        downsampling=[1, 2], kernel_sizes=[7, 7], dropout=0.0)
    cfg = ModelConfig(preset="tiny", encoder=enc, decoder=DecoderConfig(num_conv_blocks=1, dropout=0.0))
    model = no_skipping(build_model(cfg)).train()
    for sf in iter_scheduled_floats(model):
        if sf.name.endswith(".prob"):
            sf.override = 1.0
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    model.set_batch_count(1000.0)
    return model


def _step(model: nn.Module, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Encoder and decoder forward + backward (the bottleneck stays out: it is not compiled)."""
    model.zero_grad(set_to_none=True)
    enc = model.encoder(x, lens)
    z = model.bottleneck.proj(enc.x)[..., : model.decoder.in_proj.in_features]
    recon = model.decoder(z, enc.lengths, lens, x.shape[1])
    loss = recon.pow(2).mean() + enc.x.pow(2).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return enc.x.detach(), recon.detach(), grads


def _compiled_run(backend: str, batches: list[tuple[torch.Tensor, torch.Tensor]], dynamic: bool):
    torch._dynamo.reset()
    counters.clear()
    eager = _deterministic_small()
    compiled = _deterministic_small()
    compiled.compile_parts(backend=backend, dynamic=dynamic)
    results = []
    for step, (x, lens) in enumerate(batches):
        for m in (eager, compiled):
            m.set_batch_count(1000.0 + 50.0 * step)  # schedules move every step
        results.append((_step(eager, x, lens), _step(compiled, x, lens)))
    return results, counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def _assert_close(eager, compiled, rtol: float, atol: float) -> None:
    (e_enc, e_rec, e_grads), (c_enc, c_rec, c_grads) = eager, compiled
    torch.testing.assert_close(c_enc, e_enc, rtol=rtol, atol=atol)
    torch.testing.assert_close(c_rec, e_rec, rtol=rtol, atol=atol)
    assert c_grads.keys() == e_grads.keys()
    for name in e_grads:
        torch.testing.assert_close(c_grads[name], e_grads[name], rtol=rtol, atol=atol, msg=name)


def test_compiled_parts_match_eager_without_graph_breaks_or_recompiles() -> None:
    # Three batches of different sizes and lengths (padded and unpadded, odd lengths).
    batches = [make_batch((163, 101, 37)), make_batch((120, 120), seed=1), make_batch((97, 64, 80, 51), seed=2)]
    results, graphs, breaks = _compiled_run("aot_eager", batches, dynamic=True)
    assert breaks == 0
    # One graph each for the encoder and the decoder, reused for every shape and step.
    assert graphs <= 2
    for eager, compiled in results:
        _assert_close(eager, compiled, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_inductor_matches_eager() -> None:
    # Static shapes: Inductor (torch 2.13) fails on the encoder with dynamic=True
    # (docs/performance.md); two steps of one shape, so still no recompile.
    batch = make_batch((163, 101, 37))
    results, graphs, breaks = _compiled_run("inductor", [batch, batch], dynamic=False)
    assert breaks == 0 and graphs <= 2
    for eager, compiled in results:
        _assert_close(eager, compiled, rtol=1e-3, atol=1e-4)
