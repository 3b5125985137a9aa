"""Thin helpers over torch.distributed so the training loop reads the same with one process or N.

Launched by `torchrun`, WORLD_SIZE > 1 turns them on: gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch import nn


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")


def setup(device: str = "auto") -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not td.is_initialized():
        # a long timeout: rank 0 may spend a while extracting features while the others wait
        td.init_process_group("nccl" if use_cuda else "gloo", timeout=dt.timedelta(hours=3))
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    return DistContext(td.get_rank(), td.get_world_size(), local_rank, dev)


def teardown(ctx: DistContext) -> None:
    if ctx.world > 1 and td.is_initialized():
        td.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.world > 1:
        td.barrier()


def wrap(module: nn.Module, ctx: DistContext) -> nn.Module:
    if ctx.world <= 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def sum_tensor(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.world > 1:
        t = t.clone()
        td.all_reduce(t)
    return t


def mean(t: torch.Tensor, ctx: DistContext) -> float:
    """The mean of a scalar over ranks."""
    return float(sum_tensor(t.float().reshape(1), ctx)) / ctx.world


def any_true(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when any rank says True (a stop request reaches all of them)."""
    if ctx.world <= 1:
        return flag
    return bool(sum_tensor(torch.tensor([float(flag)], device=ctx.device), ctx) > 0)


def gather_dict(part: dict, ctx: DistContext) -> dict:
    """Merge each rank's dict into one, on every rank."""
    if ctx.world <= 1:
        return part
    parts: list = [None] * ctx.world
    td.all_gather_object(parts, part)
    return {k: v for p in parts for k, v in p.items()}


def broadcast(obj, ctx: DistContext):
    """Rank 0's `obj`, on every rank."""
    if ctx.world <= 1:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]
