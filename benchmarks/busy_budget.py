"""A real `--speedup` budget search on a machine another process makes busy for a while, with the load said
(each CPU reading carries the share of the cores other processes took, runtime/measure/machine_load.py) and
unsaid (the share not known, as on a machine without /proc/stat: the searches' rules for busy readings idle).

ResNet-18 (random weights) at 224 px, prune_to_budget with prunefx's ONNX Runtime measurer at --threads, S = --speedup.
In each trial a competitor (one process spinning 0.3 s in every 0.6 s, the shape of a test suite's load) starts
at a random moment of the search's first --window seconds and runs for --busy seconds. The returned model is then
checked with nothing else running, by the same comparison `prunefx bench --vs` makes (4 fresh processes): a trial
lands when that speed-up lies in [0.95 S, 1.25 S]. The arms alternate trial by trial and share each trial's
competitor timing.

    .venv/bin/python benchmarks/busy_budget.py [--trials 4] [--speedup 1.5]
"""

from __future__ import annotations

import argparse
import logging
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torchvision
from common import command_line, machine_info, machine_summary, markdown_table, write_results

from prunefx.graph import capture
from prunefx.passes import prune_to_budget
from prunefx.runtime import export_onnx, onnx_latency_pair
from prunefx.runtime.backends.ort import onnx_side_by_side
from prunefx.runtime.backends.settings import Settings
from prunefx.runtime.measure import latency

SPIN = "import time\nwhile True:\n    start = time.time()\n    while time.time() - start < 0.3: pass\n    time.sleep(0.3)"


class Unsaid:
    """A load meter that knows nothing (the share of a machine without /proc/stat)."""

    share = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass


def competitor(delay: float, seconds: float, stop: threading.Event) -> threading.Thread:
    """A thread that starts the spinning process after `delay` s and stops it `seconds` later (or at `stop`)."""
    def run():
        if stop.wait(delay):
            return
        process = subprocess.Popen([sys.executable, "-c", SPIN])
        stop.wait(seconds)
        process.kill()
        process.wait()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def trial(dense, speedup: float, said: bool, delay: float, busy: float, threads: int) -> dict:
    real = latency.LoadMeter
    if not said:
        latency.LoadMeter = Unsaid
    stop = threading.Event()
    started = time.perf_counter()
    thread = competitor(delay, busy, stop)
    try:
        with onnx_latency_pair(threads=threads) as pair:
            result = prune_to_budget(dense.clone(), config={"speedup": speedup, "latency": pair})
    finally:
        stop.set()
        thread.join()
        latency.LoadMeter = real
    seconds = time.perf_counter() - started
    trace = result.stats["trace"]
    with tempfile.TemporaryDirectory(prefix="prunefx-busy-budget-") as folder:
        files = [export_onnx(program, Path(folder) / f"{name}.onnx").path
                 for name, program in (("dense", dense), ("chosen", result.program))]
        check = onnx_side_by_side([(path, dense.example_inputs) for path in files], Settings(runs=200, threads=threads))
    true = check.speedup
    verdict = "landed" if 0.95 * speedup <= true <= 1.25 * speedup else ("slow" if true < 0.95 * speedup else "fast")
    return {"said": said, "competitor_from_s": delay, "search_seconds": seconds, "searched_speedup": result.stats["speedup"],
            "chosen_contention": result.stats["chosen"].get("contention"), "candidates": len(trace),
            "busy_readings": sum(1 for row in trace if (row.get("contention") or 0) >= 0.1
                                 or ((row.get("first") or {}).get("contention") or 0) >= 0.1),
            "checked_speedup": true, "checked_low": check.speedup_low, "checked_high": check.speedup_high,
            "verdict": verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--speedup", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--window", type=float, default=20.0, help="the competitor starts within this many seconds")
    parser.add_argument("--busy", type=float, default=30.0, help="seconds the competitor runs")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    dense = capture(torchvision.models.resnet18().eval(), torch.randn(1, 3, 224, 224), name="resnet18").eval()
    rng = random.Random(0)
    rows = []
    for index in range(args.trials):
        delay = rng.uniform(0, args.window)
        for said in ((True, False) if index % 2 == 0 else (False, True)):
            rows.append(trial(dense, args.speedup, said, delay, args.busy, args.threads))
            row = rows[-1]
            print(f"trial {index + 1} ({'said' if said else 'unsaid'}): searched {row['searched_speedup']:.2f}x, "
                  f"checked {row['checked_speedup']:.2f}x, {row['verdict']}", flush=True)
    info = machine_info(trials=args.trials, speedup=args.speedup, threads=args.threads, window=args.window,
                        busy=args.busy)
    table = markdown_table(
        ["trial", "load", "competitor from", "candidates", "busy readings", "searched", "checked (90 % interval)",
         "verdict", "search s"],
        [[index // 2 + 1, "said" if r["said"] else "unsaid", f"{r['competitor_from_s']:.1f} s", r["candidates"],
          r["busy_readings"], f"{r['searched_speedup']:.2f}x",
          f"{r['checked_speedup']:.2f}x ({r['checked_low']:.2f}-{r['checked_high']:.2f})", r["verdict"],
          f"{r['search_seconds']:.0f}"] for index, r in enumerate(rows)])
    landed = {said: sum(r["verdict"] == "landed" for r in rows if r["said"] == said) for said in (True, False)}
    markdown = (f"# A real budget search on a machine busy for a while\n\nProduced by `{command_line()}` on "
                f"{info['date_utc']} UTC.\n\n- Machine: {machine_summary(info)}.\n- ResNet-18 (random weights), "
                f"`--speedup {args.speedup:g}` on ONNX Runtime at {args.threads} threads; a competitor spinning 0.3 s "
                f"in every 0.6 s starts within the search's first {args.window:g} s and runs {args.busy:g} s; checked "
                f"afterwards, quiet, over 4 fresh processes.\n- Landed in [0.95 S, 1.25 S]: load said {landed[True]} "
                f"of {args.trials}, unsaid {landed[False]} of {args.trials}.\n\n{table}\n")
    write_results("busy_budget", {"machine": info, "command": command_line(), "trials": rows, "landed": landed},
                  markdown)
    print(table)


if __name__ == "__main__":
    main()
