"""SIGReg under torch.distributed (gloo, 2 processes) equals SIGReg on the concatenated batch."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from speechae.losses import SIGReg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data() -> torch.Tensor:
    return torch.randn(2, 96, 6, generator=torch.Generator().manual_seed(11))


def _join(rank: int, world: int, port: int) -> None:
    """Join a gloo process group on localhost, one thread per process."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    _join(rank, world, port)
    try:
        z = _data()[rank].clone().requires_grad_(True)  # each rank holds one utterance
        # unequal valid lengths: rank 1 has padding that must be dropped
        lens = torch.tensor([96 if rank == 0 else 70])
        val = SIGReg(num_directions=64, num_frames=None)(z.unsqueeze(0), lens, step=4)
        val.backward()
        torch.save({"value": val.detach(), "grad": z.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process_on_the_concatenation(tmp_path):
    # fork: the children inherit the imported modules (spawn re-imports torch, ~10 s per child
    # on a loaded 2-core machine); they only use gloo on CPU.
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    data = _data()
    z = torch.cat([data[0], data[1, :70]]).requires_grad_(True)
    ref = SIGReg(num_directions=64, num_frames=None)(z, step=4)
    ref.backward()
    assert torch.allclose(r0["value"], ref, rtol=1e-5) and torch.allclose(r1["value"], ref, rtol=1e-5)
    # Each rank's gradient is world_size x its share of d(global statistic) (the all-reduce
    # backward sums over ranks); DDP's averaging over 2 ranks restores the exact gradient.
    assert torch.allclose(r0["grad"] / 2, z.grad[:96], atol=1e-6)
    assert torch.allclose(r1["grad"][:70] / 2, z.grad[96:], atol=1e-6)
    assert torch.all(r1["grad"][70:] == 0)


# --- Scale invariance (issue 10): lambda must mean the same at any batch and world size. ---
# Data of one distribution (a Gaussian of std 2, far enough from N(0, I) for the statistic to
# measure the distance rather than its noise), pushed through a learnable scale W so that the
# gradient reaching a *parameter* is compared (what DDP averages and the optimiser sees).
_BUDGET, _DIM, _DRAWS = 512, 8, 6


def _cloud(draw: int, part: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * draw + part)
    return 2.0 * torch.randn(n, _DIM, generator=g)


def _value_and_grad(frames: torch.Tensor, step: int) -> tuple[float, torch.Tensor]:
    w = torch.eye(_DIM, requires_grad=True)
    val = SIGReg(num_directions=64, num_frames=_BUDGET)(frames @ w, step=step)
    val.backward()
    return float(val.detach()), w.grad


def _scale_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    _join(rank, world, port)
    try:
        out = []
        for d in range(_DRAWS):
            val, grad = _value_and_grad(_cloud(d, rank, _BUDGET), step=d)  # N frames on every rank
            dist.all_reduce(grad)
            out.append((val, grad / world))  # DDP averages gradients over ranks
        torch.save(out, os.path.join(out_dir, f"scale{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_value_and_gradient_do_not_grow_with_frames_or_ranks(tmp_path):
    """2 ranks x N frames and 1 process x 2N frames give the value and gradient size of
    1 process x N frames (N = the budget).  Before the fix both were 2.00x."""
    one = [_value_and_grad(_cloud(d, 0, _BUDGET), d) for d in range(_DRAWS)]
    double = [_value_and_grad(torch.cat([_cloud(d, 0, _BUDGET), _cloud(d, 1, _BUDGET)]), d)
              for d in range(_DRAWS)]
    mp.start_processes(_scale_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = torch.load(tmp_path / "scale0.pt")

    def ratios(runs):
        v = sum(r[0] for r in runs) / sum(r[0] for r in one)
        g = sum(float(r[1].norm()) for r in runs) / sum(float(r[1].norm()) for r in one)
        return v, g

    for name, runs in (("1 x 2N", double), ("2 ranks x N", ranks)):
        v, g = ratios(runs)
        print(f"{name}: value ratio {v:.3f}, gradient ratio {g:.3f}")
        assert abs(v - 1.0) < 0.1 and abs(g - 1.0) < 0.1, (name, v, g)
    # ... and every rank holds the same global value
    assert torch.allclose(torch.tensor([r[0] for r in ranks]),
                          torch.tensor([r[0] for r in torch.load(tmp_path / "scale1.pt")]))


def test_fewer_frames_than_the_budget_keep_the_strength():
    """A batch holding half the budget estimates the same distance: the value and gradient
    stay, only the Gaussian floor moves (floor x B / n, reported by expected_floor)."""
    half = [_value_and_grad(_cloud(d, 0, _BUDGET // 2), d) for d in range(3 * _DRAWS)]
    full = [_value_and_grad(_cloud(d, 0, _BUDGET), d) for d in range(3 * _DRAWS)]
    v = sum(r[0] for r in half) / sum(r[0] for r in full)
    g = sum(float(r[1].norm()) for r in half) / sum(float(r[1].norm()) for r in full)
    assert abs(v - 1.0) < 0.15 and abs(g - 1.0) < 0.15, (v, g)
    reg = SIGReg(num_directions=16, num_frames=_BUDGET)
    reg(torch.randn(_BUDGET // 4, _DIM), step=0)
    assert abs(float(reg.expected_floor()) - 4 * reg.floor) < 1e-6
    reg(torch.randn(4 * _BUDGET, _DIM), step=0)
    assert abs(float(reg.expected_floor()) - reg.floor) < 1e-6
