"""How often a width budget search lands in the window when the machine is busy for a while during it.

Simulated, not timed: the measuring function is an oracle (latency = 0.1 ms + 40 ms per GMAC of the candidate, the
stand-in of tests/test_prune_to_budget.py) on prunefx's Fashion-MNIST ResNet-20, so every figure here is about the
search's rules, not about a runtime. In each trial a stretch of the search's readings (a random start among its
first 12, --stretches long) reads one side of the pair 1.5x to 3.5x slower (the candidate or the dense model, at
random): another job sharing the cores. A reading is one measurement; a confirmation the medians of 4, a longer one
of 8, as the ONNX Runtime measurer's fresh processes are, so a busy stretch can spoil a confirmation whole. Each
case runs twice: with the load unsaid (a machine without /proc/stat: no Timing carries a contention) and said (a busy
reading says other processes took half the cores, a quiet one none, and a measurement the median of its readings',
as runtime/measure/machine_load.py reads it). A trial lands when the returned model's true speed-up lies in
[0.95 S, 1.25 S], the window another process judges it by (docs/latency-budgets.md); `readings` is the mean number
of readings a search took. The quiet rows are the control.

    .venv/bin/python benchmarks/budget_search_noise.py [--trials 60]
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics

import torch
from common import command_line, machine_info, machine_summary, markdown_table, write_results

from prunefx.graph import capture, count
from prunefx.models import build_model
from prunefx.passes import prune_to_budget
from prunefx.passes.budget.measurement import Timing

SLOWER = (1.5, 3.5)  # how much slower a busy reading's side runs
BUSY_SHARE = 0.5  # what a busy reading says other processes took of the cores, where it says so


class BusyStretch:
    """The oracle's readings, those from `start` to `start + length` (in readings) slowed on one side."""

    def __init__(self, rng: random.Random, start: float, length: int):
        self.rng, self.start, self.length, self.readings = rng, start, length, 0
        self._ms: dict[tuple, float] = {}

    def ms(self, program) -> float:
        key = tuple(tuple(tensor.shape) for tensor in program.module.state_dict().values())
        if key not in self._ms:
            self._ms[key] = 0.1 + 40_000.0 * count(program).macs / 1e9
        return self._ms[key]

    def reading(self, dense, candidate) -> tuple[float, float, float]:
        """(dense ms, ms, the share of the cores other processes took)."""
        dense_ms, ms, share = self.ms(dense), self.ms(candidate), 0.0
        if self.start <= self.readings < self.start + self.length:
            slower, share = self.rng.uniform(*SLOWER), BUSY_SHARE
            dense_ms, ms = (dense_ms * slower, ms) if self.rng.random() < 0.5 else (dense_ms, ms * slower)
        self.readings += 1
        return dense_ms, ms, share

    def measurer(self, said: bool):
        def medians(count_: int):
            def measure(dense, candidate):
                rows = [self.reading(dense, candidate) for _ in range(count_)]
                share = statistics.median(r[2] for r in rows) if said else None
                return Timing(statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows), 0.01,
                              contention=share)
            return measure
        latency = medians(1)
        latency.confirm, latency.confirm_longer = medians(4), medians(8)
        return latency


def trial(dense, speedup: float, seed: int, length: int, said: bool) -> tuple[str, float, int]:
    """(landed | slow | fast | failed, the returned model's true speed-up, readings taken)."""
    rng = random.Random(seed)
    busy = BusyStretch(rng, rng.uniform(0, 12), length)
    try:
        result = prune_to_budget(dense.clone(), config={"speedup": speedup, "latency": busy.measurer(said), "round_to": 4,
                                                        "tolerance": 0.25})
    except Exception:  # an unreachable verdict from spoilt readings: the search failed
        return "failed", 0.0, busy.readings
    true = busy.ms(dense) / busy.ms(result.program)
    verdict = "landed" if 0.95 * speedup <= true <= 1.25 * speedup else ("slow" if true < 0.95 * speedup else "fast")
    return verdict, true, busy.readings


def row(dense, speedup: float, length: int, trials: int, said: bool) -> dict:
    outcomes = [trial(dense, speedup, seed, length, said) for seed in range(trials)]
    fast = [true / speedup for verdict, true, _ in outcomes if verdict == "fast"]
    return {"speedup": speedup, "busy_readings": length, "load_said": said, "trials": trials,
            **{verdict: sum(o[0] == verdict for o in outcomes) for verdict in ("landed", "slow", "fast", "failed")},
            "worst_overshoot": max(fast, default=None), "readings": statistics.mean(o[2] for o in outcomes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--speedups", nargs="+", type=float, default=[1.5, 2.5])
    parser.add_argument("--stretches", nargs="+", type=int, default=[4, 8, 16], help="busy readings per trial")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dense = capture(build_model("prunefx:resnet20").module.eval(), torch.randn(1, 1, 28, 28), name="resnet20").eval()
    rows = [row(dense, speedup, length, args.trials if length else 5, said)
            for speedup in args.speedups for length in [0, *args.stretches] for said in (False, True)]
    info = machine_info(trials=args.trials)
    table = markdown_table(["speed-up asked", "busy readings", "load", "trials", "landed", "too slow", "too fast", "failed",
                            "worst: true / asked", "readings per search"],
                           [[f"{r['speedup']:g}x", r["busy_readings"] or "none (quiet)",
                             "said" if r["load_said"] else "unsaid", r["trials"], r["landed"],
                             r["slow"], r["fast"], r["failed"],
                             "-" if r["worst_overshoot"] is None else f"{r['worst_overshoot']:.2f}",
                             f"{r['readings']:.1f}"] for r in rows])
    markdown = (f"# A width budget search on a machine busy for a while (simulated)\n\nProduced by `{command_line()}` "
                f"on {info['date_utc']} UTC.\n\n- Machine: {machine_summary(info)} (the figures do not depend on it).\n"
                f"- Oracle latency 0.1 ms + 40 ms per GMAC, prunefx's Fashion-MNIST ResNet-20, widths in multiples "
                f"of 4, tolerance 0.25; a busy stretch slows one side of each of its readings {SLOWER[0]}x to "
                f"{SLOWER[1]}x; load said: each reading carries the share of the cores other processes took ({BUSY_SHARE} when "
                f"busy), unsaid: none does; landed: the true speed-up in [0.95 S, 1.25 S].\n\n{table}\n")
    write_results("budget_search_noise", {"machine": info, "command": command_line(), "results": rows}, markdown)
    print(table)


if __name__ == "__main__":
    main()
