"""Width and depth together: what `prunefx prune --speedup S --allow-depth` does when neither alone meets S.

budget_route.py takes the depth route after width's refusal. Depth can fail in two ways, and both leave
room for a mix of the two dimensions:

- whole blocks step past the budget's window (ConvNeXtV2-atto at 3x: 8 blocks gave 2.89x, 9 gave 3.87x,
  above 3.45x): depth searches for S² / U (U: the overshooting step), as far below S as the step went above
  it, and width removes the channels that close the rest, which width can do even where it could not reach
  S alone;
- every block depth can take is not enough (DeiT-S at 3x: depth's best 2.10x, width's 3.51x on an interval
  reaching below 3): depth and width split the budget evenly in log-speed-up (choose_for_budget's default).

Both run choose_for_budget's width + depth combination alone (passes/budget_candidates.py): depth ranks and
merges blocks, then the width search measures the whole stack against the dense model, so what is accepted
is the delivered network, on the same confirmed interval and window as every budget. report.json says
`route: width+depth` and keeps the two refusals that led there. When the mix fails too, the one-line refusal
gives each dimension's best and names `compress --speedup`, which adds INT8.
"""

from __future__ import annotations

from pathlib import Path

from prunefx import cli_options
from prunefx.data.calibration import calibration_data
from prunefx.deliverable import write_model, write_report
from prunefx.graph import Program, count
from prunefx.graph.errors import PrunefxError
from prunefx.output import staged_folder
from prunefx.passes.budget_search import BudgetUnreachable, budget_text, speedup_text, unreachable_in
from prunefx.passes.choose_for_budget import choose_for_budget
from prunefx.passes.pipeline import Pipeline
from prunefx.reports.budget_text import search_lines


def take_joint_route(args, width: BudgetUnreachable, depth: BudgetUnreachable, program: Program) -> int:
    """choose_for_budget's width + depth mix on the budget of `args` (prunefx prune's), written to --output."""
    share = _mirrored_share(args, depth)
    said = f"{share:.3f} of the budget" if share else "an even split in log-speed-up"
    print(f"{depth}; taking width and depth together (--allow-depth): depth searches for {said}", flush=True)
    calibration = calibration_data(args.calibrate, program.example_inputs[0], args.calibration_images)
    config = {"speedup": args.speedup, "latency_ms": args.latency_ms, "dimensions": ["width", "depth"],
              "combinations": [["width", "depth"]], "depth_share": share, "tolerance": args.tolerance,
              "max_candidates": args.max_candidates, "confirm": args.confirm,
              "recalibrate": args.recalibrate is not False, "latency": cli_options.budget_latency(args),
              "calibration": calibration.batches, "width": _width_options(args)}
    try:
        result = Pipeline([(choose_for_budget, config)], verify="full").run(program)
    except PrunefxError as error:
        mixed = unreachable_in(error)
        if mixed is None:
            raise
        reached = f"{'overshot at' if depth.overshot else 'best'} {speedup_text(depth.best)}" if depth.best else depth
        raise PrunefxError(f"cannot reach {budget_text(args.speedup, args.latency_ms)}: width's best was "
                           f"{speedup_text(width.best)}, depth's {reached}, and together: {mixed}; "
                           f"`prunefx compress {args.model}` with the same budget adds INT8") from None
    chosen = result.stats()["choose_for_budget"]["candidates"][0]
    budget = {"budget": budget_text(args.speedup, args.latency_ms), "met": True,
              **{key: value for key, value in chosen.items() if key not in ("width_trace", "proxy", "met")},
              "trace": chosen.get("width_trace") or [], "depth_share": share, **cli_options.measured_on(args)}
    _write(Path(args.output), program, result.program, budget, width, depth, calibration.description, args.opset)
    return 0


def _mirrored_share(args, depth: BudgetUnreachable) -> float | None:
    """After an overshoot, depth searches for S / U of the budget (U: the overshooting step's speed-up), as far
    below S as the step went above it, so that the fewest blocks that meet the share stop short of the
    overshooting step and width has room to close the rest; else None (choose_for_budget's even split)."""
    if not depth.overshot or depth.best is None:
        return None
    wanted = args.speedup if args.speedup is not None else depth.best.dense_ms / args.latency_ms
    return min(wanted / depth.best.speedup, 1.0)


def _width_options(args) -> dict:
    """remove_channels' options as `prunefx prune` set them (None: the width search's own default)."""
    # the command above this module, loaded by the time it calls here
    from prunefx.commands.prune import OPTIONS

    return {name: value for name, value in cli_options.pass_config(args, OPTIONS).items() if value is not None}


def _write(output: Path, program: Program, chosen: Program, budget: dict, width: BudgetUnreachable,
           depth: BudgetUnreachable, calibration: str, opset: int) -> None:
    before, after = count(program), count(chosen)
    with staged_folder(output) as staging:
        delivered = write_model(staging, chosen, opset=opset)
        write_report(staging, {
            "model": program.name, "macs_before": before.macs, "macs_after": after.macs,
            "params_before": before.params, "params_after": after.params, "calibration": calibration,
            "budget": budget, "route": {"taken": "width+depth", "width": _refusal(width), "depth": _refusal(depth)},
            **delivered})
    print("\n".join(search_lines(budget, chosen=f"with {len(budget.get('blocks') or [])} blocks merged and "
                                                 f"{after.macs / before.macs:.3f} of the MACs")))
    print(f"MACs   {before.macs / 1e6:.1f} M -> {after.macs / 1e6:.1f} M ({after.macs / before.macs:.3f})")
    print(f"wrote {output / 'model.pt2'}, {output / 'model.onnx'} and {output / 'report.json'}")


def _refusal(error: BudgetUnreachable) -> dict:
    return {"refusal": str(error), **(error.best.to_dict() if error.best else {})}
