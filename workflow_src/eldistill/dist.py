"""Process-group setup for the training loop: torchrun's or SLURM's environment (read by
eldistill.resources.distributed_env), NCCL on GPUs and gloo on CPUs, and the few collectives the loop
needs. Gradients are averaged by hand after accumulation instead of through DistributedDataParallel: the
distillers switch which network is trainable from phase to phase, which DDP's hooks do not follow."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

from eldistill.resources import distributed_env


@dataclass
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None when single-process

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(env: dict | None = None, device: str | None = None) -> DistInfo:
    """Join the process group described by the environment (a no-op for a single process)."""
    info = distributed_env(os.environ if env is None else env)
    rank, local_rank, world = info["rank"], info["local_rank"], info["world_size"]
    if device is None:
        # device_index, not local_rank: a task that SLURM bound to one GPU sees it as cuda:0
        device = f"cuda:{info['device_index']}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = None
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not tdist.is_initialized():
            tdist.init_process_group(
                backend,
                init_method=f"tcp://{info['master_addr']}:{info['master_port']}",
                rank=rank,
                world_size=world,
                timeout=timedelta(minutes=30),
            )
    return DistInfo(rank, local_rank, world, dev, backend)


def shutdown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """Replace each gradient by its mean over processes (one flat all-reduce)."""
    if world_size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def any_process(flag: bool, device: torch.device, world_size: int) -> bool:
    """True on every process when `flag` is True on at least one."""
    return any_processes([flag], device, world_size)[0]


def any_processes(flags: list[bool], device: torch.device, world_size: int) -> list[bool]:
    """Element-wise `any_process` in one all-reduce, so every process takes the same decisions."""
    if world_size == 1:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    tdist.all_reduce(t)
    return [bool(v > 0) for v in t.tolist()]


def sum_over_processes(values: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        values = values.clone()
        tdist.all_reduce(values)
    return values


def barrier(world_size: int) -> None:
    if world_size > 1:
        tdist.barrier()
