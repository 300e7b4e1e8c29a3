"""linearize_blocks' configuration (the pass: passes/linearize_blocks.py): which blocks, how they are ranked
and linearised, and the checks a config passes before the pass runs. Torch-free: `prunefx depth` makes its
flags of these fields without importing the pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from prunefx.graph.errors import PrunefxError
from prunefx.passes.core.pass_config import PassConfig, option

# How candidate blocks are ordered: by the damage their linearisation does, or by that damage per MAC
# the merge saves (cheap-to-lose blocks that buy little speed go last).
RANKINGS = {"damage": lambda damage, saved: damage, "damage_per_mac": lambda damage, saved: damage / saved}


class LinearizeError(PrunefxError):
    """Bad linearize_blocks configuration (unknown block, no data to score blocks, ...)."""


@dataclass
class LinearizeBlocksConfig(PassConfig):
    owner: ClassVar[str] = "linearize_blocks"

    blocks: list[str] | None = option(help="the blocks to linearise, by name", cli=False)
    count: int | None = option(low=1, help="how many blocks to linearise, the least damaging first")
    speedup: float | None = option(low=1.0, low_open=True, help="linearise the fewest blocks whose merge reaches this measured speed-up")
    measure: Callable | None = option(source="measure", help="(before, after) -> measured speed-up")
    rank: str = option("damage", help="order of the candidate blocks", choices=tuple(RANKINGS))
    mode: str = option("progressive", help="progressive: blend activations out while training; abrupt: at once",
                       choices=("progressive", "abrupt"))
    ramp: float = option(0.5, low=0.0, high=1.0, low_open=True, help="fraction of the training steps over which blends go from 0 to 1")
    layer_norms: str = option("batch_norm", help="layer norms inside chosen blocks become batch norms, or stay",
                              choices=("batch_norm", "keep"))
    recalibrate: bool = option(False, help="re-estimate the batch norms inside the chosen blocks (one-shot use)")
    max_kernel_growth: float = option(1.0, low=1.0, help="the kernel growth merge_blocks will allow, with which "
                                      "blocks are counted as merging", cli=False)
    calibration: Any = option(source="calibration", help="input batches to score blocks and estimate statistics")
    max_batches: int | None = option(low=1, help="read at most this many calibration batches")
    progress: bool | None = option(help="a progress bar (default: on a terminal)", cli=False)

    def check(self) -> None:
        if sum(getattr(self, key) is not None for key in ("blocks", "count", "speedup")) != 1:
            raise LinearizeError("linearize_blocks needs exactly one of 'blocks' (names), 'count' (how many) or "
                                 "'speedup' (a measured target)")

    def reads(self, key: str) -> bool:
        if key == "measure":
            return self.speedup is not None
        return self.blocks is None or self.recalibrate  # blocks chosen by damage, or statistics re-estimated
