"""torchrun integration: process group set-up from the environment, device choice, cross-rank reductions.

Under ``torchrun --nproc_per_node=N`` (RANK / WORLD_SIZE / LOCAL_RANK set) each process joins a group with
NCCL when it trains on CUDA and gloo on CPU; without those variables everything is a one-process no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .. import validate


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return default if v is None else int(v)


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """"auto" -> CUDA (this rank's GPU) when present, else CPU; "cuda" without a GPU is an error."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    dev = validate.device("device", spec)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
        torch.cuda.set_device(dev)
    return dev


def setup(device_spec: str) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group if the environment asks for one; return (info, device)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_spec, local)
    info = DistInfo(rank, world, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
        info.initialized_here = True
    elif dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), local)
    return info, device


def teardown(info: DistInfo, ok: bool = True) -> None:
    """Leave the process group this process joined.

    After a run that finished normally every rank first waits at a barrier: a rank that tears its gloo pairs
    down while another is still writing plots/checkpoints can abort the other side ("terminate called without
    an active exception", SIGABRT; seen in CI). After an error no barrier (the other ranks may never arrive)."""
    if info.initialized_here and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor; identity without a process group)."""
    if not info.enabled:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order (a one-element list without a process group)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
