"""Landing a plan inside the target's tolerance when the ranking's knob cannot (channel selection, selection.py).

Coarse widths (a 16-wide group can only keep 8 or 16 at round_to 8) make the cost jump across the target as the
ranking's knob moves. Then single groups are moved one allowed width at a time, each time the move that lands
closest to the target, until no move gets closer; where no single move does, two groups moved at once may (one
wider, one narrower: a 2-group model at 64 channels can hold 0.48 and 0.57 of its MACs by single steps and 0.51
only by a pair), tried only on models with few groups, where pairs are few and the steps coarse. On a small model
the moves can stall on a plateau short of the tolerance; there every plan is few enough to list.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

TARGET_TOLERANCE = 0.03  # relative to the target cost
EXHAUSTIVE_UP_TO_PLANS = 4096  # every plan of a small model is listed when the moves stall
PAIR_MOVES_UP_TO_GROUPS = 24  # 4 x 276 pair plans per round at most; larger models have fine-grained steps

Measure = Callable[[list[int]], float]  # kept widths -> the fraction of the dense cost they keep


def landed(measure: Measure, goal: float, kept: list[int], widths: Sequence[np.ndarray],
           sizes: Sequence[int]) -> list[int]:
    """`kept`, moved into the tolerance around `goal` where it is outside it (module docstring): by single and
    pair moves, else the listed plan within it whose widths differ least from `kept` (the ranking's choice, so
    importance still decides); `kept` where neither lands."""
    if abs(measure(kept) - goal) <= TARGET_TOLERANCE * goal:
        return kept
    kept = _refined(measure, goal, kept, widths)
    return _nearest_within_tolerance(measure, goal, kept, widths, sizes) or kept


def _refined(measure: Measure, goal: float, kept: list[int], widths: Sequence[np.ndarray], *,
             rounds: int = 64) -> list[int]:
    kept = list(kept)
    error = abs(measure(kept) - goal)
    for _ in range(rounds):
        if error <= TARGET_TOLERANCE * goal:
            break
        moves = _closest(measure, goal, _moves(kept, widths))
        if (not moves or moves[0] >= error) and len(kept) <= PAIR_MOVES_UP_TO_GROUPS:
            moves = _closest(measure, goal, _pair_moves(kept, widths))
        if not moves or moves[0] >= error:
            break
        error, kept = moves
    return kept


def _nearest_within_tolerance(measure: Measure, goal: float, kept: list[int], widths: Sequence[np.ndarray],
                              sizes: Sequence[int]) -> list[int] | None:
    if math.prod(len(allowed) for allowed in widths) > EXHAUSTIVE_UP_TO_PLANS:
        return None
    if abs(measure(kept) - goal) <= TARGET_TOLERANCE * goal:
        return None

    def distance(plan):
        return sum(abs(w - k) / size for w, k, size in zip(plan, kept, sizes))

    within = [list(map(int, plan)) for plan in itertools.product(*widths)
              if abs(measure(list(map(int, plan))) - goal) <= TARGET_TOLERANCE * goal]
    return min(within, key=distance, default=None)


def _closest(measure: Measure, goal: float, plans) -> tuple[float, list[int]] | None:
    return min(((abs(measure(plan) - goal), plan) for plan in plans), key=lambda m: m[0], default=None)


def _steps(kept: list[int], widths: Sequence[np.ndarray], index: int) -> list[int]:
    """The widths one allowed step either side of group `index`'s width."""
    allowed = widths[index]
    position = int(np.searchsorted(allowed, kept[index]))
    return [int(allowed[n]) for n in (position - 1, position + 1) if 0 <= n < len(allowed)]


def _moves(kept: list[int], widths: Sequence[np.ndarray]) -> Iterator[list[int]]:
    """Every plan that differs from `kept` by one allowed width step in one group."""
    for index in range(len(kept)):
        for width in _steps(kept, widths, index):
            yield kept[:index] + [width] + kept[index + 1:]


def _pair_moves(kept: list[int], widths: Sequence[np.ndarray]) -> Iterator[list[int]]:
    """Every plan that differs from `kept` by one allowed width step in each of two groups."""
    for first, second in itertools.combinations(range(len(kept)), 2):
        for width_first in _steps(kept, widths, first):
            for width_second in _steps(kept, widths, second):
                moved = list(kept)
                moved[first], moved[second] = width_first, width_second
                yield moved
