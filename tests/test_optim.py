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


class _PerTensorScaledAdam(torch.optim.Optimizer):
    """The original per-tensor ScaledAdam (a Python loop with host syncs), kept as the
    reference that the grouped ``_foreach`` version must reproduce."""

    def __init__(self, params, lr=0.045, betas=(0.9, 0.98), eps=1e-8, scalar_lr_scale=0.1,
                 param_min_rms=1e-5, param_max_rms=3.0, scalar_max=10.0, clipping_scale=2.0,
                 clipping_window=128):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, scalar_lr_scale=scalar_lr_scale,
                                      param_min_rms=param_min_rms, param_max_rms=param_max_rms,
                                      scalar_max=scalar_max))
        self.clipping_scale, self.window, self.history, self.num_clipped = clipping_scale, clipping_window, [], 0

    def _clip_factor(self):
        if self.clipping_scale is None:
            return 1.0
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).item()
        history = sorted(self.history)
        self.history = (self.history + [norm])[-self.window:]
        if not math.isfinite(norm) or len(history) < 10:
            return 1.0
        limit = self.clipping_scale * history[len(history) // 2]
        if norm > limit:
            self.num_clipped += 1
            return limit / norm
        return 1.0

    @staticmethod
    def _moments(state, name, value, betas, eps):
        b1, b2 = betas
        if name + "_avg" not in state:
            state[name + "_avg"], state[name + "_sq"] = torch.zeros_like(value), torch.zeros_like(value)
        avg, sq = state[name + "_avg"], state[name + "_sq"]
        avg.mul_(b1).add_(value, alpha=1 - b1)
        sq.mul_(b2).addcmul_(value, value, value=1 - b2)
        t = state["step"]
        return (avg / (1 - b1 ** t)) / ((sq / (1 - b2 ** t)).sqrt() + eps)

    @torch.no_grad()
    def step(self):
        clip = self._clip_factor()
        for group in self.param_groups:
            lr, betas, eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float() * clip
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                if p.numel() == 1:
                    p.add_(self._moments(state, "grad", grad, betas, eps), alpha=-lr * group["scalar_lr_scale"])
                    p.clamp_(-group["scalar_max"], group["scalar_max"])
                    continue
                rms = p.pow(2).mean().sqrt().item()
                d = -lr * group["scalar_lr_scale"] * self._moments(state, "scale", (grad * p).sum(), betas, eps).item()
                if (rms >= group["param_max_rms"] and d > 0) or (rms <= group["param_min_rms"] and d < 0):
                    d = 0.0
                direction = self._moments(state, "grad", grad, betas, eps)
                p.mul_(1.0 + d)
                p.add_(direction, alpha=-lr * max(rms, group["param_min_rms"]))


def _toy_params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(16, 8), (8,), (), (1,), (4, 3, 5), (8,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.5) for s in shapes]
    with torch.no_grad():
        params[5].zero_()  # zero-initialised: exercises the param_min_rms floor
        params[4].mul_(10.0)  # large: exercises the param_max_rms limit
    return params


@pytest.mark.parametrize("clipping_scale", [None, 2.0])
def test_grouped_scaled_adam_matches_per_tensor_reference(clipping_scale) -> None:
    """The _foreach implementation reproduces the per-tensor one (incl. clipping, the min/max
    rms rules, scalars, a gradient-less tensor) to float rounding over many steps."""
    old, new = _toy_params(0), _toy_params(0)
    groups = lambda ps: [{"params": ps[:4]}, {"params": ps[4:], "lr": 0.02}]
    opt_old = _PerTensorScaledAdam(groups(old), lr=0.05, clipping_scale=clipping_scale, clipping_window=16)
    opt_new = ScaledAdam(groups(new), lr=0.05, clipping_scale=clipping_scale, clipping_window=16)
    g = torch.Generator().manual_seed(1)
    for step in range(40):
        # occasional gradient spikes so that clipping triggers
        spike = 50.0 if step in (15, 22, 31) else 1.0
        grads = [torch.randn(p.shape, generator=g) * spike for p in old]
        for i, (po, pn) in enumerate(zip(old, new)):
            skip = i == 1 and step % 3 == 0  # a parameter without gradient on some steps
            po.grad = None if skip else grads[i].clone()
            pn.grad = None if skip else grads[i].clone()
        opt_old.step()
        opt_new.step()
        for po, pn in zip(old, new):
            torch.testing.assert_close(pn, po, rtol=1e-5, atol=1e-6)
    if clipping_scale is not None:
        assert opt_new.num_clipped == opt_old.num_clipped > 0
        assert opt_new.norm_history == pytest.approx(opt_old.history, rel=1e-6)


def test_scaled_adam_clipping_state_roundtrip() -> None:
    """Norm history (a device ring buffer) survives state_dict / load_state_dict in order."""
    p = torch.nn.Parameter(torch.randn(4, 4))
    opt = ScaledAdam([p], clipping_window=8)
    for i in range(13):
        p.grad = torch.full((4, 4), float(i + 1))
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    assert sd["clipping"]["history"] == pytest.approx([4.0 * k for k in range(6, 14)])
    opt2 = ScaledAdam([torch.nn.Parameter(p.detach().clone())], clipping_window=8)
    opt2.load_state_dict(sd)
    assert opt2.norm_history == pytest.approx(sd["clipping"]["history"])
    assert opt2.num_clipped == opt.num_clipped
