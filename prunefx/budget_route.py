"""Width, then depth: what `prunefx prune --speedup S` does when width alone cannot reach the budget.

Some time does not fall with the MACs that channel pruning removes (norms, GRN, depthwise convolutions,
memory-bound layers: ConvNeXtV2-atto reached 1.81x at 0.19 of the MACs for a 2x budget), while merging
whole blocks (depth, UPDP) removes it with the block. So when prune_to_budget is out of reach:

- without `--allow-depth`, the refusal is one line: width's best confirmed interval, and the route that
  can take the model further: `--allow-depth`, `prunefx depth --speedup S`, or `prunefx compress --speedup
  S` (width, depth and INT8 chosen together). A model with no block depth can take is told so;
- with `--allow-depth` (and `--calibrate DATA`, which ranks the blocks), the same model, budget, backend and
  measurement go to `prunefx depth` (passes/depth_to_budget.py: the fewest least harmful blocks whose
  merged network meets the budget, accepted on the same interval's lower bound; when no block merges, as
  with ConvNeXtV2's GRN, whole residual branches are dropped instead); its report.json says
  `route: depth` and keeps width's refusal. If depth cannot either (its fewest blocks that meet the budget
  overshoot it by more than `--tolerance`, or every block it can take is not enough), width and depth are
  taken together (prunefx/joint_route.py); if that fails too, the one-line refusal gives the best each
  reached and names `compress --speedup` (INT8 as well).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prunefx.graph import Program
from prunefx.graph.depth.blocks import find_blocks
from prunefx.graph.depth.branch_drop import droppable_blocks
from prunefx.graph.errors import PrunefxError
from prunefx.joint_route import take_joint_route
from prunefx.passes.budget_search import BudgetUnreachable, unreachable_in


def _budget_flag(args) -> str:
    return f"--speedup {args.speedup:g}" if args.speedup is not None else f"--latency-ms {args.latency_ms:g}"


def mergeable_blocks(program: Program) -> int:
    """How many blocks become affine once linearised (the ones depth can merge; ConvNeXtV2's GRN is not)."""
    return sum(block.affine for block in find_blocks(program.module))


def depth_blocks(program: Program) -> tuple[int, str]:
    """(how many blocks the depth route can take, and how): merged when any block becomes affine, else
    dropped whole residual branches (graph/depth/branch_drop.py; depth_to_budget's route "auto")."""
    mergeable = mergeable_blocks(program)
    return (mergeable, "merge") if mergeable else (len(droppable_blocks(program)), "drop")


def width_refusal(width: BudgetUnreachable, args, program: Program) -> PrunefxError:
    """One line: what width reached, and the route that can go further (see the module docstring)."""
    blocks, how = depth_blocks(program)
    flag = _budget_flag(args)
    if blocks:
        route = (f"width alone cannot, but depth can {how} up to {blocks} blocks of {program.name}: add "
                 f"--allow-depth --calibrate DATA, or run `prunefx depth {args.model} {flag} --calibrate DATA`, "
                 f"or `prunefx compress {args.model} {flag}` (width, depth and INT8 together)")
    else:
        route = (f"width alone cannot, and no block of {program.name} merges or drops (no depth route); "
                 f"`prunefx compress {args.model} {flag}` adds INT8")
    return PrunefxError(f"{width}; {route}")


def depth_arguments(args) -> argparse.Namespace:
    """`prunefx depth`'s arguments for the same model, budget, data, backend and measurement as `args`."""
    from prunefx.commands import depth  # the command layer above: imported when the route is taken

    parser = argparse.ArgumentParser()
    depth.add_arguments(parser)
    depth_args = parser.parse_args(_budget_flag(args).split())
    shared = ("model", "weights", "input_shape", "output", "calibrate", "calibration_images", "threads", "runs",
              "backend", "precision", "trtexec", "opset", "confirm", "tolerance", "speedup", "latency_ms")
    for name in shared:
        setattr(depth_args, name, getattr(args, name))
    return depth_args


def take_depth_route(args, width: BudgetUnreachable, program: Program) -> int:
    """`prunefx depth` on the same budget after width's refusal; a refusal there names both dimensions."""
    from prunefx.commands import depth

    if not depth_blocks(program)[0]:
        raise width_refusal(width, args, program)
    print(f"{width}; width alone cannot: taking the depth route (--allow-depth)", flush=True)
    try:
        status = depth.run(depth_arguments(args))
    except PrunefxError as error:
        reached = unreachable_in(error)
        if reached is None:
            raise
        return take_joint_route(args, width, reached, program)  # depth alone could not: both together
    _mark_route(Path(args.output), width)
    return status


def _mark_route(output: Path, width: BudgetUnreachable) -> None:
    """report.json (just written by `depth`) says which route met the budget and keeps width's refusal."""
    path = output / "report.json"
    report = json.loads(path.read_text())
    report["route"] = {"taken": "depth", "width": {"refusal": str(width), **width.best.to_dict()}}
    path.write_text(json.dumps(report, indent=2))
