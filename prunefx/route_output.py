"""The deliverable of the depth and width+depth routes (model.pt2, model.onnx, report.json and the console
lines), written one way whether `prunefx depth` asked for depth or `prunefx prune --allow-depth` took it after
width's refusal (prunefx/budget/meet.py). The width route's own is written by `prunefx prune`; report.json is
built by prunefx/reports/report_json.py for all three, in one shape."""

from __future__ import annotations

import time
from pathlib import Path

from prunefx.budget.outcome import BudgetOutcome
from prunefx.deliverable import write_model
from prunefx.graph import Program
from prunefx.graph.counted import counted
from prunefx.output import staged_folder
from prunefx.passes.core.pipeline import PipelineResult
from prunefx.passes.depth_to_budget import DepthChosen
from prunefx.passes.linearize_blocks import Linearized
from prunefx.passes.merge_blocks import Merged
from prunefx.reports import report_json
from prunefx.reports.budget import depth_done
from prunefx.reports.budget_text import search_lines
from prunefx.reports.prune_summary import macs_line
from prunefx.reports.pruning_sections import pruning_sections
from prunefx.reports.report_facts import Costs, ReportFacts
from prunefx.reports.report_json import output_files
from prunefx.reports.seconds import WRITE_STAGE, StageSeconds


def write_depth(output: Path, program: Program, result: PipelineResult, *, command: str,
                outcome: BudgetOutcome | None, calibration: str | None, opset: int, started: float,
                seconds: StageSeconds | None = None) -> None:
    """`result`: the choosing step (linearize_blocks, or depth_to_budget for a budget) and merge_blocks;
    `command`: the one whose report this is (depth, or prune when --allow-depth took the depth route);
    `seconds`: the command's stages so far, where it times them (report.json's `seconds`, else null)."""
    pruned = result.program
    choice, merged = result.steps[0][1], result.steps[1][1]
    linearized, dropped = _blocks(choice, budgeted=outcome is not None)
    branches = f", dropped {counted(len(dropped), 'residual branch', 'residual branches')}" if dropped else ""
    print(f"linearised {counted(len(linearized), 'block')} of {program.name}{branches} and made "
          f"{merged.facts_as(Merged).merges} merges in {time.perf_counter() - started:.1f} s; exporting to ONNX",
          flush=True)
    costs = Costs.of(program, pruned)
    with staged_folder(output) as staging:
        delivered = _written(staging, pruned, opset, seconds)
        linearize = choice.stats["linearize_blocks"] if outcome else choice.stats
        sections = pruning_sections(linearize=linearize, merge=merged.stats, delivered=delivered,
                                    seconds=seconds.as_dict() if seconds else None)
        report = report_json.write(staging, _facts(command, program.name, costs, output, delivered, calibration,
                                                   outcome, sections))
    budget = report["budget"]
    if budget:
        chosen = f"with {len(budget['blocks'])} of {counted(len(budget['ranking']), 'block')}"
        print("\n".join(search_lines(budget, candidate=lambda row: counted(row["n"], "block") + ", ", chosen=chosen)))
    print(f"blocks {', '.join(linearized or dropped)}{' (dropped)' if dropped else ''}")
    print(macs_line(costs.macs_before, costs.macs_after, int(program.example_inputs[0].shape[0])))
    print(f"wrote {output / 'model.pt2'}, {output / 'model.onnx'} and {output / 'report.json'}")


def _written(staging: Path, program: Program, opset: int, seconds: StageSeconds | None) -> dict:
    if seconds is None:
        return write_model(staging, program, opset=opset)
    with seconds.stage(WRITE_STAGE):
        return write_model(staging, program, opset=opset)


def _facts(command: str, model: str, costs: Costs, output: Path, delivered: dict, calibration: str | None,
           outcome: BudgetOutcome | None, sections: dict) -> ReportFacts:
    return ReportFacts(command, model, costs,
                       output_files(output, "model.pt2", "model.onnx", "report.json"), parity=delivered["parity"],
                       calibration=calibration, outcome=outcome, sections=sections)


def _blocks(choice, *, budgeted: bool) -> tuple[list[str], list[str]]:
    """(blocks linearised, blocks whose residual branch was dropped), from the choosing pass's typed facts."""
    if not budgeted:
        return choice.facts_as(Linearized).blocks, []
    depth = choice.facts_as(DepthChosen)
    return (depth.blocks, []) if depth.route == "merge" else ([], depth.blocks)


def write_joint(output: Path, program: Program, outcome: BudgetOutcome, *, calibration: str | None,
                opset: int, seconds: StageSeconds | None = None) -> None:
    """The width+depth route's deliverable: report.json keeps the refusals that led there."""
    chosen = outcome.result.program
    costs = Costs.of(program, chosen)
    with staged_folder(output) as staging:
        delivered = _written(staging, chosen, opset, seconds)
        sections = pruning_sections(delivered=delivered, seconds=seconds.as_dict() if seconds else None)
        report = report_json.write(staging, _facts("prune", program.name, costs, output, delivered, calibration,
                                                   outcome, sections))
    budget = report["budget"]
    print("\n".join(search_lines(budget, chosen=f"with {counted(len(budget.get('blocks') or []), 'block')} {depth_done(budget)} and "
                                                 f"{costs.macs_after / costs.macs_before:.3f} of the MACs")))
    print(macs_line(costs.macs_before, costs.macs_after, int(program.example_inputs[0].shape[0])))
    print(f"wrote {output / 'model.pt2'}, {output / 'model.onnx'} and {output / 'report.json'}")

