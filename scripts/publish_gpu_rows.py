"""Adds to the published GPU speed-ups (benchmarks/results/gpu_speedup.*) the rows of the last `make gpu-check`
(benchmarks/gpu_check/gpu_speedup.json) that they lack, each stamped with the code and date it was measured by.

A GPU session measures minutes of rows, and each session's code differs: the published file gathers the rows
of several checks on the same GPU, driver, torch and precision, a row kept until a full run replaces the file.
Rows the published file already holds stay as they are (one table per code would leave most cells empty), unless
they hold no figure (a failed row, a refused budget, a latency choice at other MACs than the defaults':
gpu_speedup.rows_held). Both
files are written whole; the skipped list loses the rows added.

    python scripts/publish_gpu_rows.py [--check FILE] [--published FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_speedup  # noqa: E402

from prunefx.graph.whole_files import write_whole  # noqa: E402

SAME = ("gpu", "driver", "torch", "precision")  # what must match for rows to stand in one table


def added_rows(published: dict, check: dict) -> dict[str, list[dict]]:
    """The check's rows, by report key, that `published` lacks (a failed row is never added)."""
    held = gpu_speedup.rows_held(published)
    stamp = {"code": check["machine"].get("code"), "date_utc": check["machine"].get("date_utc")}
    # a row without a figure that this very check measured (a refusal it published before) is not added again
    same = {(kind, row["model"], row["batch"]) for kind, key in gpu_speedup.ROWS.items()
            for row in published.get(key, []) if row.get("code") == stamp["code"]}
    return {key: [{**row, **stamp} for row in check.get(key, [])
                  if "error" not in row and (kind, row["model"], row["batch"]) not in held | same]
            for kind, key in gpu_speedup.ROWS.items()}


def merged(published: dict, check: dict) -> tuple[dict, int]:
    """`published` with the check's missing rows added and their skipped lines dropped; the count added."""
    differs = [key for key in SAME if published["machine"].get(key) != check["machine"].get(key)]
    if differs:
        raise SystemExit(f"publish_gpu_rows: the check ran on another {', '.join(differs)} than the published rows "
                         f"({', '.join(str(check['machine'].get(k)) for k in differs)}): rerun the whole benchmark")
    added = added_rows(published, check)
    names = {f"{row['model']}: {gpu_speedup.row_name(kind, row['batch'], gpu_speedup.BUDGETS)}"
             for kind, key in gpu_speedup.ROWS.items() for row in added[key]}
    result = {**published, **{key: _replaced(published.get(key, []), added[key]) for key in gpu_speedup.ROWS.values()}}
    result["skipped"] = [line for line in published.get("skipped", []) if line.split(" (")[0] not in names]
    return result, sum(map(len, added.values()))


def _replaced(rows: list[dict], added: list[dict]) -> list[dict]:
    """`rows` with `added` in place of those of the same model and batch (a row held without a figure: a
    failure, or a latency choice at other MACs), the others appended."""
    by_place = {(row["model"], row["batch"]): row for row in added}
    kept = [by_place.pop((row["model"], row["batch"]), row) for row in rows]
    return kept + list(by_place.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", type=Path, default=ROOT / "benchmarks" / "gpu_check" / "gpu_speedup.json")
    parser.add_argument("--published", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_speedup.json")
    args = parser.parse_args(argv)
    published = json.loads(args.published.read_text())
    result, count = merged(published, json.loads(args.check.read_text()))
    write_whole(args.published, json.dumps(result, indent=2) + "\n")
    write_whole(args.published.with_suffix(".md"), gpu_speedup.markdown(result))
    print(f"publish_gpu_rows: {count} rows added to {args.published}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
