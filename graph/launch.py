"""Which process of a `torchrun` launch this is, from the variables torchrun sets (LOCAL_RANK, WORLD_SIZE): read
before any process group exists, as the device a run takes and whether compress may run are."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    local_rank: int = 0  # on this machine: the GPU the process owns
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_launch() -> Launch:
    """This process's place in a torchrun launch; a single process (the default) when not launched by torchrun."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return Launch()
        return Launch(int(os.environ["LOCAL_RANK"]), world_size)
    except (KeyError, ValueError):  # variables that torchrun would not have set: not launched by it
        return Launch()
