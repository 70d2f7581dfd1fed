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


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
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
