"""How many candidates a width budget search takes under ordinary timing jitter, with its bracket's ends weighted
the Illinois way (the search's rule: passes/budget/speedup_curve.py, `bracket_ends`) and as plain regula falsi.

Simulated, not timed: the measuring function is an oracle on prunefx's Fashion-MNIST ResNet-20 whose true speed-up
is kept^-0.8 (kept: the candidate's share of the dense MACs; a runtime less elastic than the MACs, as ONNX Runtime
on a CPU is for a ResNet-50), widths on any multiple, so that the search can land anywhere. Each round of a
measurement reads the candidate's time times exp(N(0, sigma)), and one round in ten is further off by 10 to 25 %
either way (a short burst); a search reading is one round, a confirmation 4, a longer one 8, each with Student's
t interval over its rounds, as the ONNX Runtime measurer's fresh processes give. "spoilt first": the first reading
also reads the candidate 1.25x slower (a reading the search keeps as its miss unless it is confirmed). A trial
lands when the returned model's true speed-up lies in [0.95 S, 1.25 S]; `readings` counts rounds, the cost of a
search; candidates, the models measured.

    .venv/bin/python benchmarks/bracket_steps.py [--trials 60]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import random
import statistics

import torch
from common import command_line, machine_info, machine_summary, markdown_table, write_results

from prunefx.graph import capture, count
from prunefx.models import build_model
from prunefx.passes import prune_to_budget
from prunefx.passes.budget import width_search
from prunefx.passes.budget.measurement import Timing
from prunefx.runtime.measure.ratio_interval import ratio_interval

ELASTICITY = 0.8  # true speed-up = kept^-ELASTICITY
BURST = (0.1, (0.10, 0.25))  # the share of rounds a burst moves, and by how much (in log)
SPOILT = math.log(1.25)  # a spoilt first reading's candidate side, slower by this (in log)
ROUNDS = {"search": 1, "confirm": 4, "confirm_longer": 8}


class Jittered:
    """The oracle's rounds, each jittered; counts rounds and search readings."""

    def __init__(self, dense, sigma: float, spoilt_first: bool, seed: int):
        self.rng, self.sigma, self.spoilt_first = random.Random(seed), sigma, spoilt_first
        self.dense_macs, self.rounds, self.candidates = count(dense).macs, 0, 0

    def true_ms(self, program) -> float:
        return (count(program).macs / self.dense_macs) ** ELASTICITY

    def _round(self, candidate_ms: float) -> float:
        noise = self.rng.gauss(0.0, self.sigma)
        if self.rng.random() < BURST[0]:
            noise += self.rng.choice((-1, 1)) * self.rng.uniform(*BURST[1])
        if self.spoilt_first and self.rounds == 0:
            noise += SPOILT
        self.rounds += 1
        return candidate_ms * math.exp(noise)

    def measuring(self, how: str):
        def measure(dense, candidate) -> Timing:
            self.candidates += how == "search"
            dense_ms, true = self.true_ms(dense), self.true_ms(candidate)
            rounds = [self._round(true) for _ in range(ROUNDS[how])]
            if len(rounds) == 1:
                return Timing(dense_ms, rounds[0], 0.0)
            low, high = ratio_interval([[dense_ms]] * len(rounds), [[ms] for ms in rounds],
                                       rounds=list(range(len(rounds))))
            return Timing(dense_ms, statistics.median(rounds), 0.0, low, high, method="t")
        return measure

    def measurer(self):
        latency = self.measuring("search")
        latency.confirm, latency.confirm_longer = self.measuring("confirm"), self.measuring("confirm_longer")
        return latency


@contextlib.contextmanager
def plain_regula_falsi():
    """The search with its bracket's ends taken as read (the ablation): no Illinois weighting."""
    drawn_in = width_search.bracket_ends
    width_search.bracket_ends = lambda good, missed, met, aim: (good, missed)
    try:
        yield
    finally:
        width_search.bracket_ends = drawn_in


def trial(dense, speedup: float, sigma: float, spoilt_first: bool, seed: int) -> tuple[str, int, int]:
    """(landed | slow | fast | failed, rounds, candidates)."""
    oracle = Jittered(dense, sigma, spoilt_first, seed)
    try:
        result = prune_to_budget(dense.clone(), config={"speedup": speedup, "latency": oracle.measurer(),
                                                        "round_to": 1})
    except Exception:  # an unreachable verdict from unlucky readings: the search failed
        return "failed", oracle.rounds, oracle.candidates
    true = 1.0 / oracle.true_ms(result.program)
    verdict = "landed" if 0.95 * speedup <= true <= 1.25 * speedup else ("slow" if true < 0.95 * speedup else "fast")
    return verdict, oracle.rounds, oracle.candidates


def row(dense, speedup: float, sigma: float, spoilt_first: bool, ends: str, trials: int) -> dict:
    with plain_regula_falsi() if ends == "plain" else contextlib.nullcontext():
        outcomes = [trial(dense, speedup, sigma, spoilt_first, seed) for seed in range(trials)]
    return {"speedup": speedup, "sigma": sigma, "spoilt_first": spoilt_first, "ends": ends, "trials": trials,
            **{verdict: sum(o[0] == verdict for o in outcomes) for verdict in ("landed", "slow", "fast", "failed")},
            "readings": statistics.mean(o[1] for o in outcomes), "most_readings": max(o[1] for o in outcomes),
            "candidates": statistics.mean(o[2] for o in outcomes), "most_candidates": max(o[2] for o in outcomes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--sigmas", nargs="+", type=float, default=[0.0, 0.08, 0.12])
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dense = capture(build_model("prunefx:resnet20").module.eval(), torch.randn(1, 1, 28, 28), name="resnet20").eval()
    rows = [row(dense, args.speedup, sigma, spoilt, ends, args.trials if sigma else 1)
            for sigma in args.sigmas for spoilt in (False, True) for ends in ("illinois", "plain")]
    info = machine_info(trials=args.trials)
    table = markdown_table(
        ["jitter (sigma a round)", "first reading", "bracket ends", "trials", "landed", "too slow", "too fast",
         "failed", "readings: mean (most)", "candidates: mean (most)"],
        [[f"{r['sigma']:g}", "spoilt" if r["spoilt_first"] else "as read",
          "Illinois (the search's)" if r["ends"] == "illinois" else "plain regula falsi", r["trials"], r["landed"],
          r["slow"], r["fast"], r["failed"], f"{r['readings']:.1f} ({r['most_readings']})",
          f"{r['candidates']:.2f} ({r['most_candidates']})"] for r in rows])
    markdown = (f"# A width budget search's steps under timing jitter (simulated)\n\nProduced by `{command_line()}` "
                f"on {info['date_utc']} UTC.\n\n- Machine: {machine_summary(info)} (the figures do not depend on "
                f"it).\n- Oracle speed-up kept^-{ELASTICITY}, prunefx's Fashion-MNIST ResNet-20, widths on any "
                f"multiple, a {args.speedup:g}x budget at the default tolerance; readings: rounds measured (a search "
                f"reading 1, a confirmation 4, a longer one 8); landed: the true speed-up in [0.95 S, 1.25 S]. "
                f"Without jitter one trial a row: the search is then deterministic.\n\n{table}\n")
    settings = {"elasticity": ELASTICITY, "burst_share": BURST[0], "burst_log": list(BURST[1]),
                "spoilt_first_slower": math.exp(SPOILT), "rounds": ROUNDS, "speedup": args.speedup}
    write_results("bracket_steps", {"machine": info, "command": command_line(), "settings": settings, "results": rows},
                  markdown)
    print(table)


if __name__ == "__main__":
    main()
