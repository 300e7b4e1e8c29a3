"""Write every model of tests/test_channel_removal.py and every structural case of
tests/test_structural_cases.py back into its own module after pruning to 0.5 of the MACs, and record
which are written back (and checked here again on a third input) and which are refused, with the reason.

    .venv/bin/python benchmarks/write_back_coverage.py [--models torchvision:resnet18,...] [--no-cases] [--append]
        [--redo refused]   (with --append: measure the refused rows again, keep the others)

Models: remove_channels(macs=0.5, strict=False), default importance (l2) and rounding (8); structural
cases: round_to=1, as their own test prunes them. Times are wall clock on a shared, loaded machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch
from common import RESULTS, command_line, machine_info, machine_summary, markdown_table, publish_results

from prunefx.graph import capture
from prunefx.graph.errors import PrunefxError, first_line
from prunefx.interop.write_back import to_module
from prunefx.passes.remove_channels import remove_channels

TESTS = Path(__file__).resolve().parents[1] / "tests"


def load_test_module(name: str):
    spec = importlib.util.spec_from_file_location(name, TESTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The cases, how they are built and the third-input check are the write-back test's own.
CASES = load_test_module("test_write_back")


def write_back_one(name: str, model, inputs, round_to: int, config: bool = True) -> dict:
    """Prune `model` to half its MACs and write it back (`config`: to_module's), its row."""
    row = {"model": name}
    try:
        program = capture(model, inputs, name=name).eval()
        remove_channels(program, config={"macs": 0.5, "round_to": round_to, "strict": False})
    except PrunefxError as error:
        return {**row, "status": "not pruned", "message": first_line(error)}
    pruned = time.perf_counter()
    try:
        module = to_module(program, model, config=config)
    except PrunefxError as error:
        return {**row, "status": "refused", "message": str(error), "seconds": round(time.perf_counter() - pruned, 1)}
    return {**row, "status": "written back", "third_input_error": CASES.third_input_error(program, module, inputs),
            "seconds": round(time.perf_counter() - pruned, 1)}


def publish(rows: list[dict]) -> int:
    info = machine_info(threads=torch.get_num_threads())
    counts = {status: sum(r["status"] == status for r in rows) for status in ("written back", "refused", "not pruned")}
    table = markdown_table(["model", "status", "3rd-input error", "write-back s", "reason"],
                           [[r["model"] + (" *" if r.get("measured_again") else ""), r["status"],
                             f"{r['third_input_error']:.1e}" if "third_input_error" in r else "",
                             r.get("seconds", ""), r.get("message", "").replace("|", "/")] for r in rows])
    markdown = (f"# Write-back coverage (pruned to 0.5 of the MACs)\n\n{machine_summary(info)}; machine shared with "
                f"other work, times indicative only.\n\n`{command_line()}`\n\n"
                f"{counts['written back']} written back, {counts['refused']} refused, {counts['not pruned']} "
                f"not pruned (nothing prunable), of {len(rows)}.{_again(rows)}\n\n{table}\n")
    return publish_results("write_back_coverage", {"machine": info, "counts": counts, "rows": rows}, markdown)


def _again(rows: list[dict]) -> str:
    commands = sorted({r["measured_again"] for r in rows if r.get("measured_again")}, key=str)
    if not commands:
        return ""
    return (f" The {sum(bool(r.get('measured_again')) for r in rows)} rows marked * were measured again by "
            f"{' and then by '.join(f'`{c}`' for c in commands)}; the others are those of the run before, on a "
            "tree whose write-back of them the change since does not touch.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated references (default: all of test_channel_removal)")
    parser.add_argument("--no-cases", action="store_true", help="leave out the structural cases")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of the existing results file and skip the models it holds")
    parser.add_argument("--redo", choices=("refused", "written back", "not pruned"),
                        help="with --append: measure again the rows of the existing results with this status")
    args = parser.parse_args()
    previous = RESULTS / "write_back_coverage.json"
    rows = json.loads(previous.read_text())["rows"] if args.append and previous.exists() else []
    done = {row["model"] for row in rows if row["status"] != args.redo}
    jobs = []
    if not args.no_cases:  # the structural cases first: small and quick
        structural = CASES.cases
        jobs += [(f"case:{name}", lambda n=name: CASES.structural_case(n), 1)
                 for name in sorted(structural.EXACT_CASES) + sorted(structural.BLOCKED_CASES)]
    # the models of the test's main lane first, then the rest of the zoo
    models = args.models.split(",") if args.models else sorted(CASES.removal.MODELS,
                                                              key=lambda r: r not in CASES.MAIN_MODELS)
    jobs += [(reference, lambda r=reference: CASES.model_case(r), 8) for reference in models]
    for name, build, round_to in jobs:
        if name in done:
            continue
        row = write_back_one(name, *build(), round_to=round_to)
        at = next((i for i, r in enumerate(rows) if r["model"] == name), None)
        if at is None:
            rows.append(row)
        else:  # a row measured again keeps its place
            rows[at] = {**row, "measured_again": command_line()}
        publish(rows)  # after every row: a long run stopped half-way keeps what it measured
    return publish(rows)


if __name__ == "__main__":
    raise SystemExit(main())
