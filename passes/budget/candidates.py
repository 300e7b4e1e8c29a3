"""The candidates of `choose_for_budget`: for every combination of the allowed dimensions (width, depth,
int8), the cheapest setting that meets the budget, measured as a whole model against the dense one, and
its one-shot damage (passes/budget/damage_proxy.py). The algorithm is in passes/choose_for_budget.py's docstring.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from prunefx.graph import Program, count
from prunefx.graph.activations import calibration_inputs
from prunefx.graph.errors import PrunefxError
from prunefx.passes.budget.choose_config import DIMENSIONS, SMALLEST_SHARE, ChooseForBudgetConfig
from prunefx.passes.budget.damage_proxy import kl_damage, model_outputs
from prunefx.passes.budget.measurement import (
    Ask,
    Steps,
    Timing,
    drive,
    int8_refusal_of,
    round_to_of,
    wanted_speedup,
)
from prunefx.passes.budget.search import Acceptance, BudgetUnreachable, Measured, budget_text, require_latency
from prunefx.passes.core.pipeline import PipelineError, run_inner, verify_inner
from prunefx.passes.depth_to_budget import (
    DepthChosen,
    DepthToBudgetConfig,
    depth_result,
    depth_search,
    no_block_message,
)
from prunefx.passes.linearize_blocks import ranked_blocks
from prunefx.passes.merge_blocks import merge_blocks
from prunefx.passes.prune_to_budget import PruneToBudgetConfig, WidthChosen, chosen_result, width_search
from prunefx.passes.quantize_int8 import Quantized, quantize_int8
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import RemoveChannelsConfig

log = logging.getLogger(__name__)


@dataclass
class Combination:
    """One combination's answer: the finished Program (or why there is none) and what it cost."""

    dimensions: tuple[str, ...]
    program: Program | None = None
    measured: Measured | None = None
    macs_kept: float | None = None
    proxy: float | None = None
    failed: str | None = None
    # each dimension's setting, set by its own search (None where the dimension is not in the combination)
    blocks: list[str] | None = None        # depth: the blocks linearised and merged, or whose branches were dropped
    depth_route: str | None = None         # depth: "merge" or "drop" (no block merges: ConvNeXtV2's GRN)
    macs_fraction: float | None = None     # width: the fraction of MACs asked of remove_channels
    round_to: int | None = None            # width: the multiple the widths were kept on
    width_trace: list[dict] | None = None  # width: every width measured, why the search ended where it did
    int8_layers: int | None = None         # int8: the layers quantized
    depth_speedup: float | None = None     # depth beside width: the merged network's measured speed-up

    @property
    def met(self) -> bool:
        return self.program is not None

    def to_dict(self) -> dict:
        row = {"dimensions": list(self.dimensions), "met": self.met, "macs_kept": self.macs_kept,
               "proxy": self.proxy, **self.settings()}
        if self.measured is not None:
            row.update(self.measured.to_dict())
        if self.failed:
            row["failed"] = self.failed
        return row

    def settings(self) -> dict:
        """Each dimension's setting that its search set, in search order (depth, width, int8)."""
        values = {"blocks": self.blocks, "depth_route": self.depth_route, "depth_speedup": self.depth_speedup, "macs_fraction": self.macs_fraction,
                  "round_to": self.round_to,
                  "width_trace": self.width_trace, "int8_layers": self.int8_layers}
        return {name: value for name, value in values.items() if value is not None}


def budget_candidates(program: Program, config: ChooseForBudgetConfig | dict) -> list[Combination]:
    """Every combination of the allowed dimensions, each with its cheapest setting that meets the budget
    (or the reason it cannot), scored by the damage proxy; the input Program is left as it was. Measured by
    the config's `latency` (candidate_steps asks instead)."""
    settings = config if isinstance(config, ChooseForBudgetConfig) else ChooseForBudgetConfig.parse(config)
    require_latency("choose_for_budget", settings.latency)
    return drive(candidate_steps(program, settings), settings.latency)


def candidate_steps(program: Program, settings: ChooseForBudgetConfig) -> Steps:
    """budget_candidates as a search that asks for each measurement (passes/budget/measurement.py); returns the
    candidates."""
    if settings.calibration is None:
        raise PrunefxError("choose_for_budget needs 'calibration' data: INT8 ranges, block ranking and the "
                           "damage proxy are read on it")
    dense = program.clone().eval()
    batches = calibration_inputs(dense.example_inputs, settings.calibration, what="choose_for_budget")
    search = _Search(dense, settings, batches)
    mixes = ([tuple(name for name in DIMENSIONS if name in mix) for mix in settings.combinations]
             if settings.combinations else combinations(settings.dimensions))
    candidates = []
    for mix in mixes:
        refusal = int8_refusal_of(settings.latency) if "int8" in mix else None
        if refusal:  # timed, it would be measured unlike the dense model (its quantizers as float operators, say)
            candidates.append(Combination(mix, failed=f"not measured: {refusal}"))
            continue
        candidates.append((yield from search.candidate(mix)))
    if not any(candidate.met for candidate in candidates):
        raise BudgetUnreachable(_unreachable(settings, search.best, candidates),
                                dimension=" + ".join(settings.dimensions), best=None)
    return candidates


def combinations(dimensions) -> list[tuple[str, ...]]:
    """Non-empty subsets in DIMENSIONS order, single dimensions first."""
    ordered = [name for name in DIMENSIONS if name in dimensions]
    return [subset for size in range(1, len(ordered) + 1) for subset in itertools.combinations(ordered, size)]


class _Search:
    def __init__(self, dense: Program, settings: ChooseForBudgetConfig, batches: list):
        self.dense, self.settings, self.batches = dense, settings, batches
        self.dense_macs = count(dense).macs
        self.reference = model_outputs(dense, batches[:settings.proxy_batches])
        self.int8_gain: float | None = None
        self.best: tuple[float, tuple[str, ...]] | None = None  # the fastest measured, for the error
        self.ranking: list[str] | None = None  # blocks worth linearising, best first: ranked once for all

    def _depth_order(self) -> dict:
        """depth_to_budget's ranking options: the merge ranking, read once for every combination with depth; none
        where no block merges (ConvNeXtV2's GRN) or the route asked is "drop": depth_to_budget then ranks the
        residual branches it can drop itself (and refuses in one line when there are none either)."""
        route = self.settings.depth.get("route", "auto")
        if route == "drop":
            return {}
        if self.ranking is None:
            ranked, _ = ranked_blocks(self.dense, self.batches, rank=self.settings.depth.get("rank", "damage"),
                                      progress=self.settings.progress,
                                      max_kernel_growth=self.settings.depth.get("max_kernel_growth", 1.0),
                                      layer_norms=self.settings.depth.get("layer_norms", "batch_norm"))
            self.ranking = [block.name for block in ranked]
        if self.ranking:
            return {"ranking": self.ranking, "route": "merge"}  # "merge": depth_to_budget does not rank again
        if route == "merge":
            raise PrunefxError(no_block_message(self.dense, self.settings.speedup, self.settings.latency_ms))
        return {}

    def _finished(self, steps: Steps, dimensions: tuple[str, ...],
                  finish: Callable[[Program], Program] | None = None) -> Steps:
        """A dimension's search, its asks made the combination's: each candidate finished (INT8 applied when the
        combination includes it) and measured against the dense model as given, whatever model the search
        started from (after depth, width searches from the merged network). Confirmed once: a combination is
        judged whole, not measured longer. The fastest answer is kept for the error message."""
        try:
            asked = next(steps)
            while True:
                timing = None
                if asked.how != "confirm_longer":
                    candidate = finish(asked.candidate) if finish is not None else asked.candidate
                    timing = yield Ask(asked.how, self.dense, candidate)
                    self._seen(timing, dimensions)
                asked = steps.send(timing)
        except StopIteration as finished:
            return finished.value

    def _seen(self, timing: Timing | None, dimensions: tuple[str, ...]) -> None:
        if timing is not None and (self.best is None or timing.speedup > self.best[0]):
            self.best = (timing.speedup, dimensions)

    def candidate(self, dimensions: tuple[str, ...]) -> Steps:
        candidate = Combination(dimensions)
        try:
            yield from self._fill(candidate)
        except PipelineError:  # an inner pass broke its contract: a bug to report, not a budget missed
            raise
        except PrunefxError as error:  # this combination cannot meet the budget: say why, try the others
            candidate.program, candidate.failed = None, str(error)
        log.info("choose_for_budget: %s %s", " + ".join(candidate.dimensions),
                 f"met, damage proxy {candidate.proxy:.4g}" if candidate.met else f"not met: {candidate.failed}")
        return candidate

    def _fill(self, candidate: Combination) -> Steps:
        dimensions = candidate.dimensions
        finish = self._quantize if "int8" in dimensions else None
        model = self.dense
        if "depth" in dimensions:
            share = yield from self._depth_share(dimensions)
            model = yield from self._merged_depth(model, share, finish, candidate)
        if "width" in dimensions:
            model = yield from self._pruned(model, finish, candidate)
        if model is not self.dense and self.settings.recalibrate:
            # the statistics a structural change left behind would make the damage look worse than it is,
            # and INT8 ranges calibrated on them wrong; the latency measured does not depend on them
            model = run_inner(recalibrate_batchnorm, model, {"data": self.batches}).program
        finished = self._quantize(model, candidate) if finish is not None else model
        if candidate.measured is None:  # INT8 alone, or depth alone: its own search measured it already
            candidate.measured = yield from self._confirmed(finished, dimensions)
        # the shared rule; the searches above applied it whole, and a combination with no search (INT8 alone)
        # has one setting, the rule's fallback case: its bound must clear S
        if not Acceptance(self.settings.speedup, self.settings.latency_ms).bound_clears(candidate.measured):
            raise PrunefxError(f"reached {candidate.measured.speedup:.2f}x ({candidate.measured.ms:.2f} ms)")
        candidate.program = finished
        candidate.macs_kept = count(finished).macs / self.dense_macs
        candidate.proxy = kl_damage(self.reference, model_outputs(finished, self.batches[:self.settings.proxy_batches]))

    def _depth_share(self, dimensions) -> Steps:
        """The speed-up depth is searched for: the whole budget alone (None); beside width, sqrt(S / g), or
        `depth_share` of S / g when the config sets one."""
        if "width" not in dimensions:
            return None
        gain = (yield from self._int8_gain()) if "int8" in dimensions else 1.0
        left = (yield from wanted_speedup(self.settings.speedup, self.settings.latency_ms, self.dense)) / gain
        share = left * self.settings.depth_share if self.settings.depth_share else math.sqrt(left)
        if share < SMALLEST_SHARE:
            reason = f"INT8 alone gives {gain:.2f}x" if "int8" in dimensions else \
                f"depth's share of the {left:.2f}x left beside width comes to {share:.2f}x"
            raise PrunefxError(f"{reason}: no share of the budget is left for depth")
        return share

    def _int8_gain(self) -> Steps:
        if self.int8_gain is None:
            timing = yield Ask("search", self.dense, self._quantize(self.dense))
            self.int8_gain = timing.speedup
        return self.int8_gain

    def _merged_depth(self, model: Program, share: float | None, finish, candidate: Combination) -> Steps:
        budget = ({"speedup": share} if share is not None else
                  {"speedup": self.settings.speedup, "latency_ms": self.settings.latency_ms})
        settings = DepthToBudgetConfig.parse({
            **self.settings.depth, **budget, **self._depth_order(),
            "confirm": self.settings.confirm, "calibration": self.batches, "progress": self.settings.progress,
            # depth alone answers for the budget's window; a share is topped up by the width search after it
            "tolerance": self.settings.tolerance if share is None else None})
        search = depth_search(model, settings)
        # depth beside width is measured as it is: the width search after it finishes the combination
        chosen = yield from self._finished(search.steps(), candidate.dimensions, finish if share is None else None)
        result = verify_inner("depth_to_budget", depth_result(search, chosen))
        depth = result.facts_as(DepthChosen)
        candidate.blocks, candidate.depth_route = depth.blocks, depth.route
        if share is None:
            candidate.measured = depth.measured
        else:  # the width search starts from there (its first guess removes only the rest)
            candidate.depth_speedup = depth.measured.speedup
        growth = self.settings.depth.get("max_kernel_growth", 1.0)
        return run_inner(merge_blocks, result.program, {"max_kernel_growth": growth}).program

    def _pruned(self, model: Program, finish, candidate: Combination) -> Steps:
        width = dict(self.settings.width)
        for_program = getattr(width.get("latency_table"), "for_program", None)
        if "depth" in candidate.dimensions and for_program is not None:
            # the dense model's table lacks the convolutions depth merged: the same timing of this network's layers
            width["latency_table"] = for_program(model)
        if "int8" in candidate.dimensions:  # widths the INT8 kernels run well (int8_round_to's help says why)
            asked = width.get("round_to") or round_to_of(self.settings.latency) or RemoveChannelsConfig.default("round_to")
            width["round_to"] = math.lcm(int(asked), self.settings.int8_round_to)
        settings = PruneToBudgetConfig.parse({
            **width, "speedup": self.settings.speedup, "latency_ms": self.settings.latency_ms,
            "tolerance": self.settings.tolerance, "max_candidates": self.settings.max_candidates,
            "confirm": self.settings.confirm, "latency": self.settings.latency, "calibration": self.batches,
            "start_speedup": (yield from self._start_speedup(candidate))})
        search = width_search(model, settings)
        chosen = yield from self._finished(search.steps(), candidate.dimensions, finish)
        result = verify_inner("prune_to_budget", chosen_result(search, chosen))
        width = result.facts_as(WidthChosen)
        candidate.macs_fraction, candidate.round_to, candidate.width_trace = width.macs_fraction, width.round_to, width.trace
        candidate.measured = width.measured
        return result.program

    def _start_speedup(self, candidate: Combination) -> Steps:
        """How much faster than the dense model the width search starts: depth's share, times INT8's gain when
        the combination finishes with it (the width search measures its candidates quantized)."""
        if candidate.depth_speedup is None:
            return None
        gain = (yield from self._int8_gain()) if "int8" in candidate.dimensions else 1.0
        return candidate.depth_speedup * gain

    def _quantize(self, model: Program, candidate: Combination | None = None) -> Program:
        result = run_inner(quantize_int8, model, {**self.settings.int8, "calibration": self.batches}, on_copy=True)
        if candidate is not None:
            candidate.int8_layers = result.facts_as(Quantized).layers
        return result.program

    def _confirmed(self, program: Program, dimensions: tuple[str, ...]) -> Steps:
        measured = Measured.of((yield from self._finished(self._reading(program), dimensions)))
        if self.settings.confirm:
            yield from self._finished(measured.confirming(self.dense, program), dimensions)
        return measured

    def _reading(self, program: Program) -> Steps:
        """One search reading of `program` beside the dense model."""
        return (yield Ask("search", self.dense, program))


def _unreachable(settings: ChooseForBudgetConfig, best: tuple[float, tuple[str, ...]] | None,
                 candidates: list[Combination]) -> str:
    """One line: the fastest any combination measured (when one did), then why each combination failed: the
    fastest alone can mislead, as when a mix overshot the window at every step it measured."""
    reasons = "; ".join(f"{' + '.join(c.dimensions)}: {c.failed}" for c in candidates if c.failed)
    fastest = f"the best measured was {best[0]:.2f}x ({' + '.join(best[1])})" if best else ""
    said = "; ".join(part for part in (fastest, reasons) if part)
    return (f"cannot reach {budget_text(settings.speedup, settings.latency_ms)} with any mix of "
            f"{', '.join(settings.dimensions)}: {said}")
