"""Data parallelism through torch.distributed: one process per device, launched by torchrun (env:// rendezvous)
or by a caller passing rank, world size and an init address (the CPU tests spawn two gloo processes).

Every rank builds the same global batch and trains on its slice; DistributedDataParallel averages gradients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """rank, world_size and local_rank of this process; `owns_group` when it created the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None, *, rank: int | None = None, world_size: int | None = None,
                     init_method: str | None = None) -> DistContext:
    """Joins (or creates) the default process group.

    Without arguments it reads torchrun's RANK, WORLD_SIZE and LOCAL_RANK; a single process (no WORLD_SIZE, or 1)
    gets a context without a group. backend defaults to nccl with CUDA and gloo without.
    """
    if rank is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        init_method = init_method or "env://"
    else:
        local_rank = rank
    if world_size is None or world_size <= 1:
        return DistContext()
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=False)
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, owns_group=True)


def close_distributed(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The sum of `t` over ranks (a copy; `t` itself when there is one process)."""
    if not ctx.enabled:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_flag(flag: bool, ctx: DistContext, device) -> bool:
    """Rank 0's value of `flag` on every rank (so that all ranks take the same branch)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def wrap_ddp(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """The model in DistributedDataParallel (unchanged for one process). Gradients are averaged over ranks."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # An MoE expert that receives no token in a step leaves its slice without a gradient.
    unused = bool(getattr(model, "moe_layers", lambda: [])())
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)


def rank_slice(n: int, ctx: DistContext) -> slice:
    """The rows of a global batch of n = world_size * per_rank rows that this rank trains on."""
    if n % ctx.world_size != 0:
        raise ValueError(f"batch: {n} rows do not split evenly over {ctx.world_size} ranks")
    per = n // ctx.world_size
    return slice(ctx.rank * per, (ctx.rank + 1) * per)
