"""The deliverable of the depth and width+depth routes (model.pt2, model.onnx, report.json and the console
lines), written one way whether `prunefx depth` asked for depth or `prunefx prune --allow-depth` took it after
width's refusal (prunefx/budget/meet.py). The width route's own is written by `prunefx prune`."""

from __future__ import annotations

import time
from pathlib import Path

from prunefx.budget.outcome import BudgetOutcome
from prunefx.deliverable import write_model, write_report
from prunefx.graph import Program, count
from prunefx.output import staged_folder
from prunefx.passes.core.pipeline import PipelineResult
from prunefx.passes.depth_to_budget import DepthChosen
from prunefx.passes.linearize_blocks import Linearized
from prunefx.passes.merge_blocks import Merged
from prunefx.reports.budget_text import search_lines


def write_depth(output: Path, program: Program, result: PipelineResult, *, outcome: BudgetOutcome | None,
                calibration: str | None, opset: int, started: float) -> None:
    """`result`: the choosing step (linearize_blocks, or depth_to_budget for a budget) and merge_blocks."""
    pruned = result.program
    choice, merged = result.steps[0][1], result.steps[1][1]
    linearized, dropped = _blocks(choice, budgeted=outcome is not None)
    print(f"linearised {len(linearized)} blocks of {program.name}"
          f"{f', dropped {len(dropped)} residual branches' if dropped else ''} and made "
          f"{merged.facts_as(Merged).merges} merges in {time.perf_counter() - started:.1f} s; exporting to ONNX",
          flush=True)
    before, after = count(program), count(pruned)
    budget = outcome.budget_entry() if outcome else None
    route = outcome.route_entry() if outcome else None
    with staged_folder(output) as staging:
        delivered = write_model(staging, pruned, opset=opset)
        write_report(staging, {"model": program.name, "macs_before": before.macs, "macs_after": after.macs,
                               "params_before": before.params, "params_after": after.params,
                               "calibration": calibration, "budget": budget,
                               "linearize_blocks": choice.stats["linearize_blocks"] if outcome else choice.stats,
                               "merge_blocks": merged.stats, **delivered, **({"route": route} if route else {})})
    if budget:
        chosen = f"with {len(budget['blocks'])} of {len(budget['ranking'])} blocks"
        print("\n".join(search_lines(budget, candidate="{n} blocks, ", chosen=chosen)))
    print(f"blocks {', '.join(linearized or dropped)}{' (dropped)' if dropped else ''}")
    print(f"MACs   {before.macs / 1e6:.1f} M -> {after.macs / 1e6:.1f} M ({after.macs / before.macs:.3f})")
    print(f"wrote {output / 'model.pt2'}, {output / 'model.onnx'} and {output / 'report.json'}")


def _blocks(choice, *, budgeted: bool) -> tuple[list[str], list[str]]:
    """(blocks linearised, blocks whose residual branch was dropped), from the choosing pass's typed facts."""
    if not budgeted:
        return choice.facts_as(Linearized).blocks, []
    depth = choice.facts_as(DepthChosen)
    return (depth.blocks, []) if depth.route == "merge" else ([], depth.blocks)


def write_joint(output: Path, program: Program, outcome: BudgetOutcome, *, calibration: str | None,
                opset: int) -> None:
    """The width+depth route's deliverable: report.json keeps the refusals that led there."""
    chosen = outcome.result.program
    before, after = count(program), count(chosen)
    budget = outcome.budget_entry()
    with staged_folder(output) as staging:
        delivered = write_model(staging, chosen, opset=opset)
        write_report(staging, {
            "model": program.name, "macs_before": before.macs, "macs_after": after.macs,
            "params_before": before.params, "params_after": after.params, "calibration": calibration,
            "budget": budget, "route": outcome.route_entry(), **delivered})
    print("\n".join(search_lines(budget, chosen=f"with {len(budget.get('blocks') or [])} blocks merged and "
                                                 f"{after.macs / before.macs:.3f} of the MACs")))
    print(f"MACs   {before.macs / 1e6:.1f} M -> {after.macs / 1e6:.1f} M ({after.macs / before.macs:.3f})")
    print(f"wrote {output / 'model.pt2'}, {output / 'model.onnx'} and {output / 'report.json'}")
