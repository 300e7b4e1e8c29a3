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
                      model when int8 is in C, else 1; S the budget as a speed-up; `depth_share` x S / g
                      instead when set: meet_budget's mirror of a whole-block overshoot, prunefx/budget/)
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
the candidate meets S whatever the share did (its first guess starts from the speed-up depth measured).
Every measurement goes through the same `latency` function, so its cache (runtime/measure/speedup.py: ONNX files
by fingerprint) exports the dense model once and confirmation (passes/budget/search.py) applies to every search. A combination that cannot reach the
budget is kept in the trace with the reason, not an error; when none can, the error names the best
speed-up any reached.

The Program returned is the chosen candidate: pruned, merged and (when INT8 was chosen) holding fake
quantizers, so a following `distill` recovers it (quantization-aware for INT8). Config: `speedup` or
`latency_ms` (one), `dimensions`, `combinations` (only these mixes; default every non-empty subset),
`depth_share`, `tolerance`, `max_candidates`, `confirm`, `latency` and `calibration`
(injected), and the options of each dimension's own pass as mappings: `width` (remove_channels options:
importance, round_to, compensate...), `depth` (depth_to_budget's rank, layer_norms, recalibrate,
max_kernel_growth), `int8` (quantize_int8's method, percentile, sensitive...); with INT8 in a combination
the width search keeps widths on multiples of `int8_round_to` too (16: ONNX Runtime's x86 INT8 kernels lose
their gain on pruned widths that are multiples of 8 only). Stats: `budget`, `budget_ms` (the budget as a latency), `chosen`
(its dimensions), `speedup`, `ms`, `proxy` and `candidates`, one row per combination: dimensions, met,
measured speed-up and latency, MACs kept, proxy, each dimension's setting (MACs fraction, blocks, INT8
layers) and, for those that failed, why. Facts: BudgetChosen, the chosen candidate typed. `budget_candidates`
returns the candidates themselves, for benchmarks that recover each and compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prunefx.graph import Program
from prunefx.passes.budget.candidates import Candidate, budget_candidates
from prunefx.passes.budget.choose_config import ChooseForBudgetConfig
from prunefx.passes.budget.search import Measured, budget_text
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result

__all__ = ["BudgetChosen", "ChooseForBudgetConfig", "budget_candidates", "choose_for_budget"]


# every candidate is cut from a copy of the dense Program
@shipped_pass
@graph_pass(config=ChooseForBudgetConfig, in_place=False, writes=("linearize",))
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
    modified = macs_kept < 1.0 or bool(chosen.int8_layers)
    return Result(chosen.program, modified=modified, stats=stats, facts=BudgetChosen(stats["budget"], chosen, measured))


@dataclass(frozen=True)
class BudgetChosen:
    """What choose_for_budget hands to its caller (prunefx.meet_budget's width+depth route): the budget in
    words, the chosen candidate (each dimension's setting) and its measurement."""

    budget: str
    chosen: Candidate
    measured: Measured


def _proxy(candidate: Candidate) -> float:
    return candidate.proxy if candidate.proxy is not None else math.inf


def _wanted_speedup(settings: ChooseForBudgetConfig) -> float:
    if settings.speedup is None:  # parse() demands exactly one budget: latency_ms is the one
        raise TypeError("choose_for_budget: a speed-up budget was expected")
    return settings.speedup
