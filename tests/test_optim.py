"""ScaledAdam convergence and invariances; Eden and warm-up/cosine schedules; resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from speechae.config import from_dict
from speechae.optim import Eden, OptimConfig, ScaledAdam, WarmupCosine, build_optimizer


def _quadratic_run(opt_factory, steps: int = 300) -> tuple[float, float]:
    torch.manual_seed(0)
    target = torch.randn(8, 8)
    w = torch.nn.Parameter(torch.randn(8, 8) * 0.1)
    b = torch.nn.Parameter(torch.zeros(()))
    opt = opt_factory([w, b])
    loss0 = None
    for _ in range(steps):
        opt.zero_grad()
        loss = (w - target).pow(2).sum() + (b - 0.5) ** 2
        loss0 = loss0 if loss0 is not None else loss.item()
        loss.backward()
        opt.step()
    return loss0, loss.item()


def test_scaled_adam_minimises_quadratic() -> None:
    loss0, loss = _quadratic_run(lambda p: ScaledAdam(p, lr=0.05, clipping_scale=None))
    assert loss < 0.01 * loss0


def test_scaled_adam_with_clipping_still_converges() -> None:
    loss0, loss = _quadratic_run(lambda p: ScaledAdam(p, lr=0.05, clipping_scale=2.0))
    assert loss < 0.01 * loss0


def test_scaled_adam_step_is_relative_to_param_scale() -> None:
    # Same gradient direction, tensors 100x apart in scale: relative change must match.
    changes = []
    for scale in (0.01, 1.0):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(16, 16) * scale)
        before = p.detach().clone()
        opt = ScaledAdam([p], lr=0.01, clipping_scale=None)
        p.grad = torch.randn(16, 16)
        opt.step()
        changes.append(((p - before).norm() / before.norm()).item())
    assert changes[0] == pytest.approx(changes[1], rel=1e-3)


@pytest.mark.parametrize("batch,epoch", [(0, 0), (250, 0), (500, 0.0), (7500, 1), (20000, 3.5), (1e5, 10)])
def test_eden_matches_formula(batch: float, epoch: float) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.045)
    sched = Eden(opt, lr_batches=7500, lr_epochs=3.5, warmup_batches=500, warmup_start=0.5)
    sched.step(batch, epoch)
    warm = 1.0 if batch >= 500 else 0.5 + 0.5 * batch / 500
    want = 0.045 * ((batch**2 + 7500**2) / 7500**2) ** -0.25 * ((epoch**2 + 3.5**2) / 3.5**2) ** -0.25 * warm
    assert sched.get_last_lr()[0] == pytest.approx(want, rel=1e-12)


def test_warmup_cosine_shape() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = WarmupCosine(opt, warmup_batches=10, total_batches=110, min_lr_ratio=0.1)
    lrs = []
    for b in range(0, 130):
        sched.step(b, 0)
        lrs.append(sched.get_last_lr()[0])
    assert lrs[0] < lrs[5] < lrs[9] < 1.0
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.1) and lrs[129] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


@pytest.mark.parametrize("name,scheduler", [("scaled_adam", "eden"), ("adamw", "warmup_cosine")])
def test_build_and_resume(name: str, scheduler: str) -> None:
    cfg = from_dict(OptimConfig, {"name": name, "scheduler": scheduler, "lr": 0.01})

    def run(model, opt, sched, start, n):
        for i in range(start, start + n):
            sched.step(i, i / 10)
            opt.zero_grad()
            model(torch.full((4, 3), float(i % 5))).pow(2).mean().backward()
            opt.step()

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt, sched = build_optimizer(model.named_parameters(), cfg)
    if name == "adamw":  # biases (1-D) are not decayed
        assert [g["weight_decay"] for g in opt.param_groups] == [cfg.weight_decay, 0.0]
    run(model, opt, sched, 0, 15)
    # deepcopy: state_dict() holds live references, a checkpoint would be a copy
    snap = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict()))
    run(model, opt, sched, 15, 5)
    reference = model.weight.detach().clone()

    model2 = torch.nn.Linear(3, 2)
    model2.load_state_dict(snap[0])
    opt2, sched2 = build_optimizer(model2.named_parameters(), cfg)
    opt2.load_state_dict(snap[1])
    sched2.load_state_dict(snap[2])
    run(model2, opt2, sched2, 15, 5)
    torch.testing.assert_close(model2.weight, reference)
