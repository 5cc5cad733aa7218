"""The worker's place in the gang, from torchrun-style environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}: not an integer: {raw!r}") from None


def world_from_env(env: Mapping[str, str]) -> World:
    """WORLD_SIZE, RANK and LOCAL_RANK (1, 0, 0 when unset); ValueError naming a bad one."""
    world = World(
        size=_int_env(env, "WORLD_SIZE", 1),
        rank=_int_env(env, "RANK", 0),
        local_rank=_int_env(env, "LOCAL_RANK", 0),
    )
    if world.size < 1:
        raise ValueError(f"WORLD_SIZE: must be at least 1, got {world.size}")
    if not 0 <= world.rank < world.size:
        raise ValueError(f"RANK: must be in 0..{world.size - 1}, got {world.rank}")
    if world.distributed:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not env.get(name):
                raise ValueError(f"{name}: required when WORLD_SIZE > 1")
    return world


def pick_device(world: World, wanted: str = "") -> torch.device:
    """The worker's GPU (by LOCAL_RANK) when CUDA is available, else the CPU.

    `wanted` ("cpu" or "cuda", from KAON_DEVICE) overrides the choice; "" picks automatically.
    """
    if wanted not in ("", "cpu", "cuda"):
        raise ValueError(f"KAON_DEVICE: expected cpu or cuda, got {wanted!r}")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ValueError("KAON_DEVICE: cuda asked for, but no CUDA device is visible")
    if wanted != "cpu" and torch.cuda.is_available():
        index = world.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def make_deterministic() -> None:
    """Ask for deterministic kernels (cuDNN, cuBLAS), so seeded GPU runs repeat exactly."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def init(world: World, device: torch.device) -> None:
    """Join the process group (env:// rendezvous): nccl on GPUs, gloo on CPUs."""
    if world.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            init_method="env://",
            world_size=world.size,
            rank=world.rank,
            device_id=device if device.type == "cuda" else None,
        )


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
