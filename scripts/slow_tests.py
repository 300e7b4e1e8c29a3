"""Write tests/slow_tests.txt from a pytest `--durations=0` log: the tests `make test-fast` leaves out.

`make test` runs every test; `make test-fast` is the development lane and must stay under four minutes
on two cores. Marking each heavy test by hand drifts as tests change, so the lane is chosen from a
measured run instead: a test goes in the list when its call, or the setup of a fixture it pays for
first, took longer than `--threshold` seconds. A module whose tests share an expensive module-scoped
fixture is listed whole (otherwise the next test in it would pay the setup inside the fast lane).

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -n 2 -m "not timing and not zoo" --durations=0 \
        --durations-min=0.3 > durations.log
    .venv/bin/python scripts/slow_tests.py durations.log [--threshold 1.5]
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

LIST = Path(__file__).resolve().parents[1] / "tests" / "slow_tests.txt"
LINE = re.compile(r"^\s*([\d.]+)s (call|setup|teardown)\s+(\S+)$")


def durations(log: Path) -> list[tuple[float, str, str]]:
    found = []
    for line in log.read_text().splitlines():
        match = LINE.match(line)
        if match:
            found.append((float(match.group(1)), match.group(2), match.group(3)))
    if not found:
        raise SystemExit(f"{log}: no `--durations` lines (run pytest with --durations=0)")
    return found


def slow_entries(measured: list[tuple[float, str, str]], threshold: float) -> list[str]:
    """Node ids whose call exceeded the threshold, and whole modules where a fixture setup did."""
    modules = {node.split("::")[0] for seconds, phase, node in measured if phase == "setup" and seconds > threshold}
    tests = {node for seconds, phase, node in measured
             if phase == "call" and seconds > threshold and node.split("::")[0] not in modules}
    return sorted(modules) + sorted(tests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--threshold", type=float, default=1.5, help="seconds (default 1.5)")
    args = parser.parse_args()
    measured = durations(args.log)
    entries = slow_entries(measured, args.threshold)
    total = defaultdict(float)
    for seconds, _, node in measured:
        total["slow" if any(node == e or node.startswith(e + "::") for e in entries) else "fast"] += seconds
    header = (f"# Written by scripts/slow_tests.py from a measured run (threshold {args.threshold} s): marked `slow`\n"
              f"# by tests/conftest.py, so `make test-fast` leaves them out; `make test` runs them. Listed tests took\n"
              f"# {total['slow']:.0f} s of that run's test time, the rest (over 0.3 s each) {total['fast']:.0f} s.\n")
    LIST.write_text(header + "".join(entry + "\n" for entry in entries))
    print(f"{len(entries)} entries, {total['slow']:.0f} s slow / {total['fast']:.0f} s fast -> {LIST}")


if __name__ == "__main__":
    main()
