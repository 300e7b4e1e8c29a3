"""meet_budget: a Program made to meet a measured speed-up or latency, by width, by depth, or by both.

    program, outcome = prunefx.meet_budget(program, speedup=2.0, calibration=batches, allow_depth=True)

The routes are tried in order (prunefx/budget/routes.py), each on the same budget, backend and measurer:
width (prune_to_budget); with `allow_depth`, depth (depth_to_budget, then merge_blocks); then width and
depth together (choose_for_budget's mix, depth aiming below S when a whole block overshot, an even split in
log-speed-up when depth fell short). `routes=("depth",)` takes depth alone. The outcome keeps the refusals on
the way; when no route meets the budget, the last route's BudgetUnreachable is raised, one line. The routes
in full: docs/latency-budgets.md, 'Width, then depth'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from prunefx.budget.outcome import ROUTES, BudgetOutcome, MeasuredOn, RouteRefusal
from prunefx.budget.routes import Budget, Reached, has_depth_route
from prunefx.budget.routes import depth as depth_route
from prunefx.budget.routes import joint as joint_route
from prunefx.budget.routes import width as width_route
from prunefx.device import batches_on, current_gpu, on_device, resolve_device
from prunefx.graph import Program
from prunefx.graph.errors import PrunefxError
from prunefx.graph.placement import module_device
from prunefx.graph.program import require_program
from prunefx.layer_latency import latency_table, table_multiple
from prunefx.passes.budget.choose_config import OWNED
from prunefx.passes.budget.search import BudgetUnreachable, budget_text, speedup_text, unreachable_in

if TYPE_CHECKING:
    from prunefx.runtime.measure.pairs import Measurement

_log = logging.getLogger(__name__)  # where a route's progress goes when the caller gives no `log`
CHOICES = ("macs", "latency")  # what steers the width search: the MACs kept, or a measured per-layer table
DEFAULT_RUNS = 30  # timed runs per model and measurement; a candidate that meets is confirmed with 4x these


def meet_budget(program: Program, *, speedup: float | None = None, latency_ms: float | None = None,
                backend: str = "ort", precision: str | None = None, batch: int = 1, threads: int | None = None,
                runs: int = DEFAULT_RUNS, trtexec: str | None = None, measurer=None, calibration=None,
                allow_depth: bool = False, routes: Sequence[str] | None = None, tolerance: float | None = 0.15,
                confirm: bool = True, max_candidates: int = 8, recalibrate: bool | None = None,
                width: Mapping[str, Any] | None = None, depth: Mapping[str, Any] | None = None,
                log: Callable[[str], None] | None = None, choose_by: str | None = None, compile: bool = False,
                latency_cache: str | None = None, device: str | torch.device | None = None,
                measurement=None) -> tuple[Program, BudgetOutcome]:
    """`program` (eval mode, left as it is) made to meet `speedup` (over the dense model) or `latency_ms`, measured at
    batch `batch` on `backend` ("ort", "trt", "torch-trt", "trtexec") at `precision`, with `threads` and `runs` (or by
    `measurer`, a ready passes.measurement.Measurer; `backend` and `precision` then only name it, and a backend's own
    measurer states the backend and settings it was made with). `measurement`: a runtime.measure.pairs.Measurement,
    in place of backend, precision, batch, threads, runs, trtexec and compile: the command line builds one.
    `calibration`: input batches, for the depth ranking, the width search's data-driven defaults and the batch norms
    re-estimated after pruning (`recalibrate`, default: on with calibration; the depth route's own is `depth`'s
    `recalibrate`, default off). `allow_depth`: when width cannot, depth, then both (`calibration` needed); `routes`
    names the routes instead ("width", "depth", "width+depth", in that order). `log`: a route's progress (default:
    logging). `width`: remove_channels options (importance, round_to, compensate, ...); `depth`: depth_to_budget
    options (rank, recalibrate, max_kernel_growth, ...). `precision` None: the backend's default (fp16 for cuda).
    `compile`: torch.compile first (cuda). `choose_by`: "macs" steers the width search by the MACs kept; "latency"
    times every prunable layer on `backend` at candidate widths first (a per-layer table, cached on disk under
    `latency_cache`) and spends importance per millisecond saved, so channels go where time goes. None: the
    backend's `channel_choice` (latency on cuda, macs elsewhere). Either way candidates are measured whole.
    `device`: where the routes' passes compute (importance, OBS, compensation, calibration passes): "auto", "cpu",
    "cuda", "cuda:N" (prunefx/device.py); None: where `program` is. `program` and the chosen Program are on
    `program`'s device when this returns, also after a refusal; the measurer is handed Programs on `device`.
    Returns (the chosen Program, its BudgetOutcome); raises BudgetUnreachable when no route meets the budget."""
    require_program(program, "meet_budget")
    order = _routes(routes, allow_depth)
    if (speedup is None) == (latency_ms is None):
        raise PrunefxError("meet_budget needs exactly one budget: speedup or latency_ms")
    if any(name != "width" for name in order) and calibration is None:
        raise PrunefxError("the depth route ranks the blocks by their damage on data: give meet_budget calibration "
                           "batches")
    for name, options, owned in (("width", width, OWNED - {"calibration"}), ("depth", depth, OWNED)):
        if options is not None and not isinstance(options, Mapping):  # dict("l2") fails naming neither
            raise PrunefxError(f"meet_budget: '{name}' is a mapping of its pass's options, such as "
                               f"{{'importance': 'l2'}}, not {type(options).__name__} {options!r:.40}")
        given = sorted(owned & set(options or {}))
        if given:  # the route would set them over the caller's, silently
            raise PrunefxError(f"meet_budget: '{given[0]}' is an argument of meet_budget, not an option in '{name}'")
    if choose_by is not None and choose_by not in CHOICES:
        raise PrunefxError(f"meet_budget: choose_by is one of {', '.join(CHOICES)}, not {choose_by!r}")
    device = resolve_device(device) if device is not None else None  # a GPU that is missing: refused first
    if measurement is None:  # a backend's measurer states its own; else the separate settings, as one Measurement
        measurement = _measurement_of(measurer) or _measurement(backend, precision, batch, threads, runs, trtexec,
                                                                compile, given=measurer)
    with contextlib.ExitStack() as owned:  # a measurer made here removes its files on the way out, raised or not
        if measurer is None:
            from prunefx.runtime.measure.speedup import closed_after
            measurer = owned.enter_context(closed_after(measurement.pair()))
        width = dict(width or {})
        choose_by = choose_by or _channel_choice(measurement.backend)
        # the table steers the width routes only: a depth-only search would time every layer for nothing
        if choose_by == "latency" and order != ("depth",):  # timed on the GPU the search measures on: cuda:N current
            with current_gpu(device if device is not None else module_device(program.module)):
                width["latency_table"] = latency_table(program, measurement=measurement, cache_dir=latency_cache,
                                                       multiple=table_multiple(width.get("round_to"), measurer))
        budget = Budget(speedup, latency_ms, tolerance, confirm, max_candidates)
        with on_device(program, device) as placed:
            if device is not None:  # some readers run the module on the batches as given: they go along
                calibration = batches_on(calibration, placed.device)
                if width.get("calibration") is not None:  # the caller's own width calibration (noise)
                    width["calibration"] = batches_on(width["calibration"], placed.device)
            search = _Routes(program, budget, measurer, calibration, MeasuredOn.of(measurement),
                             recalibrate=calibration is not None if recalibrate is None else recalibrate,
                             width=width, depth=dict(depth or {}), log=log or _log.info)
            chosen, outcome = search.run(order)
            facts = getattr(measurer, "facts", None)
            table = getattr(width.get("latency_table"), "summary", None)  # part of how the budget was measured
            if callable(facts) or table is not None:
                outcome.measured_on = dataclasses.replace(outcome.measured_on, facts={
                    **(facts() if callable(facts) else {}), **({"latency_table": table()} if table else {})})
            return placed.home(chosen), outcome


def _routes(routes: Sequence[str] | None, allow_depth: bool) -> tuple[str, ...]:
    if routes is None:
        return ROUTES if allow_depth else ("width",)
    order = tuple(routes)
    if not order or any(name not in ROUTES for name in order) or order != tuple(r for r in ROUTES if r in order):
        raise PrunefxError(f"meet_budget: routes must list some of {', '.join(ROUTES)} in that order, "
                           f"not {list(order)!r}")
    return order


def _measurement(backend: str, precision: str | None, batch: int, threads: int | None, runs: int,
                 trtexec: str | None, compile: bool, *, given) -> Measurement:
    """One Measurement from meet_budget's separate settings, checked now; where the caller gave its own
    measurer, `backend` only names it (and may be unknown to the registry): not checked."""
    from prunefx.runtime import LATENCY_THREADS, backends
    from prunefx.runtime.backends.base import Settings
    from prunefx.runtime.measure.pairs import Measurement

    threads = LATENCY_THREADS if threads is None else threads  # a 0 is refused, not read as the default
    if given is None:
        return Measurement.of(backend, threads=threads, runs=runs, precision=precision, trtexec=trtexec, batch=batch,
                              compile=compile)
    known = backend in backends.names()
    precision = precision or (backends.get(backend).default_precision if known else "fp32")
    return Measurement(backend, Settings(runs=runs, precision=precision, batch=batch, threads=threads, trtexec=trtexec,
                                         compile=compile))


def _measurement_of(measurer) -> Measurement | None:
    """The Measurement a backend's measurer was made with (what the report and the latency table then follow: not
    meet_budget's separate settings, which it does not read); None for another measurer."""
    from prunefx.runtime.measure.pairs import Measurement

    made = getattr(measurer, "measured_as", None)
    return None if made is None else Measurement(*made)


def _channel_choice(backend: str) -> str:
    """What steers the width search on `backend` when the caller does not say: its backend's choice; "macs" for
    a name the registry does not know (a caller's own measurer)."""
    from prunefx.runtime import backends

    return backends.get(backend).channel_choice if backend in backends.names() else "macs"


class _Routes:
    """The routes in order, each after the refusal of the one before (see the module docstring)."""

    def __init__(self, program: Program, budget: Budget, measurer, calibration, measured_on: MeasuredOn, *,
                 recalibrate: bool, width: dict, depth: dict, log: Callable[[str], None]):
        self.program, self.budget, self.measurer, self.calibration = program, budget, measurer, calibration
        self.measured_on, self.recalibrate, self.width, self.depth, self.log = measured_on, recalibrate, width, depth, log
        self.refusals: list[RouteRefusal] = []
        self.errors: list[BudgetUnreachable] = []

    def run(self, order: tuple[str, ...]) -> tuple[Program, BudgetOutcome]:
        for name in order:
            if name != "width" and self.refusals and not has_depth_route(self.program):
                continue  # no block merges or drops: no depth route, and a mix would be width alone
            try:
                reached = self._take(name)
            except PrunefxError as error:
                refused = unreachable_in(error)
                if refused is None:
                    raise
                self.refusals.append(RouteRefusal.of(name, refused))
                self.errors.append(refused)
                continue
            return reached.result.program, BudgetOutcome(
                name, self.budget.speedup, self.budget.latency_ms, reached.measured, reached.candidates,
                self.measured_on, reached.search, reached.result, list(self.refusals), reached.search.get("depth_share"))
        raise self._final_refusal()

    def _take(self, name: str) -> Reached:
        if name == "width":
            return width_route(self.program, self.budget, self.measurer, self.width, self.calibration,
                                self.recalibrate)
        if name == "depth":
            if self.refusals:
                self.log(f"{self.refusals[-1].message}; width alone cannot: taking the depth route")
            return depth_route(self.program, self.budget, self.measurer, self.depth, self.calibration)
        share = self._mirrored_share()
        said = f"{share:.3f} of the budget" if share else "an even split in log-speed-up"
        if self.refusals:
            self.log(f"{self.refusals[-1].message}; taking width and depth together: depth searches for {said}")
        return joint_route(self.program, self.budget, self.measurer, self.width, self.calibration,
                            self.recalibrate, share, self.depth)

    def _mirrored_share(self) -> float | None:
        """After a whole-block overshoot, S / U of the budget (U: the overshooting step's speed-up), so that the
        fewest blocks that meet the share stop short of that step; else None (choose_for_budget's even split)."""
        depth = next((r for r in self.refusals if r.route == "depth"), None)
        if depth is None or not depth.overshot or depth.best is None:
            return None
        wanted = self.budget.speedup if self.budget.speedup is not None else depth.best.dense_ms / self.budget.latency_ms
        return min(wanted / depth.best.speedup, 1.0)

    def _final_refusal(self) -> BudgetUnreachable:
        """The last route's refusal; after the mix, one line with what each route reached."""
        last = self.refusals[-1]
        width, depth = (next((r for r in self.refusals if r.route == name), None) for name in ("width", "depth"))
        if last.route != "width+depth" or width is None or depth is None:
            return self.errors[-1]
        reached = (f"{'overshot at' if depth.overshot else 'best'} {speedup_text(depth.best)}" if depth.best
                   else depth.message)
        width_best = speedup_text(width.best) if width.best else width.message
        # a route whose best point met the budget was refused by the noise, not the model: worth a quieter run
        noisy = [refusal.route for refusal in self.refusals if refusal.noisy]
        again = (f"; {' and '.join(noisy)}'s best interval held the budget, so the timing was too noisy to decide: run "
                 "it again with nothing else running") if noisy else ""
        return BudgetUnreachable(f"cannot reach {budget_text(self.budget.speedup, self.budget.latency_ms)}: width's "
                                 f"best was {width_best}, depth's {reached}, and together (depth aiming at its share of the "
                                 f"budget, width at the rest): {last.message}{again}",
                                 dimension="width+depth", best=width.best, noisy=bool(noisy))
