"""`prunefx depth`'s flags (the command: prunefx/cli/commands/depth.py): linearize_blocks', merge_blocks' and
depth_to_budget's options, each flag made from its config field, and the shared ones."""

from __future__ import annotations

from prunefx.cli import flags
from prunefx.passes.budget.depth_config import DepthToBudgetConfig
from prunefx.passes.rewrites.linearize_config import LinearizeBlocksConfig
from prunefx.passes.rewrites.merge_config import MergeBlocksConfig

BUDGETS = ("speedup", "latency_ms")  # depth_to_budget's: measured on --backend at batch 1
RUNS = 50  # --runs' default: timed runs of each merge or budget candidate


def add_arguments(parser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    # --blocks K is linearize_blocks' count; --speedup S and --latency-ms T are depth_to_budget's budgets
    flags.add_pass_options(parser, LinearizeBlocksConfig, ("count",), flags={"count": "--blocks"}, group=which)
    flags.add_pass_options(parser, DepthToBudgetConfig, BUDGETS, group=which)
    which.add_argument("--block", action="append", metavar="NAME", help="a block to linearise (repeatable)")
    which.add_argument("--list", action="store_true", help="list the candidate blocks and exit")
    flags.add_calibration(parser, reads="needed by --blocks and --speedup (block damage) and for layer norms")
    flags.add_pass_options(parser, LinearizeBlocksConfig, ("recalibrate",))
    flags.add_pass_options(parser, MergeBlocksConfig, ("max_kernel_growth",))
    parser.add_argument("--no-measure", dest="measure", action="store_false",
                        help="merge wherever the MACs go down, without timing each merge on ONNX Runtime")
    flags.add_pass_options(parser, DepthToBudgetConfig, ("confirm", "tolerance"))
    flags.add_measurement(parser, runs=RUNS, what="the measurements (a budget's candidate that meets it is "
                                                      "confirmed with 4x the runs)")
    flags.add_budget_backend(parser, note="; merges without a budget are timed there too")
    flags.add_device(parser, runs="the block ranking, layer-norm statistics and batch-norm recalibration")
    flags.add_opset(parser)
    flags.add_output(parser, "model.pt2, model.onnx and report.json", required=False)
