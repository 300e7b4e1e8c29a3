"""What another process sharing the cores does to a speed-up reading, and what the load meter reads meanwhile.

ResNet-18 (random weights) dense against prunefx's prune of it to half the MACs (l2), both timed by the measurer a
`--speedup` budget uses (`onnx_latency_pair`, ONNX Runtime at --threads): its search reading (one process) and its
confirmation (4 fresh processes). Each is taken under four conditions, the competitor started before the
measurement and stopped after it:
- quiet: no competitor;
- steady: one process spinning without pause;
- bursty: one process spinning 0.3 s in every 0.6 s (the shape of a test suite's load); short bursts: 0.05 s in
  every 0.15 s;
- every core: one spinning process per core.
`contention` is what the Timing carries (runtime/measure/machine_load.py: the share of the cores other processes
took); `busy` how many readings reached graph/timing.py's BUSY. A speed-up's error is against the quiet readings'
median of the same kind (search or confirmation). Conditions alternate repeat by repeat, so drift hits them alike.

    .venv/bin/python benchmarks/busy_machine.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time

import torch
import torchvision
from common import command_line, machine_info, machine_summary, markdown_table, write_results

from prunefx.graph import capture
from prunefx.graph.timing import BUSY
from prunefx.passes import remove_channels
from prunefx.passes.core.pipeline import run_inner
from prunefx.runtime import onnx_latency_pair

SPIN = "import time\nwhile True:\n    start = time.time()\n    while time.time() - start < {busy}: pass\n    time.sleep({rest})"
# (seconds spinning, seconds resting) of each competitor
CONDITIONS = {"quiet": (), "steady": ((1.0, 0.0),), "bursty": ((0.3, 0.3),), "short bursts": ((0.05, 0.1),)}


def competitors(condition: str) -> list[tuple[float, float]]:
    if condition == "every core":
        return [(1.0, 0.0)] * len(os.sched_getaffinity(0))
    return list(CONDITIONS[condition])


def measured(kind: str, condition: str, dense, pruned, threads: int) -> dict:
    """One reading (`kind`: search or confirm) with the condition's competitors running beside it."""
    processes = [subprocess.Popen([sys.executable, "-c", SPIN.format(busy=busy, rest=rest)])
                 for busy, rest in competitors(condition)]
    pair = onnx_latency_pair(threads=threads)
    try:
        pair.search(dense, dense)  # both files exported (and warmed once) before the competitors count
        time.sleep(0.5)
        timing = pair(dense, pruned) if kind == "search" else pair.confirm(dense, pruned)
    finally:
        for process in processes:
            process.kill()
            process.wait()
        pair.close()
    return {"kind": kind, "condition": condition, "speedup": timing.speedup, "dense_ms": timing.dense_ms,
            "ms": timing.ms, "contention": timing.contention, "busy": timing.busy}


def summary(readings: list[dict]) -> list[dict]:
    rows = []
    for kind in ("search", "confirm"):
        quiet = statistics.median(r["speedup"] for r in readings if r["kind"] == kind and r["condition"] == "quiet")
        for condition in [*CONDITIONS, "every core"]:
            mine = [r for r in readings if r["kind"] == kind and r["condition"] == condition]
            shares = [r["contention"] for r in mine if r["contention"] is not None]
            errors = [r["speedup"] / quiet - 1 for r in mine]
            rows.append({"kind": kind, "condition": condition, "readings": len(mine),
                         "contention": (min(shares), max(shares)) if shares else None,
                         "busy": sum(r["busy"] for r in mine),
                         "speedup": (min(r["speedup"] for r in mine), max(r["speedup"] for r in mine)),
                         "dense_ms": statistics.median(r["dense_ms"] for r in mine),
                         "worst_error": max(errors, key=abs)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    dense = capture(torchvision.models.resnet18().eval(), torch.randn(1, 3, 224, 224), name="resnet18").eval()
    pruned = run_inner(remove_channels, dense, {"macs": 0.5, "importance": "l2"}, on_copy=True).program
    readings = []
    for repeat in range(args.repeats):
        for kind in ("search", "confirm"):
            for condition in [*CONDITIONS, "every core"]:
                readings.append(measured(kind, condition, dense, pruned, args.threads))
                print(f"repeat {repeat + 1}: {kind} {condition}: {readings[-1]['speedup']:.2f}x, contention "
                      f"{readings[-1]['contention']}", flush=True)
    rows = summary(readings)
    info = machine_info(repeats=args.repeats, threads=args.threads)
    table = markdown_table(
        ["reading", "condition", "readings", "contention read", f"busy (>= {BUSY:g})", "speed-up", "dense ms (median)",
         "worst error vs quiet"],
        [[r["kind"], r["condition"], r["readings"],
          "not known" if r["contention"] is None else f"{r['contention'][0]:.2f}-{r['contention'][1]:.2f}",
          r["busy"], f"{r['speedup'][0]:.2f}-{r['speedup'][1]:.2f}x", f"{r['dense_ms']:.2f}",
          f"{r['worst_error']:+.1%}"] for r in rows])
    markdown = (f"# A speed-up reading beside another process, and the load meter's share\n\nProduced by "
                f"`{command_line()}` on {info['date_utc']} UTC.\n\n- Machine: {machine_summary(info)}.\n"
                f"- ResNet-18 (random weights) against its l2 prune to half the MACs, ONNX Runtime at {args.threads} "
                f"threads, prunefx's budget measurer: a search reading (one process) and a confirmation (4 fresh "
                f"processes); {args.repeats} of each per condition, conditions alternating.\n\n{table}\n")
    conditions = {condition: competitors(condition) for condition in [*CONDITIONS, "every core"]}
    write_results("busy_machine", {"machine": info, "command": command_line(), "competitors": conditions,
                                   "readings": readings, "results": rows}, markdown)
    print(table)


if __name__ == "__main__":
    main()
