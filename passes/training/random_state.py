"""The random state training draws from: seeding it for a run, saving it in a checkpoint and putting it back
on resume, and leaving the caller's as found once a run is over."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def seed_training(seed: int, device: torch.device) -> None:
    """Seed the CPU generator and the training device's. Not `torch.manual_seed`: it also queues a seed for
    every CUDA device, which the caller's process would apply whenever it starts CUDA, after the run."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


@contextlib.contextmanager
def random_state_kept(device: torch.device) -> Iterator[None]:
    """torch's, CUDA's, Python's and numpy's random states after the block as they were before it: a run seeds
    and draws from them, and a caller's own draws then go on where they were, not from the run's seed."""
    if device.type == "cuda":
        torch.cuda.init()  # a seed the caller queued for CUDA is applied now, so it is among what is put back
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def rng_state() -> dict:
    """This process's torch, CUDA, Python and numpy random states, as plain tensors and numbers."""
    numpy_state: tuple[Any, ...] = tuple(np.random.get_state())  # (name, keys, position, has_gauss, gaussian)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # a checkpoint of a machine with more GPUs resumes on fewer (another node, CUDA_VISIBLE_DEVICES): the
        # states of the GPUs there are, by index; set_rng_state_all would index past the last
        for index, device_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, index)
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
