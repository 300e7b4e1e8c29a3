"""How the budget searches (prune_to_budget, depth_to_budget, choose_for_budget) are measured.

A search never calls the runtime: it *asks*. Each search step is a generator that yields an `Ask` (measure
this candidate beside the dense model: a short search reading, a longer confirmation, or longer still) and
receives the answer, a graph.timing.Timing. Whoever runs the search answers: `prunefx.budget` with the
runtime's measurer (so every call goes downward, CLI -> budget -> runtime), and the passes themselves, for a
bare Python call, with the `Measurer` in their config (`drive`).

A Measurer: called, `(dense, candidate) -> Timing` (or a plain (dense ms, ms, spread) triple); `confirm`, the
same measurement made longer, whose Timing carries the speed-up interval an acceptance relies on; optionally
`confirm_longer`; and `round_to`, the width multiple its backend runs fastest (None when unknown). A plain
function is wrapped by `as_measurer` (confirmed by calling it again, a point interval).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tqdm import tqdm

from prunefx.graph import Program
from prunefx.graph.channels.saliency import hessians_shared
from prunefx.graph.progress import progress_bar
from prunefx.graph.timing import CONFIDENCE, Timing, share_text

__all__ = ["CONFIDENCE", "Ask", "Asked", "LongerMeasurer", "Measurer", "Steps", "Timing", "answerer", "as_measurer",
           "drive", "int8_refusal_of", "round_to_of"]


@runtime_checkable
class Measurer(Protocol):
    """What a budget pass measures with (see the module docstring)."""

    round_to: int | None

    def __call__(self, dense: Program, candidate: Program) -> Timing | tuple[float, float, float]: ...

    def confirm(self, dense: Program, candidate: Program) -> Timing: ...


@runtime_checkable
class LongerMeasurer(Measurer, Protocol):
    """A Measurer that can measure a candidate longer still (`confirm_longer`: more fresh processes, more runs),
    for a confirmation that leaves the budget inside the interval: a narrower interval settles it."""

    def confirm_longer(self, dense: Program, candidate: Program) -> Timing: ...


class _Repeated:
    """A plain measuring function as a Measurer: confirmed by measuring once more, a point interval."""

    round_to: int | None = None

    def __init__(self, latency: Callable):
        self.latency = latency

    def __call__(self, dense: Program, candidate: Program) -> Timing:
        return Timing.of(self.latency(dense, candidate))

    def confirm(self, dense: Program, candidate: Program) -> Timing:
        return Timing.of(self.latency(dense, candidate))


def as_measurer(latency) -> Measurer:
    """`latency` if it is a Measurer, else the plain function wrapped (confirmation = one more call)."""
    if callable(getattr(latency, "confirm", None)):
        return latency
    return _Repeated(latency)


def round_to_of(latency) -> int | None:
    """The width multiple the measurer's backend prefers, or None."""
    value = getattr(latency, "round_to", None)
    return int(value) if value else None


def int8_refusal_of(latency) -> str | None:
    """Why the measurer's backend cannot time a fake-quantized Program like the dense model (its quantizers run
    as float operators, say); None where it can, or does not say."""
    return getattr(latency, "int8_refusal", None) or None


@dataclass(frozen=True)
class Ask:
    """A measurement a search needs: `candidate` beside `dense`, for as long as `how` says ("search": a Measurer's
    call; "confirm" or "confirm_longer": those methods). Answered with a Timing; a `confirm_longer` the measurer
    cannot make is answered with None. `against`: the speed-up a confirmation is judged against; a measurer that
    `stops_early` stops once its interval settles it."""

    how: str
    dense: Program
    candidate: Program
    against: float | None = None


Steps = Generator[Ask, "Timing | None", object]  # a search step: yields what it needs measured, returns its result


def wanted_speedup(speedup: float | None, latency_ms: float | None, dense: Program) -> Steps:
    """The budget as a speed-up over `dense`: a latency budget through the dense model's time, measured beside
    itself once."""
    if speedup is not None:
        return speedup
    timing = yield Ask("search", dense, dense)
    assert timing is not None and latency_ms is not None  # a "search" Ask is always answered with a Timing
    return timing.dense_ms / latency_ms


def answerer(measurer, ask: Ask) -> Callable[[Program, Program], object] | None:
    """What answers `ask` with `measurer` (a Measurer or a plain function): the call, `confirm` or
    `confirm_longer`; None where the measurer has no such measurement."""
    measurer = as_measurer(measurer)
    if ask.how == "search":
        return measurer
    method = getattr(measurer, ask.how, None)
    if method is not None and ask.against is not None and getattr(measurer, "stops_early", False):
        return functools.partial(method, against=ask.against)
    return method


def drive(steps: Steps, measurer):
    """Run a search's `steps` to the end, each Ask answered by `measurer`; the steps' result. The passes' own
    driver, for a bare Python call; prunefx.budget runs the same loop in its own frame, so that the runtime is
    called from above."""
    with Asked(steps) as asks:
        for ask in asks:
            method = answerer(measurer, ask)
            asks.answer(None if method is None else method(ask.dense, ask.candidate))
    return asks.result


_READINGS = {"search": "a search reading", "confirm": "a confirmation", "confirm_longer": "a longer confirmation"}


class Asked:
    """A search's steps as an iterator of the Asks they make, each to be `answer`ed before the next is drawn;
    `result` once they end. The answering is the caller's (its frame calls the measurer). Used `with`, a bar (on
    a terminal, graph/progress.py) counts the measurements and shows the last speed-up, and the search's every
    candidate is compensated from one gathering of the dense Hessians (saliency.hessians_shared)."""

    def __init__(self, steps: Steps, progress: bool | None = None):
        self.steps, self.progress, self.result = steps, progress, None
        self._reply: Timing | None = None
        self._how = ""  # the last Ask's
        self._bar: tqdm | None = None
        self._shared = contextlib.ExitStack()

    def __enter__(self) -> Asked:
        self._shared.enter_context(hessians_shared())
        self._bar = progress_bar("budget search", None, unit="measurement", progress=self.progress)
        return self

    def __exit__(self, *_) -> None:
        if self._bar is not None:
            self._bar.close()
        self._shared.close()

    def __iter__(self) -> Iterator[Ask]:
        try:
            ask = next(self.steps)
            while True:
                self._how = ask.how
                yield ask
                reply, self._reply = self._reply, None
                ask = self.steps.send(reply)
        except StopIteration as finished:
            self.result = finished.value

    def answer(self, measured) -> None:
        """The answer to the last Ask: a Timing or a (dense ms, ms, spread) triple; None where the measurer has
        no such measurement."""
        self._reply = None if measured is None else Timing.of(measured)
        if self._reply is not None and self._bar is not None:
            busy = f", {share_text(self._reply.contention)}" if self._reply.busy else ""
            self._bar.set_postfix_str(f"last: {self._reply.speedup:.2f}x, {_READINGS[self._how]}{busy}", refresh=False)
            self._bar.update()
