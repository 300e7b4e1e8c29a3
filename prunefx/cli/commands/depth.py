"""prunefx depth MODEL --blocks K -o DIR: one-shot depth pruning (UPDP's pruned form, then exact merging).

The K least harmful blocks (or those named with --block) are linearised and merge_blocks folds what became
affine; --speedup S or --latency-ms T instead picks the fewest blocks whose merged network meets the budget
(prunefx.meet_budget's depth route). Writes model.pt2, model.onnx and report.json. The options, the budget
and the report: see docs/reference/cli.md, 'depth', and docs/latency-budgets.md.
"""

from __future__ import annotations

import time

from prunefx.budget import BudgetUnreachable, meet_budget
from prunefx.cli import flags
from prunefx.cli import options as cli_options
from prunefx.cli.arguments.depth import RUNS
from prunefx.cli.prune_budget import budget_flag
from prunefx.device import on_device, resolve_device
from prunefx.graph.depth.blocks import find_blocks, in_block
from prunefx.graph.errors import PrunefxError
from prunefx.image_statistics import calibration_read
from prunefx.loading import program_from_args
from prunefx.output_paths import check_output_folder
from prunefx.passes.core.pipeline import Pipeline
from prunefx.passes.depth_to_budget import DepthToBudgetConfig
from prunefx.passes.linearize_blocks import linearize_blocks, mergeable_blocks
from prunefx.passes.merge_blocks import MEASURED_SLOWER, merge_blocks
from prunefx.route_output import write_depth

NAME = "depth"


def run(args) -> int:
    if not args.list and not args.output:
        raise PrunefxError("give -o DIR: the folder for model.pt2, model.onnx and report.json")
    device = resolve_device(args.device)  # a GPU that is missing is refused before anything loads
    output = check_output_folder(args.output) if not args.list else None
    budget = args.speedup is not None or args.latency_ms is not None
    cli_options.check_budget_backend(args, budgeted=budget, measures=args.measure)
    if not budget:
        flags.refuse_unread(args, {name: DepthToBudgetConfig.default(name) for name in ("confirm", "tolerance")},
                                  "only a budget's search reads these: give --speedup or --latency-ms")
        if not args.measure:
            flags.refuse_unread(args, flags.measurement_defaults(RUNS),
                                      "only timed merges read these, and --no-measure times none")
    program = program_from_args(args, writes_onnx=not args.list).eval()  # --list writes nothing
    if args.list:
        _list_blocks(program, args.max_kernel_growth)
        return 0
    captured = int(program.example_inputs[0].shape[0])
    if args.measure and args.batch > captured:  # refused now, not once the blocks are linearised and timed
        raise PrunefxError(f"--batch {args.batch}: what is timed is cut from the batch {program.name} is "
                           f"captured at ({captured}); capture it at a larger one (--input-shape) or give a smaller "
                           "--batch")
    if (args.count is not None or budget) and not args.calibrate:
        raise PrunefxError("--blocks, --speedup and --latency-ms choose blocks by their damage on data: give "
                           "--calibrate DATA (or name the blocks with --block)")
    if args.recalibrate and not args.calibrate:
        raise PrunefxError("--recalibrate needs --calibrate DATA")
    if args.block:
        _check_named_blocks_merge(program, args.block, calibrated=bool(args.calibrate),
                                  max_kernel_growth=args.max_kernel_growth)
    calibration = (calibration_read(args, program, program.example_inputs[0]).on(device)
                   if args.calibrate else None)
    started = time.perf_counter()
    outcome = None
    # held until model.onnx is written: the file its confirmation exported of the chosen model is copied
    with cli_options.budget_measurer(args, budgeted=bool(budget and calibration is not None)) as measurer:
        if measurer is not None:  # the library's depth route: depth_to_budget, then merge_blocks
            try:
                _, outcome = meet_budget(
                    program, speedup=args.speedup, latency_ms=args.latency_ms,
                    measurement=cli_options.measurement(args), measurer=measurer, calibration=calibration.batches,
                    routes=("depth",), tolerance=args.tolerance, confirm=args.confirm,
                    depth={"recalibrate": args.recalibrate, "max_kernel_growth": args.max_kernel_growth},
                    device=device)
            except BudgetUnreachable as refusal:  # the commands that go further, as prune's refusal names them
                raise PrunefxError(f"{refusal}; `prunefx prune {args.model} {budget_flag(args)} --allow-depth "
                                   "--calibrate DATA` tries width, then depth, then both together") from None
            result = outcome.result
        else:  # one verified Pipeline, as in the API: merge_blocks promises exactness and the Pipeline checks it
            with on_device(program, device) as placed:  # the dense Program goes back even when a pass fails
                result = Pipeline([_choice_step(args, calibration), _merge_step(args)], verify="full").run(program)
                _refuse_blocks_left_unmerged(result, args.backend)
                placed.home(result.program)  # written from the CPU
        assert output is not None  # checked above: only --list writes nothing
        write_depth(output, program, result, command=NAME, outcome=outcome,
                    calibration=calibration.description if calibration else None, opset=args.opset, started=started)
    return 0


def _check_named_blocks_merge(program, names: list[str], *, calibrated: bool, max_kernel_growth: float) -> None:
    """A named block that does not become affine, or whose merge saves no MACs (its kernels would grow past
    --max-kernel-growth), would lose its non-linearities for nothing: the accuracy goes and no speed comes.
    Refused with its reason (unknown names: linearize_blocks lists the blocks), as is one whose layer norms would
    become batch norms with no data to estimate their statistics."""
    blocks = {block.name: block for block in find_blocks(program.module)}
    named = [blocks[name] for name in names if name in blocks]
    worth = {block.name for block in mergeable_blocks(program, max_kernel_growth, [b for b in named if b.affine])}
    for block in named:
        name = block.name
        if not block.affine:
            raise PrunefxError(f"--block {name} cannot be merged once linearised ({block.reason}): its "
                               "non-linearities would go for no speed; --list shows the blocks that can")
        if name not in worth:
            raise PrunefxError(f"--block {name} would merge into no fewer MACs at --max-kernel-growth "
                               f"{max_kernel_growth:g}: its non-linearities would go for no speed; --list shows the "
                               "blocks that can")
        if block.layer_norms and not calibrated:
            raise PrunefxError(f"--block {name} turns {len(block.layer_norms)} layer norm(s) into batch norms, whose "
                               "statistics are estimated on data: give --calibrate DATA")


def _refuse_blocks_left_unmerged(result, backend: str) -> None:
    """A chosen block whose merge measured no faster than its layers kept apart has lost its non-linearities for no
    speed: the model would be less accurate and no faster. Nothing is written; the line says what to do instead."""
    slower = [entry for entry in result.steps[1][1].stats["skipped"] if entry["reason"].startswith(MEASURED_SLOWER)]
    nodes = {node.name: node for node in result.program.graph.nodes}  # a refused merge's layers are still there
    left = [nodes[name] for entry in slower for name in entry["nodes"] if name in nodes]
    lost = [block for block in result.steps[0][1].stats["chosen"] if any(in_block(node, block) for node in left)]
    if lost:
        raise PrunefxError(f"merging block(s) {', '.join(lost)} measured no faster on {backend} than their layers kept "
                           "apart: their non-linearities would go for no speed, so nothing is written; merge them "
                           "regardless with --no-measure, choose other blocks (--list), or give a measured budget "
                           "(--speedup)")


def _choice_step(args, calibration):
    """linearize_blocks for a count or named blocks."""
    which = {"count": args.count} if args.count is not None else {"blocks": args.block}
    return linearize_blocks, {"mode": "abrupt", "calibration": calibration.batches if calibration else None,
                              "recalibrate": args.recalibrate, "max_kernel_growth": args.max_kernel_growth, **which}


def _merge_step(args):
    """merge_blocks, each merge timed on --backend unless --no-measure."""
    measure = cli_options.pass_measure(args) if args.measure else None
    return merge_blocks, {"max_kernel_growth": args.max_kernel_growth, "measure": measure}


def _list_blocks(program, max_kernel_growth: float) -> None:
    blocks = find_blocks(program.module)
    if not blocks:
        print(f"{program.name}: no candidate blocks (a residual block, or a run of layers between activations, "
              "that could become one affine layer)")
        return
    worth = {block.name for block in mergeable_blocks(program, max_kernel_growth, [b for b in blocks if b.affine])}
    for block in blocks:
        note = (f"   (cannot merge: {block.reason})" if not block.affine else
                "" if block.name in worth else
                f"   (merges into no fewer MACs at --max-kernel-growth {max_kernel_growth:g})")
        print(f"{block.name:<30} {block.kind:<9} {len(block.activations)} activation(s)"
              f"{f', {len(block.layer_norms)} layer norm(s)' if block.layer_norms else ''}{note}")
