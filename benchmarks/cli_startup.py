"""How long `prunefx CMD --help` and a mistyped flag take to answer, per command, beside what importing torch costs.

    .venv/bin/python benchmarks/cli_startup.py [--runs 5]

Each case is its own process (the venv's `prunefx` entry point), timed from its start to its exit; the median of
`--runs`, the cases taken round by round. The flags are built without importing torch, onnx, onnxruntime or numpy
(tests/test_cli_help_is_light.py holds that): `python -c "import torch"` in the same run is the cost that avoids.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import command_line, machine_info, machine_summary, markdown_table, write_results

BIN = Path(sys.executable).parent
COMMANDS = ("inspect", "prune", "depth", "quantize", "compress", "export", "bench", "profile", "check", "demo")


def cases() -> dict[str, list[str]]:
    found = {"prunefx --help": [str(BIN / "prunefx"), "--help"]}
    for name in COMMANDS:
        found[f"prunefx {name} --help"] = [str(BIN / "prunefx"), name, "--help"]
    found["prunefx prune MODEL --bogus"] = [str(BIN / "prunefx"), "prune", "torchvision:resnet18", "--bogus"]
    found["python -c 'import torch'"] = [sys.executable, "-c", "import torch"]
    return found


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    info = machine_info(runs=args.runs)
    commands = cases()
    timed: dict[str, list[float]] = {case: [] for case in commands}
    for _ in range(args.runs):  # round by round: a slow spell reaches every case alike
        for case, command in commands.items():
            timed[case].append(seconds(command))
    rows = [{"case": case, "median_s": statistics.median(values), "max_s": max(values)}
            for case, values in timed.items()]
    table = markdown_table(["case", "median s", "max s"],
                           [[f"`{r['case']}`", f"{r['median_s']:.2f}", f"{r['max_s']:.2f}"] for r in rows])
    markdown = (f"# How fast the command line answers\n\nProduced by `{command_line()}` on {info['date_utc']} UTC.\n\n"
                f"- Machine: {machine_summary(info)}.\n- Each case its own process, start to exit; median of "
                f"{args.runs} rounds.\n\n{table}\n")
    write_results("cli_startup", {"machine": info, "command": command_line(), "results": rows}, markdown)
    print(table)


if __name__ == "__main__":
    main()
