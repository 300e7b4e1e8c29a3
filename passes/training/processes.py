"""Where the recovery trainer runs (passes/training/engine.py): its device, and under torchrun the process group
its processes share, with the collectives the trainer needs of it."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from prunefx.graph.launch import torchrun_launch
from prunefx.graph.placement import device_named, module_device
from prunefx.passes.training.config import TrainConfig, TrainingError


def distributed_world(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, False
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing or not dist.is_available():
        raise TrainingError(f"WORLD_SIZE={world_size} but {', '.join(missing) or 'torch.distributed'} is "
                            "missing; launch with torchrun")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def resolve_device(config: TrainConfig, module: torch.nn.Module) -> torch.device:
    """The training device: `config.device` ("auto", "cpu", "cuda", "cuda:N"; graph/placement.device_named
    refuses a GPU torch cannot see), or where the module's tensors are."""
    device = device_named(config.device) if config.device is not None else module_device(module)
    # Under torchrun every process owns one GPU, the one named by LOCAL_RANK, made current for NCCL.
    launch = torchrun_launch()
    if device.type == "cuda" and launch.distributed:
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
    return device


def current_during(device: torch.device) -> contextlib.AbstractContextManager:
    """`device` as CUDA's current device in the block (a model that names "cuda" without an index computes
    there), and the caller's current device back after it."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def leave_process_group() -> None:
    dist.destroy_process_group()


def summed_over_processes(values: torch.Tensor, world_size: int) -> torch.Tensor:
    """`values` summed over every process (in place): this process's alone when it runs by itself."""
    if world_size > 1:
        dist.all_reduce(values)
    return values
