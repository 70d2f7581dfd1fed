"""Process-group set-up for DDP: torchrun's environment (single or multi node) or one process.

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
for every worker; multi-node jobs get them from a rendezvous (``--rdzv-backend c10d
--rdzv-endpoint host:port``, see tools/slurm_train.sbatch).  Without them training runs as a
single process.  The backend is NCCL on GPUs and Gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    """Where this process sits: global rank, node-local rank, world size and device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on global rank 0 (the one that writes logs and checkpoints)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one member is active."""
        return self.world_size > 1


def choose_device(preference: str, local_rank: int) -> torch.device:
    """``auto``: ``cuda:<local_rank>`` when a GPU is visible, else CPU."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no GPU is visible")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device_preference: str = "auto", backend: str = "auto",
                     timeout_s: float = 1800.0) -> DistEnv:
    """Read torchrun's variables and join the process group (no-op for one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed() -> None:
    """Leave the process group (safe to call when none is active)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_max(value: float, env: DistEnv) -> float:
    """Maximum of ``value`` over ranks (used to agree on stop / skip decisions)."""
    if not env.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device(env))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a float64 tensor over ranks (validation totals)."""
    if not env.distributed:
        return values
    t = values.to(device=_collective_device(env), dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op for one process)."""
    if env.distributed:
        dist.barrier()


def _collective_device(env: DistEnv) -> torch.device:
    return env.device if dist.get_backend() == "nccl" else torch.device("cpu")


def torchrun_argv(nproc: int, argv: Sequence[str]) -> list[str]:
    """Command that runs ``speechae <argv>`` under torchrun with ``nproc`` workers on this node."""
    exe = shutil.which("torchrun")
    launcher = [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]
    return launcher + ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc),
                       "-m", "speechae.cli", *argv]
