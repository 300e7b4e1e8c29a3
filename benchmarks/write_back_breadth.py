"""The write-back over a wide list of models, one process per model: what write_back_timm.py and
write_back_hf.py share (the child process, the results file, the command line). Each script names its models
and builds one; a model that hangs or crashes the interpreter is a row, not the end of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable

from common import RESULTS, command_line, machine_info, machine_summary, markdown_table, publish_results

STATUSES = ("written back", "refused", "not pruned", "crashed", "timed out")


def run_in_process(script: str, name: str, label: str, timeout: float) -> dict:
    """`script --one name` in a fresh process, one thread: the row it prints; a crash or a timeout is its row."""
    try:
        done = subprocess.run([sys.executable, script, "--one", name], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return {"model": label, "status": "timed out", "message": f"over {timeout:g} s"}
    rows = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if not rows:
        tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {"model": label, "status": "crashed", "message": tail}
    return json.loads(rows[-1])


def publish_breadth(results: str, title: str, rows: list[dict], labels: list[str]) -> int:
    """The results file `results` (.json and .md): one row per model in the order of `labels`."""
    order = {label: index for index, label in enumerate(labels)}
    rows = sorted(rows, key=lambda row: order.get(row["model"], len(order)))  # the list's order, however run
    info = machine_info(threads=1)
    counts = {status: sum(r["status"] == status for r in rows) for status in STATUSES}
    table = markdown_table(["model", "input", "status", "3rd-input error", "write-back s", "reason"],
                           [[r["model"], r.get("input", ""), r["status"],
                             f"{r['third_input_error']:.1e}" if "third_input_error" in r else "",
                             r.get("seconds", ""), r.get("message", "").replace("|", "/")[:600]] for r in rows])
    summary = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s] or s in ("written back", "refused"))
    markdown = (f"# {title}\n\n{machine_summary(info)}; one process per model; times indicative only.\n\n"
                f"`{command_line()}`\n\n{summary}, of {len(rows)}.\n\n{table}\n")
    return publish_results(results, {"machine": info, "counts": counts, "rows": rows}, markdown)


def breadth_main(description: str, script: str, results: str, title: str, names: list[str],
                 label: Callable[[str], str], one: Callable[[str], dict]) -> int:
    """The command line of a breadth script: every model of `names` (or those given), each in its own process
    running `one(name)`, the results file written after every row."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", help="comma-separated names (default: the script's list)")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of the existing results file and skip the models it holds")
    parser.add_argument("--redo", help="with --append: comma-separated names to measure again")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one model may take (default 600)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one model, its row on stdout
    args = parser.parse_args()
    if args.one:
        print("ROW " + json.dumps(one(args.one)), flush=True)
        return 0
    previous = RESULTS / f"{results}.json"
    rows = json.loads(previous.read_text())["rows"] if args.append and previous.exists() else []
    redo = {label(name) for name in (args.redo or "").split(",") if name}
    rows = [row for row in rows if row["model"] not in redo]
    done = {row["model"] for row in rows}
    labels = [label(name) for name in names]
    for name in args.models.split(",") if args.models else names:
        if label(name) in done:
            continue
        rows.append(run_in_process(script, name, label(name), args.timeout))
        print(f"{rows[-1]['model']}: {rows[-1]['status']}", flush=True)
        publish_breadth(results, title, rows, labels)  # after every row: a run stopped half-way keeps its rows
    return publish_breadth(results, title, rows, labels)
