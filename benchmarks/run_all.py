"""Run every benchmark script in benchmarks/ in turn (what `make bench` does).

A benchmark is any benchmarks/*.py except this file, helper modules (common.py) and files whose
name starts with '_'. Each runs with this same interpreter from the repository root, in name order,
with its output shown as it comes; the first failure stops the run with that script's exit status.
One summary line per script is printed at the end.

    .venv/bin/python benchmarks/run_all.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
HELPERS = {"common.py"}


def benchmark_scripts() -> list[Path]:
    return sorted(path for path in BENCHMARKS.glob("*.py")
                  if path.name != Path(__file__).name and path.name not in HELPERS
                  and not path.name.startswith("_"))


def main() -> int:
    scripts = benchmark_scripts()
    summary: list[str] = []
    status = 0
    for script in scripts:
        print(f"=== {script.name}", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(script)], cwd=BENCHMARKS.parent).returncode
        seconds = time.perf_counter() - start
        summary.append(f"{'ok' if code == 0 else 'FAILED':<6} {script.name:<40} {seconds:7.1f} s"
                       + ("" if code == 0 else f"  (exit status {code})"))
        if code != 0:
            status = code
            break
    print(f"\n{len(summary)} of {len(scripts)} benchmark(s) run:")
    print("\n".join(summary))
    if status:
        print(f"stopped at the first failure; {len(scripts) - len(summary)} not run", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
