"""Benchmark the training objectives against the encoder's forward + backward.

    python bench/bench_losses.py --presets tiny,M --batch 4 --seconds 10 --device cpu

For each model preset: time the encoder forward + backward (the reference), then each
objective's own forward + backward on the latents (heads included, model excluded) and
report it as a fraction of the reference.  ``latent_prediction`` also costs a second model
pass (the composer doubles the batch), so the full composer step with and without it is
timed as well.  Uses ``speechae.models.build_model`` when importable, otherwise a stand-in
convolutional encoder (and says so).  Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

import torch
from torch import nn

from speechae.config import from_dict
from speechae.losses import LossConfig, build_losses
from speechae.losses.semantic import SemanticInputs


class _StandIn(nn.Module):
    """Fallback when speechae.models is missing: conv encoder at 25 Hz, linear decoder."""

    frame_ratio = 4

    def __init__(self, dim: int = 256, latent_dim: int = 32, num_mel_bins: int = 80) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv1d(num_mel_bins, dim, 4, stride=4), nn.GELU(),
                                     nn.Conv1d(dim, dim, 5, padding=2), nn.GELU())
        self.to_z = nn.Linear(dim, latent_dim)
        self.dec = nn.Linear(latent_dim, num_mel_bins * 4)
        self.latent_dim = latent_dim

    def forward(self, features, feature_lens, input_mask=None):  # noqa: ANN001, ANN201
        from types import SimpleNamespace
        h = self.encoder(features.transpose(1, 2)).transpose(1, 2)
        z = self.to_z(h)
        recon = self.dec(z).reshape(features.shape[0], -1, features.shape[-1])[:, :features.shape[1]]
        z_lens = torch.div(feature_lens + 3, 4, rounding_mode="floor")
        return SimpleNamespace(recon=recon, lengths=feature_lens, z=z, z_mean=None, z_logvar=None,
                               z_lengths=z_lens, encoder_out=h, frame_ratio=4, metrics={})


def _model(preset: str) -> tuple[nn.Module, int, str]:
    try:
        from speechae.models import build_model
    except ImportError:
        m = _StandIn()
        return m, m.latent_dim, "stand-in (speechae.models not importable)"
    model = build_model({"preset": preset})
    return model, int(model.bottleneck.latent_dim if hasattr(model.bottleneck, "latent_dim")
                      else model.decoder.latent_dim), f"speechae.models preset {preset}"


def _time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats * 1000.0


def _batch(b: int, t: int, device: torch.device, vocab: int) -> dict:
    lens = torch.linspace(t, int(0.7 * t), b).long()
    return {"features": torch.randn(b, t, 80, device=device), "feature_lens": lens.to(device),
            "units": torch.randint(0, 500, (b, t), device=device),
            "tokens": torch.randint(1, vocab, (b, t // 25), device=device),
            "token_lens": torch.full((b,), t // 25, device=device),
            "teacher": torch.randn(b, t // 2, 768, device=device),
            "teacher_lens": (lens // 2).to(device)}


def _latent_dim_from_output(model: nn.Module, batch: dict) -> int:
    with torch.no_grad():
        return int(model(batch["features"][:1, :200], batch["feature_lens"][:1].clamp(max=200)).z.shape[-1])


def bench_preset(preset: str, args: argparse.Namespace, device: torch.device) -> dict:
    """All timings (ms) and fractions for one model preset."""
    model, _, source = _model(preset)
    model.to(device).train()
    batch = _batch(args.batch, int(args.seconds * 100), device, 501)
    d = _latent_dim_from_output(model, batch)
    feats, lens = batch["features"], batch["feature_lens"]

    encoder = getattr(model, "encoder", None)

    def enc_step() -> None:
        model.zero_grad(set_to_none=True)
        if encoder is not None and not isinstance(model, _StandIn):
            out = encoder(feats, lens, return_stacks=False)
            out.x.float().pow(2).mean().backward()
        else:
            model(feats, lens).z.pow(2).mean().backward()

    ref = _time(enc_step, device, args.repeats)
    with torch.no_grad():
        out = model(feats, lens)
    res: dict[str, Any] = {"preset": preset, "source": source, "latent_dim": d, "encoder_fwd_bwd_ms": round(ref, 2)}

    cfg = from_dict(LossConfig, {"regularizer": "sigreg", "semantic": ["masked_units", "latent_prediction", "distill", "ctc"],
                                 "sigreg": {"num_directions": args.directions, "num_frames": args.num_frames},
                                 "weights": {"kl": 1.0}})
    comp = build_losses(cfg, d).to(device)
    z0 = out.z.detach().float()
    lat_mask = torch.rand(z0.shape[:2], device=device) < 0.5
    terms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "sigreg": lambda z: comp.regularizers["sigreg"](z, out.z_lengths, step=1),
        "kl": lambda z: comp.regularizers["kl"](z, torch.zeros_like(z), out.z_lengths)[0],
    }
    for name in ("masked_units", "latent_prediction", "distill", "ctc"):
        obj = comp.objectives[name]
        terms[name] = (lambda z, obj=obj: obj(SemanticInputs(z, out.z_lengths, batch, float(out.frame_ratio),
                                                             latent_mask=lat_mask, target_z=z.detach()))[0])
    for name, fn in terms.items():
        def step(fn=fn) -> None:
            z = z0.clone().requires_grad_(True)
            fn(z).backward()
        ms = _time(step, device, args.repeats)
        res[f"{name}_ms"] = round(ms, 3)
        res[f"{name}_frac"] = round(ms / ref, 4)

    def composer_step(semantic: list[str]) -> Callable[[], None]:
        c = build_losses(from_dict(LossConfig, {"regularizer": "sigreg", "semantic": semantic,
                                                "sigreg": {"num_directions": args.directions,
                                                           "num_frames": args.num_frames}}), d).to(device)

        def run() -> None:
            model.zero_grad(set_to_none=True)
            c(model, batch, 1)[0].backward()
        return run

    base = _time(composer_step([]), device, args.repeats)
    lp = _time(composer_step(["latent_prediction"]), device, args.repeats)
    res["step_recon_sigreg_ms"] = round(base, 2)
    res["step_with_latent_prediction_ms"] = round(lp, 2)
    res["latent_prediction_step_ratio"] = round(lp / base, 3)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny,M")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0, help="longest utterance, seconds (100 frames/s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--directions", type=int, default=256)
    p.add_argument("--num-frames", type=int, default=1024)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = [bench_preset(name, args, device) for name in args.presets.split(",")]
    for r in results:
        print(f"== {r['source']} (D={r['latent_dim']}), device {device}, batch {args.batch} x {args.seconds}s")
        print(f"   encoder fwd+bwd: {r['encoder_fwd_bwd_ms']:.1f} ms")
        for name in ("sigreg", "kl", "masked_units", "latent_prediction", "distill", "ctc"):
            print(f"   {name:<18} {r[name + '_ms']:9.2f} ms  {100 * r[name + '_frac']:7.2f} % of encoder")
        print(f"   composer step recon+sigreg {r['step_recon_sigreg_ms']:.1f} ms; with latent_prediction "
              f"{r['step_with_latent_prediction_ms']:.1f} ms (x{r['latent_prediction_step_ratio']})")
    print(json.dumps({"device": str(device), "batch": args.batch, "seconds": args.seconds, "results": results}))


if __name__ == "__main__":
    main()
