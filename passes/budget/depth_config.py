"""depth_to_budget's configuration (the pass: passes/depth_to_budget.py): the budget, its search, and how the
chosen blocks are linearised. Torch-free: `prunefx depth` makes its flags of these fields without importing the
pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from prunefx.passes.core.config_checks import ConfigError
from prunefx.passes.core.pass_config import PassConfig, option


@dataclass
class DepthToBudgetConfig(PassConfig):
    owner: ClassVar[str] = "depth_to_budget"

    speedup: float | None = option(low=1.0, low_open=True, help="measured speed-up over the dense model to reach")
    latency_ms: float | None = option(low=0.0, low_open=True, help="measured latency to stay under, in ms")
    confirm: bool = option(True, help="measure a candidate again, longer, before accepting it")
    tolerance: float | None = option(0.15, low=0.0, help="refuse when the fewest blocks that meet the budget run "
                                                          "more than this fraction faster than it (none: accept)")
    latency: Callable | None = option(source="latency", help="(dense, candidate) -> (dense ms, candidate ms, spread)")
    calibration: Any = option(source="calibration", help="input batches to rank blocks and estimate statistics")
    rank: str = option("damage", help="order of the candidate blocks", choices=("damage", "damage_per_mac"))
    layer_norms: str = option("batch_norm", help="layer norms inside chosen blocks become batch norms, or stay",
                              choices=("batch_norm", "keep"))
    recalibrate: bool = option(False, help="re-estimate the batch norms inside the chosen blocks")
    max_kernel_growth: float = option(1.0, low=1.0, help="largest growth of a kernel side a merge may cause (>= 1)")
    route: str = option("auto", help="merge linearised blocks, drop whole residual branches, or auto: merge "
                                     "when any block merges, else drop", choices=("auto", "merge", "drop"))
    ranking: list[str] | None = option(help="blocks to choose from, best first (default: ranked here on "
                                            "calibration); a caller searching several budgets ranks once", cli=False)
    progress: bool | None = option(help="a progress bar (default: on a terminal)", cli=False)

    def check(self) -> None:
        if (self.speedup is None) == (self.latency_ms is None):
            raise ConfigError(f"{self.owner} needs exactly one budget: speedup or latency_ms")
