"""choose_for_budget: meet a measured budget with the least damaging mix of width, depth and INT8.

A budget ("2x faster", "under 4 ms") can be met by pruning channels (width), by linearising and merging
blocks (depth), by INT8 where the backend runs it faster, or by a mix; which costs least accuracy depends
on the model and the runtime, and MACs do not tell. This pass tries every combination of the allowed
dimensions, finds for each the cheapest setting that meets the budget, measured as a whole model against
the dense one, scores its one-shot damage, and keeps the least damaged:

    for each non-empty combination C of `dimensions` (width, depth, int8):
        finish(p)   = quantize_int8(p) if int8 in C else p          (calibrated on `calibration`)
        measure(p)  = latency(dense, finish(p))                     (the dense model always FP32, as given)
        depth share = sqrt(S / g) if width is in C as well, else S  (g: INT8's measured gain on the dense
                      model when int8 is in C, else 1; S the budget as a speed-up)
        base        = merge_blocks(depth_to_budget(dense, depth share, measure))    if depth in C
        model       = prune_to_budget(base, S, measure)                             if width in C
        candidate   = finish(model)                 (int8 alone: finish(dense), measured once)
        (before INT8 and the proxy, a pruned or merged model's batch norms are re-estimated on the
         calibration batches: `recalibrate`, on by default; latency does not depend on them)
        proxy       = mean KL(softmax(dense(x)) || softmax(candidate(x))) over the calibration batches,
                      along dim 1 (classes, per pixel for dense outputs)
    chosen = the candidate with the smallest proxy among those that met the budget

Splitting the budget between depth and width as sqrt(S / g) gives each continuous dimension an equal
share in log-speed-up; the width search then measures the whole stack (depth merged, INT8 applied), so
the candidate meets S whatever the share did. Every measurement goes through the same `latency`
function, so its cache (runtime/speedup.py: ONNX files by fingerprint) exports the dense model once and
confirmation (passes/budget_search.py) applies to every search. A combination that cannot reach the
budget is kept in the trace with the reason, not an error; when none can, the error names the best
speed-up any reached.

The Program returned is the chosen candidate: pruned, merged and (when INT8 was chosen) holding fake
quantizers, so a following `distill` recovers it (quantization-aware for INT8). Config: `speedup` or
`latency_ms` (one), `dimensions`, `tolerance`, `max_candidates`, `confirm`, `latency` and `calibration`
(injected), and the options of each dimension's own pass as mappings: `width` (remove_channels options:
importance, round_to, compensate...), `depth` (depth_to_budget's rank, layer_norms, recalibrate,
max_kernel_growth), `int8` (quantize_int8's method, percentile, sensitive...); with INT8 in a combination
the width search keeps widths on multiples of `int8_round_to` too (16: ONNX Runtime's x86 INT8 kernels lose
their gain on pruned widths that are multiples of 8 only, benchmarks/results/int8_after_pruning.md). Stats: `budget`, `budget_ms` (the budget as a latency), `chosen`
(its dimensions), `speedup`, `ms`, `proxy` and `candidates`, one row per combination: dimensions, met,
measured speed-up and latency, MACs kept, proxy, each dimension's setting (MACs fraction, blocks, INT8
layers) and, for those that failed, why. `budget_candidates` returns the candidates themselves, for
benchmarks that recover each and compare.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree

from prunefx.graph import Program, count
from prunefx.graph.activations import calibration_inputs
from prunefx.graph.errors import PrunefxError
from prunefx.passes.budget_search import Measured, budget_text, meets, require_latency
from prunefx.passes.config_checks import ConfigError
from prunefx.passes.contract import graph_pass
from prunefx.passes.depth_to_budget import DepthToBudgetConfig, depth_to_budget, no_block_message
from prunefx.passes.linearize_blocks import ranked_blocks
from prunefx.passes.measurement import Timing, as_measurer, round_to_of
from prunefx.passes.merge_blocks import merge_blocks
from prunefx.passes.pass_config import PassConfig, option
from prunefx.passes.pipeline import PipelineError, run_inner
from prunefx.passes.prune_to_budget import PruneToBudgetConfig, prune_to_budget
from prunefx.passes.quantize_int8 import QuantizeInt8Config, quantize_int8
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import RemoveChannelsConfig
from prunefx.passes.result import Result

log = logging.getLogger(__name__)
DIMENSIONS = ("width", "depth", "int8")
# options the budget pass owns: a dimension's own mapping may not set them
OWNED = {"speedup", "latency_ms", "tolerance", "max_candidates", "confirm", "latency", "calibration"}
OWNED_BY_DIMENSION = {"width": OWNED, "depth": OWNED | {"ranking"}, "int8": OWNED}  # depth: ranked once, here
SMALLEST_SHARE = 1.05  # a depth share below this is no share: the combination is the one without depth


@dataclass
class ChooseForBudgetConfig(PassConfig):
    owner: ClassVar[str] = "choose_for_budget"

    speedup: float | None = option(low=1.0, low_open=True, help="measured speed-up over the dense model to reach")
    latency_ms: float | None = option(low=0.0, low_open=True, help="measured latency to stay under, in ms")
    dimensions: list[str] = option(list(DIMENSIONS), help="what may be combined: width, depth, int8",
                                   describe="a list of width, depth, int8")
    tolerance: float = option(0.15, low=0.0, help="accept a width candidate up to this fraction faster than the budget")
    max_candidates: int = option(8, low=1, help="most width candidates measured per combination")
    confirm: bool = option(True, help="measure a candidate again, longer, before accepting it")
    width: dict = option({}, help="remove_channels options for the width search (importance, round_to, ...)",
                         cli=False)
    depth: dict = option({}, help="depth_to_budget options (rank, layer_norms, recalibrate, max_kernel_growth)",
                         cli=False)
    int8: dict = option({}, help="quantize_int8 options (method, percentile, sensitive, ...)", cli=False)
    int8_round_to: int = option(16, low=1, help="with INT8 in the combination, pruned widths are also multiples of "
                                                 "this: ONNX Runtime's x86 INT8 kernels lose their gain on widths "
                                                 "that are multiples of 8 only (benchmarks/results/int8_after_pruning.md)")
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
        for name, config_class in (("width", PruneToBudgetConfig), ("depth", DepthToBudgetConfig),
                                   ("int8", QuantizeInt8Config)):
            options = getattr(self, name)
            owned = sorted(OWNED_BY_DIMENSION[name] & set(options))
            if owned:
                raise ConfigError(f"{self.owner}: '{owned[0]}' is set on the budget pass, not in '{name}'")
            try:  # the dimension's own pass checks its options now, before any measurement
                config_class.parse({**options, **_budget_placeholder(config_class)})
            except ConfigError as error:
                raise ConfigError(f"{self.owner}: '{name}': {error}") from None


def _budget_placeholder(config_class) -> dict:
    return {"speedup": 2.0} if config_class is not QuantizeInt8Config else {}


@dataclass
class Candidate:
    """One combination's answer: the finished Program (or why there is none) and what it cost."""

    dimensions: tuple[str, ...]
    program: Program | None = None
    measured: Measured | None = None
    macs_kept: float | None = None
    proxy: float | None = None
    settings: dict = field(default_factory=dict)
    failed: str | None = None

    @property
    def met(self) -> bool:
        return self.program is not None

    def to_dict(self) -> dict:
        row = {"dimensions": list(self.dimensions), "met": self.met, "macs_kept": self.macs_kept,
               "proxy": self.proxy, **self.settings}
        if self.measured is not None:
            row.update(self.measured.to_dict())
        if self.failed:
            row["failed"] = self.failed
        return row


# every candidate is cut from a copy of the dense Program
@graph_pass(config=ChooseForBudgetConfig, in_place=False, writes=("channel_pruning", "linearize"))
def choose_for_budget(program: Program, /, *, config: dict | None = None) -> Result:
    settings = ChooseForBudgetConfig.parse(config)
    candidates = budget_candidates(program, settings)
    chosen = min((candidate for candidate in candidates if candidate.met), key=_proxy)
    measured, macs_kept = chosen.measured, chosen.macs_kept
    if measured is None or macs_kept is None:  # _fill sets both on every candidate that met
        raise TypeError(f"choose_for_budget: the chosen candidate {chosen.dimensions} was not measured")
    stats = {"budget": budget_text(settings.speedup, settings.latency_ms), "met": True,
             "chosen": list(chosen.dimensions), "speedup": measured.speedup, "ms": measured.ms,
             "dense_ms": measured.dense_ms,
             "budget_ms": settings.latency_ms or measured.dense_ms / _wanted_speedup(settings), "proxy": chosen.proxy,
             "macs_kept": macs_kept,
             "candidates": [candidate.to_dict() for candidate in candidates]}
    # a budget above 1x is met by fewer MACs or by INT8 layers: say which happened, do not assume it
    modified = macs_kept < 1.0 or bool(chosen.settings.get("int8_layers"))
    return Result(chosen.program, modified=modified, stats=stats)


def _proxy(candidate: Candidate) -> float:
    return candidate.proxy if candidate.proxy is not None else math.inf


def _wanted_speedup(settings: ChooseForBudgetConfig) -> float:
    if settings.speedup is None:  # parse() demands exactly one budget: latency_ms is the one
        raise TypeError("choose_for_budget: a speed-up budget was expected")
    return settings.speedup


def budget_candidates(program: Program, config: ChooseForBudgetConfig | dict) -> list[Candidate]:
    """Every combination of the allowed dimensions, each with its cheapest setting that meets the budget
    (or the reason it cannot), scored by the damage proxy; the input Program is left as it was."""
    settings = config if isinstance(config, ChooseForBudgetConfig) else ChooseForBudgetConfig.parse(config)
    require_latency("choose_for_budget", settings.latency)
    if settings.calibration is None:
        raise PrunefxError("choose_for_budget needs 'calibration' data: INT8 ranges, block ranking and the "
                           "damage proxy are read on it")
    dense = program.clone().eval()
    batches = calibration_inputs(dense.example_inputs, settings.calibration, what="choose_for_budget")
    search = _Search(dense, settings, batches)
    candidates = [search.candidate(combination) for combination in combinations(settings.dimensions)]
    if not any(candidate.met for candidate in candidates):
        raise PrunefxError(_unreachable(settings, search.best))
    return candidates


def combinations(dimensions) -> list[tuple[str, ...]]:
    """Non-empty subsets in DIMENSIONS order, single dimensions first."""
    ordered = [name for name in DIMENSIONS if name in dimensions]
    return [subset for size in range(1, len(ordered) + 1) for subset in itertools.combinations(ordered, size)]


class _Search:
    def __init__(self, dense: Program, settings: ChooseForBudgetConfig, batches: list):
        self.dense, self.settings, self.batches = dense, settings, batches
        self.dense_macs = count(dense).macs
        self.reference = _outputs(dense, batches[:settings.proxy_batches])
        self.int8_gain: float | None = None
        self.best: tuple[float, tuple[str, ...]] | None = None  # the fastest measured, for the error
        self.ranking: list[str] | None = None  # blocks worth linearising, best first: ranked once for all

    def _ranking(self) -> list[str]:
        if self.ranking is None:
            options = self.settings.depth
            ranked, _ = ranked_blocks(self.dense, self.batches, rank=options.get("rank", "damage"),
                                      progress=self.settings.progress)
            self.ranking = [block.name for block in ranked]
        if not self.ranking:
            raise PrunefxError(no_block_message(self.dense, self.settings.speedup, self.settings.latency_ms))
        return self.ranking

    def _measuring(self, dimensions, finish) -> _Finished:
        def seen(speedup: float) -> None:
            if self.best is None or speedup > self.best[0]:
                self.best = (speedup, dimensions)
        return _Finished(self.settings.latency, self.dense, finish, seen)

    def candidate(self, dimensions: tuple[str, ...]) -> Candidate:
        candidate = Candidate(dimensions)
        try:
            self._fill(candidate)
        except PipelineError:  # an inner pass broke its contract: a bug to report, not a budget missed
            raise
        except PrunefxError as error:  # this combination cannot meet the budget: say why, try the others
            candidate.program, candidate.failed = None, str(error)
        log.info("choose_for_budget: %s %s", " + ".join(candidate.dimensions),
                 f"met, damage proxy {candidate.proxy:.4g}" if candidate.met else f"not met: {candidate.failed}")
        return candidate

    def _fill(self, candidate: Candidate) -> None:
        dimensions = candidate.dimensions
        quantized = "int8" in dimensions
        latency = self._measuring(dimensions, self._quantize if quantized else None)
        model = self.dense
        if "depth" in dimensions:
            share = self._depth_share(dimensions)
            model = self._merged_depth(model, share, latency, candidate)
        if "width" in dimensions:
            model = self._pruned(model, latency, candidate)
        if model is not self.dense and self.settings.recalibrate:
            # the statistics a structural change left behind would make the damage look worse than it is,
            # and INT8 ranges calibrated on them wrong; the latency measured does not depend on them
            model = run_inner(recalibrate_batchnorm, model, {"data": self.batches}).program
        finished = self._quantize(model, candidate) if quantized else model
        if candidate.measured is None:  # INT8 alone, or depth alone: its own search measured it already
            candidate.measured = self._confirmed(finished, dimensions)
        if not meets(candidate.measured, speedup=self.settings.speedup, latency_ms=self.settings.latency_ms):
            raise PrunefxError(f"reached {candidate.measured.speedup:.2f}x ({candidate.measured.ms:.2f} ms)")
        candidate.program = finished
        candidate.macs_kept = count(finished).macs / self.dense_macs
        candidate.proxy = kl_damage(self.reference, _outputs(finished, self.batches[:self.settings.proxy_batches]))

    @property
    def _latency(self) -> Callable:
        if self.settings.latency is None:  # budget_candidates refused that already (require_latency)
            raise PrunefxError("choose_for_budget needs 'latency', the measuring function")
        return self.settings.latency

    def _wanted(self) -> float:
        """The budget as a speed-up over the dense model (a latency budget through the dense model's time)."""
        if self.settings.speedup is not None:
            return self.settings.speedup
        dense_ms, _, _ = self._latency(self.dense, self.dense)
        return dense_ms / self.settings.latency_ms

    def _depth_share(self, dimensions) -> float | None:
        """The speed-up depth is searched for: the whole budget alone, sqrt(S / g) beside width."""
        if "width" not in dimensions:
            return None
        gain = self._int8_gain() if "int8" in dimensions else 1.0
        share = math.sqrt(self._wanted() / gain)
        if share < SMALLEST_SHARE:
            raise PrunefxError(f"INT8 alone gives {gain:.2f}x: no share of the budget is left for depth")
        return share

    def _int8_gain(self) -> float:
        if self.int8_gain is None:
            dense_ms, ms, _ = self._latency(self.dense, self._quantize(self.dense))
            self.int8_gain = dense_ms / ms
        return self.int8_gain

    def _merged_depth(self, model: Program, share: float | None, latency, candidate: Candidate) -> Program:
        budget = ({"speedup": share} if share is not None else
                  {"speedup": self.settings.speedup, "latency_ms": self.settings.latency_ms})
        result = run_inner(depth_to_budget, model, {
            **self.settings.depth, **budget, "ranking": self._ranking(), "latency": latency if share is None else self._measuring(candidate.dimensions, None),
            "confirm": self.settings.confirm, "calibration": self.batches, "progress": self.settings.progress})
        candidate.settings["blocks"] = result.stats["blocks"]
        if share is None:
            candidate.measured = Measured.from_dict(result.stats["chosen"])
        growth = self.settings.depth.get("max_kernel_growth", 1.0)
        return run_inner(merge_blocks, result.program, {"max_kernel_growth": growth}).program

    def _pruned(self, model: Program, latency, candidate: Candidate) -> Program:
        width = dict(self.settings.width)
        if "int8" in candidate.dimensions:  # widths the INT8 kernels run well (int8_round_to's help says why)
            asked = width.get("round_to") or round_to_of(latency) or RemoveChannelsConfig.parse({"macs": 0.5}).round_to
            width["round_to"] = math.lcm(int(asked), self.settings.int8_round_to)
        result = run_inner(prune_to_budget, model, {
            **width, "speedup": self.settings.speedup, "latency_ms": self.settings.latency_ms,
            "tolerance": self.settings.tolerance, "max_candidates": self.settings.max_candidates,
            "confirm": self.settings.confirm, "latency": latency, "calibration": self.batches})
        candidate.settings["macs_fraction"] = result.stats["macs_fraction"]
        candidate.settings["round_to"] = result.stats["round_to"]
        candidate.settings["width_trace"] = result.stats["trace"]  # every width measured: why the search ended where it did
        candidate.measured = Measured.from_dict(result.stats["chosen"])
        return result.program

    def _quantize(self, model: Program, candidate: Candidate | None = None) -> Program:
        result = run_inner(quantize_int8, model, {**self.settings.int8, "calibration": self.batches}, on_copy=True)
        if candidate is not None:
            candidate.settings["int8_layers"] = len(result.stats["quantized"])
        return result.program

    def _confirmed(self, program: Program, dimensions) -> Measured:
        latency = self._measuring(dimensions, None)
        measured = Measured(*latency(self.dense, program))
        if self.settings.confirm:
            measured.confirm(latency, self.dense, program)
        return measured


class _Finished:
    """The measuring function a dimension's search gets: its candidate finished (INT8 applied when the
    combination includes it) and timed against the dense model as given, whatever model the search
    started from (after depth, width searches from the merged network)."""

    def __init__(self, latency, dense: Program, finish: Callable[[Program], Program] | None,
                 seen: Callable[[float], None]):
        self.latency, self.dense, self.finish, self.seen = as_measurer(latency), dense, finish, seen
        self.round_to = round_to_of(latency)  # a Measurer (passes/measurement.py): the backend's multiple

    def __call__(self, _start: Program, candidate: Program):
        return self._seen(self.latency(self.dense, self._finished(candidate)))

    def confirm(self, _start: Program, candidate: Program) -> Timing:
        return self._seen(Timing.of(self.latency.confirm(self.dense, self._finished(candidate))))

    def _seen(self, figures):
        dense_ms, ms, _ = figures
        self.seen(dense_ms / ms)
        return figures

    def _finished(self, candidate: Program) -> Program:
        return self.finish(candidate) if self.finish is not None else candidate


def _outputs(program: Program, batches: list) -> list[torch.Tensor]:
    """Every floating output of at least two dims (batch, classes, ...), batch after batch."""
    with torch.no_grad(), program.evaluating():
        return [t for batch in batches for t in pytree.tree_leaves(program.module(*batch))
                if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.is_floating_point()]


def kl_damage(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """Mean KL(softmax(reference) || softmax(output)) along dim 1 (classes; per pixel for dense outputs):
    how far a candidate's predictions moved from the dense model's, before any recovery."""
    total, items = 0.0, 0
    for expected, got in zip(reference, outputs, strict=True):
        kl = F.kl_div(F.log_softmax(got.double(), dim=1), F.log_softmax(expected.double(), dim=1),
                      log_target=True, reduction="none").sum(dim=1)
        total, items = total + float(kl.sum()), items + kl.numel()
    return total / max(items, 1)


def _unreachable(settings: ChooseForBudgetConfig, best: tuple[float, tuple[str, ...]] | None) -> str:
    said = f": the best measured was {best[0]:.2f}x ({' + '.join(best[1])})" if best else ""
    return (f"cannot reach {budget_text(settings.speedup, settings.latency_ms)} with any mix of "
            f"{', '.join(settings.dimensions)}{said}")
