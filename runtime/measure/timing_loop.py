"""The alternating timing loop of runtime/measure/latency.py, with nothing imported but the standard library.

A timing round in a fresh process (runtime/measure/rounds.py) loads this file by its path, without importing
the prunefx package: that package imports torch, which costs a fresh interpreter 3 to 4 seconds on a 2-core
machine, and a latency-budget search starts four such processes at each confirmation.
"""

from __future__ import annotations

from collections.abc import Callable


class NoBar:
    """Stands in for a tqdm bar where nothing is shown (a round's own process)."""

    def update(self, count: int) -> None:
        pass


# Warm-up stops after this long (both sides, at least two calls each): a model of a tenth of a second is warm
# after a few calls, and twenty of them per side and round made most of a large model's confirmation.
WARM_SECONDS = 1.0
# A round with `seconds` holds at least this many passes of blocks where its calls allow (fitted_blocks): a
# disturbance of a second or two (a neighbour's burst on a shared host) then lands on blocks of both sides, not on
# one side's only block (benchmarks/long_call_readings.py measures a ViT-L's readings both ways).
MIN_PASSES = 4


def alternate(fn_a: Callable[[], object], fn_b: Callable[[], object], warmup: int, runs: int, block: int,
              settle: int, clock: Callable[[], float], bar=None, seconds: float | None = None) -> tuple[list, list]:
    """Warm-up call by call (`warmup` calls per side, or WARM_SECONDS), then `runs` timed calls per side in
    alternating blocks of up to `block`, each block after `settle` untimed calls (see runtime/measure/latency.py's
    compare_latency); the blocks, in seconds. The side that goes first alternates too (a b, b a, a b, ...): a
    machine that drifts during the measurement, or favours the block after a switch, then favours neither side.
    `seconds`: no pair of blocks begins that would end past that long after the first (see alternate_all)."""
    blocks_a, blocks_b = alternate_all((fn_a, fn_b), warmup, runs, block, settle, clock, bar, seconds)
    return blocks_a, blocks_b


def alternate_all(fns: tuple[Callable[[], object], ...], warmup: int, runs: int, block: int, settle: int,
                  clock: Callable[[], float], bar=None, seconds: float | None = None) -> list[list[list[float]]]:
    """`alternate` for any number of callables (a benchmark's variants timed side by side): block i of every
    callable is timed in pass i, in order on even passes and reversed on odd ones; the blocks of each, in seconds.
    `seconds`: fewer runs than `runs` where a pass of blocks is long, whole passes (at least one) within that long,
    a pass that would end past it (as long as the one before) not begun (a slow model's round: its calls are long,
    so few of them give a steady median), its blocks cut so that MIN_PASSES passes fit into `seconds` where the
    warm-up's calls say they would not (fitted_blocks)."""
    bar = bar if bar is not None else NoBar()
    last_warm = warm(fns, warmup, clock)
    if seconds is not None:
        block, settle = fitted_blocks(block, settle, seconds, last_warm)
    blocks: list[list[list[float]]] = [[] for _ in fns]
    started = last_pass = clock()
    while sum(map(len, blocks[0])) < runs:
        now = clock()
        # no pass begins that would end past `seconds`, judged by the one before it
        if blocks[0] and seconds is not None and 2 * now - last_pass - started > seconds:
            break
        last_pass = now
        size = min(block, runs - sum(map(len, blocks[0])))
        for fn, timed in in_turn(tuple(zip(fns, blocks)), len(blocks[0])):
            for _ in range(settle):
                fn()
            timed.append([time_call(fn, clock) for _ in range(size)])
        bar.update(size)
    return blocks


def in_turn(sides: tuple, index: int) -> tuple:
    """`sides` in order at an even `index` and reversed at an odd one: neither side of a comparison always first."""
    return sides if index % 2 == 0 else sides[::-1]


def fitted_blocks(block: int, settle: int, seconds: float, call_seconds: list[float] | None) -> tuple[int, int]:
    """(block, settle) as given where MIN_PASSES passes of them fit `seconds`, each side's `settle` and `block` calls
    at `call_seconds` (its last warm-up call; None: not warmed, kept); else blocks of as many calls as fit (one at
    least: a ViT-L's pair takes 1.1 s on 2 cores) and no settling call. Calls that long (a pair over 0.1 s in a 5 s
    round) read weights far larger than the caches, so a settling call would leave nothing warm for the next."""
    per_call = sum(call_seconds) if call_seconds else 0.0
    fits = int(seconds / (MIN_PASSES * per_call)) if per_call > 0 else block + settle  # calls a side a pass holds
    if fits >= block + settle:
        return block, settle
    return max(1, fits), 0


def warm(fns: tuple[Callable[[], object], ...], warmup: int, clock: Callable[[], float]) -> list[float] | None:
    """The warm-up of every CPU timing, one model or two: each of `fns` in turn, `warmup` times, stopping after
    WARM_SECONDS once each ran twice. Returns the seconds of each one's last warm-up call (None without any)."""
    started, last = clock(), None
    for done in range(warmup):
        last = [time_call(fn, clock) for fn in fns]
        if done >= 1 and clock() - started >= WARM_SECONDS:
            break
    return last


def time_call(fn: Callable[[], object], clock: Callable[[], float]) -> float:
    start = clock()
    fn()
    return clock() - start
