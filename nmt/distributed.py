"""DDP plumbing: which process this is, and the two collective operations training needs.

Multi-GPU and multi-node training runs on `torch.distributed`, launched by `torchrun` (NCCL on GPUs, gloo on
CPUs); a run started without it is a world of one, and every function here is then a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group `torchrun` describes in the environment, if any; on CUDA each rank takes the GPU
    of its local rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Dist(dist.get_rank(), dist.get_world_size()), device


def all_reduce_sum(values: list[float], ddp: Dist, device: torch.device) -> list[float]:
    if ddp.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_floats(values: list[float], ddp: Dist, device: torch.device) -> list[float]:
    if ddp.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def barrier(ddp: Dist) -> None:
    if ddp.world_size > 1:
        dist.barrier()


def shut_down(ddp: Dist) -> None:
    if ddp.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
