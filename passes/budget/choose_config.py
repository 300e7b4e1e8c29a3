"""The configuration of `choose_for_budget` (passes/choose_for_budget.py): the budget, the dimensions
that may be combined, and each dimension's own pass options, checked by that pass's config class when
the budget pass's config is parsed, before anything is measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from prunefx.passes.core.config_checks import ConfigError
from prunefx.passes.core.pass_config import PassConfig, option
from prunefx.passes.depth_to_budget import DepthToBudgetConfig
from prunefx.passes.prune_to_budget import PruneToBudgetConfig
from prunefx.passes.quantize_int8 import QuantizeInt8Config

DIMENSIONS = ("width", "depth", "int8")
# options the budget pass owns: a dimension's own mapping may not set them
OWNED = {"speedup", "latency_ms", "tolerance", "max_candidates", "confirm", "latency", "calibration"}
# depth: ranked once, here, and its bar is this pass's; width: starts from depth's (and INT8's) measured share
OWNED_BY_DIMENSION = {"width": OWNED | {"start_speedup"}, "depth": OWNED | {"ranking", "progress"}, "int8": OWNED}
SMALLEST_SHARE = 1.05  # a depth share below this is no share: the combination is the one without depth


@dataclass
class ChooseForBudgetConfig(PassConfig):
    owner: ClassVar[str] = "choose_for_budget"

    speedup: float | None = option(low=1.0, low_open=True, help="measured speed-up over the dense model to reach")
    latency_ms: float | None = option(low=0.0, low_open=True, help="measured latency to stay under, in ms")
    dimensions: list[str] = option(list(DIMENSIONS), help="what may be combined: width, depth, int8",
                                   describe="a list of width, depth, int8")
    combinations: list[list[str]] | None = option(
        help="only these mixes, each a list of dimensions (default: every non-empty subset of 'dimensions')",
        describe="a list of lists of width, depth, int8", cli=False)
    depth_share: float | None = option(
        low=0.0, low_open=True, high=1.0,
        help="beside width, depth searches for this fraction of the budget's speed-up (default: its square root, "
             "an even split in log-speed-up); whole-block steps that overshoot the budget leave width little room "
             "under an even split when depth alone comes close", cli=False)
    tolerance: float = option(0.15, low=0.0, help="accept a width candidate up to this fraction faster than the budget")
    max_candidates: int = option(8, low=1, help="most width candidates measured per combination")
    confirm: bool = option(True, help="measure a candidate again, longer, before accepting it")
    width: dict = option({}, help="remove_channels options for the width search (importance, round_to, ...)",
                         cli=False)
    depth: dict = option({}, help="depth_to_budget options (rank, layer_norms, recalibrate, max_kernel_growth)",
                         cli=False)
    int8: dict = option({}, help="quantize_int8 options (method, percentile, sensitive, ...)", cli=False)
    int8_round_to: int = option(16, low=1, help="with INT8 in the combination, pruned widths are also multiples of "
                                                 "this: ONNX Runtime's x86 kernels run pruned widths on multiples "
                                                 "of 16 at least as well as on multiples of 8")
    proxy_batches: int = option(4, low=1, help="calibration batches the KL damage proxy is read on")
    recalibrate: bool = option(True, help="re-estimate the batch norms of a pruned or merged candidate on the "
                                          "calibration batches before it is quantized and scored")
    latency: Callable | None = option(source="latency", help="(dense, candidate) -> (dense ms, candidate ms, spread)")
    calibration: Any = option(source="calibration", help="input batches for ranking, INT8 ranges and the proxy")
    progress: bool | None = option(help="progress bars (default: on a terminal)", cli=False)

    def check(self) -> None:
        if (self.speedup is None) == (self.latency_ms is None):
            raise ConfigError(f"{self.owner} needs exactly one budget: speedup or latency_ms")
        unknown = [name for name in self.dimensions if name not in DIMENSIONS]
        if unknown or not self.dimensions:
            raise ConfigError(f"{self.owner}: 'dimensions' must list some of {', '.join(DIMENSIONS)}, "
                              f"not {list(self.dimensions)!r}")
        for mix in self.combinations or []:
            if not mix or any(name not in self.dimensions for name in mix):
                raise ConfigError(f"{self.owner}: each of 'combinations' must list some of the dimensions "
                                  f"{list(self.dimensions)!r}, not {mix!r}")
        for name, config_class in (("width", PruneToBudgetConfig), ("depth", DepthToBudgetConfig),
                                   ("int8", QuantizeInt8Config)):
            options = getattr(self, name)
            owned = sorted(OWNED_BY_DIMENSION[name] & set(options))
            if owned:
                raise ConfigError(f"{self.owner}: '{owned[0]}' is set on the budget pass, not in '{name}'")
            try:  # the dimension's own pass checks its options now, before any measurement
                config_class.parse({**options, **self._budget_of(config_class)})
            except ConfigError as error:  # named by where the user wrote it, not by the pass that checks it
                reason = str(error).removeprefix(f"{config_class.owner}: ")
                raise ConfigError(f"{self.owner}: '{name}': {reason}") from None

    def _budget_of(self, config_class) -> dict:
        """The budget a dimension's own config is checked with: this pass's own (the width search runs with
        exactly it; a depth share is a speed-up above 1.05x, valid wherever the budget is), none for INT8."""
        if config_class is QuantizeInt8Config:
            return {}
        return {"speedup": self.speedup, "latency_ms": self.latency_ms}
