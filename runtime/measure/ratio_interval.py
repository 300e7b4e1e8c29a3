"""The interval of a speed-up: how sure a measured ratio of two latencies is.

Student's t over the log-ratios of the medians of independent units (rounds of fresh processes, else pairs of
blocks), centred on the pooled ratio; and the stricter confidence of each early look a comparison that may stop
early takes. See docs/latency-budgets.md, 'How a candidate is accepted'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from prunefx.runtime.errors import MeasurementError

CONFIDENCE = 0.90  # the speed-up interval's: two-sided, so its lower bound holds with about 95 % probability
# Of the interval's error rate (1 - CONFIDENCE), the share spent on the looks a confirmation that stops early
# takes before its last round: each look is then judged at a stricter confidence, and the interval of the last
# round at a little above CONFIDENCE, so that stopping at whichever look settles it keeps the error rate within
# 1 - CONFIDENCE (looking at a 90 % interval after each round and stopping at the first that settled the budget
# put a true speed-up equal to the budget outside the interval 40 % of the time).
EARLY_LOOKS_SHARE = 0.2


def looks_confidence(rounds: int) -> tuple[float, float]:
    """(the confidence of each look before the last round, that of the last) for a comparison over `rounds`
    that may stop at any of the looks after its second round: a Bonferroni split of 1 - CONFIDENCE."""
    looks = max(0, rounds - 2)
    if looks == 0:
        return CONFIDENCE, CONFIDENCE
    error = 1 - CONFIDENCE
    return 1 - error * EARLY_LOOKS_SHARE / looks, 1 - error * (1 - EARLY_LOOKS_SHARE)


def ratio_interval(blocks_a: Sequence[Sequence[float]], blocks_b: Sequence[Sequence[float]], *,
                   confidence: float = CONFIDENCE,
                   rounds: Sequence[int] | None = None) -> tuple[float, float] | tuple[None, None]:
    """The `confidence` interval of median(a) / median(b): Student's t over the log-ratios of the medians of its
    independent units, centred on the log of the pooled ratio. The units are the rounds where there are several
    (`rounds`: each block's round, compare_rounds), since fresh sessions or processes differ more than the blocks
    of one; else the pairs of blocks (runs within a block are not independent). A percentile bootstrap over so few
    units (4 rounds, or 5 pairs of blocks) covered 52 to 84 % of simulated true ratios where it claimed 90 %;
    t's tails for few units hold it near 90. One unit, or a zero median, gives no spread to judge: (None, None)
    rather than the point posing as an interval."""
    if len(blocks_a) != len(blocks_b) or not blocks_a:
        raise MeasurementError(f"a ratio interval needs the same number of blocks on both sides, got "
                               f"{len(blocks_a)} and {len(blocks_b)}")
    units = _units(blocks_a, blocks_b, rounds or [0] * len(blocks_a))
    if len(units) < 2:
        return None, None
    medians = [(float(np.median(a)), float(np.median(b))) for a, b in units]
    pooled = [float(np.median(np.concatenate(blocks))) for blocks in (blocks_a, blocks_b)]
    if not all(a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b) for a, b in [*medians, pooled]):
        return None, None  # a zero on both sides too: 0 / 0 is no ratio of 1
    logs = np.log([a / b for a, b in medians])
    centre = np.log(pooled[0] / pooled[1])
    from scipy.special import stdtrit  # Student's t quantile; scipy.stats takes a second to import

    half = stdtrit(len(logs) - 1, (1 + confidence) / 2) * logs.std(ddof=1) / np.sqrt(len(logs))
    return float(np.exp(centre - half)), float(np.exp(centre + half))


def _units(blocks_a, blocks_b, rounds: Sequence[int]) -> list[tuple[list[float], list[float]]]:
    """The independent units of a comparison: each round's runs where there are several rounds, else each pair of
    blocks."""
    if len(set(rounds)) == 1:
        return [(list(a), list(b)) for a, b in zip(blocks_a, blocks_b)]
    return [([x for block, r in zip(blocks_a, rounds) if r == unit for x in block],
             [x for block, r in zip(blocks_b, rounds) if r == unit for x in block]) for unit in sorted(set(rounds))]
