"""`prunefx prune`'s measured budget (--speedup, --latency-ms): prunefx.meet_budget called with the command
line's measurement and routes (--allow-depth), and a refusal in one line that names the route that can go
further."""

from __future__ import annotations

from prunefx.budget import BudgetOutcome, BudgetUnreachable, depth_blocks, meet_budget
from prunefx.cli import options as cli_options
from prunefx.data.calibration import Calibration
from prunefx.graph.counted import counted
from prunefx.graph.errors import PrunefxError


def meet_for_command_line(args, program, calibration: Calibration | None, width: dict, device,
                          measurer=None) -> BudgetOutcome:
    """prunefx.meet_budget on the command line's budget: width, and with --allow-depth depth and both; a
    refusal says, in one line, which route can go further. `width`: remove_channels' options for the width search;
    `measurer`: the command line's (budget_measurer), a new one by default."""
    try:
        _, outcome = meet_budget(
            program, speedup=args.speedup, latency_ms=args.latency_ms, measurement=cli_options.measurement(args),
            measurer=measurer or cli_options.budget_latency(args), calibration=calibration.batches if calibration and args.calibrate else None,
            allow_depth=args.allow_depth, tolerance=args.tolerance, confirm=args.confirm,
            max_candidates=args.max_candidates, recalibrate=args.recalibrate is not False, width=width,
            depth={"recalibrate": True} if args.recalibrate else None,  # as `prunefx depth --recalibrate`
            log=lambda line: print(line, flush=True), choose_by=args.choose_by, device=device)
    except BudgetUnreachable as error:
        if error.dimension == "width":
            raise width_refusal(error, args, program) from None
        if error.dimension == "width+depth":
            raise PrunefxError(f"{error}; `prunefx compress {args.model} {budget_flag(args)} --data DATA -o DIR` adds INT8") from None
        raise
    return outcome


def budget_flag(args) -> str:
    """The budget as the user typed it: `--speedup S` or `--latency-ms L`."""
    return f"--speedup {args.speedup:g}" if args.speedup is not None else f"--latency-ms {args.latency_ms:g}"


def width_refusal(width: BudgetUnreachable, args, program) -> PrunefxError:
    """One line: what width reached, and the route that can go further (see the module docstring)."""
    blocks, how = depth_blocks(program)
    flag = budget_flag(args)
    data = args.calibrate or "DATA"  # the user's own where they gave it
    if blocks:
        # a noisy timing did not show that width cannot: the quieter run comes first
        cannot = "if a quieter run confirms that width alone cannot, depth" if width.noisy else \
            "width alone cannot, but depth"
        some = counted(blocks, "block")
        route = (f"{cannot} can {how} up to {some} of {program.name}: add --allow-depth"
                 f"{'' if args.calibrate else ' --calibrate DATA'}, or run `prunefx depth {args.model} {flag} "
                 f"--calibrate {data}`, or `prunefx compress {args.model} {flag} --data DATA -o DIR` (width, depth "
                 "and INT8 together)")
    else:
        route = (f"width alone cannot, and no block of {program.name} merges or drops (no depth route); "
                 f"`prunefx compress {args.model} {flag} --data DATA -o DIR` adds INT8")
    return PrunefxError(f"{width}; {route}")


def check_allow_depth(args) -> None:
    if args.allow_depth and (args.speedup is None and args.latency_ms is None):
        raise PrunefxError("--allow-depth applies to a budget: give --speedup or --latency-ms")
    if args.allow_depth and (not args.calibrate or args.part):
        raise PrunefxError("--allow-depth needs --calibrate DATA (depth ranks the blocks by their damage on it) "
                           "and a whole model (no --part)")
    if args.allow_depth and args.module:  # merged or dropped blocks have no module code to write back into
        raise PrunefxError("--module writes channel pruning back into the model's code, which the depth route's "
                           "merged or dropped blocks cannot be: give one of --module and --allow-depth")
