"""Device choice and multi-process (torchrun / DDP) setup for training and inference."""

from __future__ import annotations

import os
import resource

import torch
import torch.distributed as dist
from torch import nn


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> cuda (cuda:LOCAL_RANK under torchrun) if available, else cpu."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


def dist_setup(device_name: str) -> tuple[int, int, torch.device, bool]:
    """Rank, world size and device of this process; starts a process group under torchrun.

    Args:
        device_name: auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK).
    Returns:
        (rank, world_size, device, whether a process group was created here).
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return 0, 1, resolve_device(device_name), False
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    return dist.get_rank(), dist.get_world_size(), device, created


def all_reduce_max(value: float, device: torch.device, world_size: int) -> float:
    """The maximum of `value` over all processes (`value` itself in a single process)."""
    if world_size <= 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def wrap_ddp(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """`model` in DistributedDataParallel (SyncBatchNorm on CUDA) when there are several processes."""
    if world_size <= 1:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def max_mem_mb(device: torch.device) -> float:
    """Peak memory so far in MiB: allocated on a CUDA device, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
