"""merge_blocks' configuration (the pass: passes/merge_blocks.py): how far a merge may grow a kernel, and when
a merge that is timed is kept. Torch-free: `prunefx depth` makes its flags of these fields without importing
the pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from prunefx.passes.core.pass_config import PassConfig, option


@dataclass
class MergeBlocksConfig(PassConfig):
    owner: ClassVar[str] = "merge_blocks"

    max_kernel_growth: float = option(1.0, low=1.0, help="largest growth of a kernel side a merge of layers may cause (>= 1)")
    measure: Callable | None = option(source="measure", help="(before, after) -> measured speed-up; a merge of "
                                                             "layers is kept only when it runs faster")
    min_speedup: float = option(1.0, low=0.0, low_open=True, help="the measured speed-up a merge of layers must reach")
