"""remove_channels' configuration (the pass: passes/remove_channels.py): its options with their bounds, choices
and help, and the checks a config passes before the pass runs. Torch-free: `prunefx prune` makes its flags of
these fields without importing the pass."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from prunefx.graph.channels.choices import CRITERIA, DATA_CRITERIA, RANKINGS, STEPS, TARGET_KINDS
from prunefx.graph.errors import PrunefxError
from prunefx.passes.core import config_checks as checks
from prunefx.passes.core.pass_config import PassConfig, option

FRACTION = "a fraction in (0, 1]"
HEADS = ("whole", "dims")


@dataclass
class RemoveChannelsConfig(PassConfig):
    owner: ClassVar[str] = "remove_channels"

    macs: float | None = option(describe=FRACTION, low=0.0, high=1.0, low_open=True,
                                help="fraction of the MACs to keep, e.g. 0.5")
    params: float | None = option(describe=FRACTION, low=0.0, high=1.0, low_open=True,
                                help="fraction of the parameters to keep")
    channels: float | None = option(describe=FRACTION, low=0.0, high=1.0, low_open=True,
                                help="fraction of the prunable channels to keep")
    layer_time: float | None = option(describe=FRACTION, low=0.0, high=1.0, low_open=True, cli=False,
                                      help="fraction of the latency table's time of the timed layers to keep")
    latency_table: Callable | None = option(cli=False, help="(layer, in_channels, out_channels) -> ms: the "
                                                            "per-layer times that price a layer_time target; with "
                                                            "another target, channels still go by importance lost "
                                                            "per millisecond saved (global ranking)")
    importance: str | Callable | None = option(
        help="channel importance; default: obs (second order) with compensation when calibration data is "
             "given, l2 without", choices=CRITERIA)
    calibration: Any = option(source="calibration", help="input batches for data-driven importance and compensation")
    ranking: str = option("global", help="global: rank channels across groups; local: the same fraction of every "
                                         "group; uniform: local with head counts kept whole (every width the same "
                                         "fraction: what a Hugging Face config holds)", choices=RANKINGS)
    round_to: int = option(8, low=1, help="keep every width a multiple of N (8: FP16 tensor cores; 16 for ONNX Runtime on "
                                   "AVX-512 CPUs)")
    max_ratio: float = option(0.8, low=0.0, high=1.0, high_open=True, help="largest fraction of one group removed")
    heads: str | None = option(help="attention: 'whole' heads go and head dims stay (fused kernels' widths, the dense "
                                    "softmax scale); 'dims' lets head dims go too; default whole, dims with "
                                    "ranking uniform", choices=HEADS)
    min_widths: dict | None = option(help="{'tensor:dim': width}: no group with such a member keeps fewer; "
                                           "'tensor:dim:heads' or ':head_dim' names one factor of a head grid",
                                      cli=False)
    keep: list[str] = option([], help="graph node whose channels must stay (`prunefx inspect MODEL --nodes` lists them)")
    seed: int = option(0, help="seed of the random criterion", cli=False)
    strict: bool = option(True, help="fail when the target cannot be met within 3 %", cli=False)
    compensate: bool | None = option(
        help="update the remaining weights of every layer that loses inputs so that its output on the "
             "calibration data changes least; default: on with the default importance and calibration data")
    damping: float = option(0.01, low=0.0, help="ridge term of compensation and obs, a fraction of the mean Hessian diagonal")
    obs_steps: str = option("fast", choices=STEPS, cli=False,
                            help="obs elimination: fast (the exact steps, stopped where no plan removes more of a "
                                 "group: the same choice) or exact (every group eliminated to its last channel)")
    progress: bool | None = option(help="progress bars of the obs scoring and the compensation (default: on a "
                                        "terminal)", cli=False)

    def check(self) -> None:
        self.check_target()
        if self.heads == "whole" and self.ranking == "uniform":
            raise checks.ConfigError(f"{self.owner}: ranking uniform keeps head counts and narrows every head, so "
                                     "it needs heads='dims' (or leave heads unset)")
        if self.min_widths is not None and not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1
                                                   for w in self.min_widths.values()):
            raise checks.ConfigError(f"{self.owner}: min_widths must map 'tensor:dim' names to widths >= 1")

    def target(self) -> tuple[str, float]:
        """(kind, fraction) of the one target given, refused in one line otherwise."""
        given = [kind for kind in TARGET_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise PrunefxError(f"{self.owner} needs exactly one target among {', '.join(TARGET_KINDS)} "
                               f"(got {', '.join(given) or 'none'})")
        value = getattr(self, given[0])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise checks.ConfigError(f"{self.owner}: target {given[0]} must be a fraction in (0, 1], not {value!r}")
        return given[0], float(value)

    def check_target(self) -> None:
        self.target()
        if self.layer_time is not None and self.latency_table is None:
            raise checks.ConfigError(f"{self.owner}: a layer_time target needs the latency_table that prices it")
        if self.latency_table is not None and self.layer_time is None and self.ranking != "global":
            raise checks.ConfigError(f"{self.owner}: a latency_table ranks channels across groups by importance "
                                     f"per millisecond saved (ranking global); with ranking {self.ranking} and a "
                                     "target other than layer_time it would go unused")

    def reads(self, key: str) -> bool:
        if key != "calibration":
            return True
        return self.importance is None or self.importance in DATA_CRITERIA or bool(self.compensate)

    def resolved(self) -> tuple[str | Callable, bool]:
        """(importance, compensate) after the defaults that depend on the data given: with calibration
        data, second-order selection with compensation (the best one-shot path on our benchmarks);
        without, l2 magnitudes."""
        with_data = self.calibration is not None
        importance = self.importance if self.importance is not None else ("obs" if with_data else "l2")
        compensate = self.compensate if self.compensate is not None else (self.importance is None and with_data)
        return importance, compensate

    def resolved_heads(self) -> str:
        """'whole' or 'dims': the `heads` given, else whole, except under uniform ranking (see `heads`)."""
        return self.heads or ("dims" if self.ranking == "uniform" else "whole")
