"""`prunefx prune`'s flags (the command: prunefx/cli/commands/prune.py): remove_channels' and prune_to_budget's
options, each flag made from its config field, and the shared ones."""

from __future__ import annotations

import argparse

from prunefx import options
from prunefx.cli import flags
from prunefx.passes.budget.width_config import PruneToBudgetConfig
from prunefx.passes.removal.config import RemoveChannelsConfig

TARGETS = ("macs", "params", "channels")
BUDGETS = ("speedup", "latency_ms")  # prune_to_budget's: measured on --backend at batch 1
SEARCH = ("tolerance", "max_candidates", "confirm")  # how prune_to_budget searches
RUNS = 30  # --runs' default: timed runs of each budget candidate
OPTIONS = ("importance", "ranking", "round_to", "max_ratio", "heads", "keep", "compensate", "damping")
WIDTHS = ("round_to",)  # prune_to_budget's: default None, the budget backend's multiple (runtime/measure/width_multiple.py)


def add_arguments(parser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    flags.add_pass_options(parser, RemoveChannelsConfig, TARGETS, group=target)
    flags.add_pass_options(parser, PruneToBudgetConfig, BUDGETS, group=target)
    flags.add_pass_options(parser, RemoveChannelsConfig, tuple(o for o in OPTIONS if o not in WIDTHS))
    flags.add_pass_options(parser, PruneToBudgetConfig, WIDTHS)
    # Shorthands for --ranking global|local (the same destination and default)
    parser.add_argument("--global", dest="ranking", action="store_const", const="global", help="--ranking global")
    parser.add_argument("--local", dest="ranking", action="store_const", const="local", help="--ranking local")
    parser.add_argument("--part", metavar="PATH",
                        help="prune only this submodule (e.g. backbone; 'auto': the largest child that captures), "
                             "for detectors whose post-processing does not export; model.pt2 then holds the pruned "
                             "part, put back with prunefx.detectors.replace_part")
    parser.add_argument("--module", action="store_true",
                        help="also write module.pt: the pruned model as your own module class (same classes and "
                             "submodule names), only when it is proven to compute what model.pt2 computes. It is "
                             "torch.save's pickle: load it with torch.load(..., weights_only=False), from trusted "
                             "sources only; model.pt2 is plain tensor data and JSON")
    flags.add_calibration(parser, reads="with it, channels are chosen by obs, the remaining weights "
                                              "compensated and every batch norm recalibrated")
    parser.add_argument("--recalibrate", action=argparse.BooleanOptionalAction, default=None,
                        help="re-estimate every batch norm on the calibration data after pruning (default: on "
                             "with --calibrate)")
    parser.add_argument("--calibration-batches", type=options.count, default=4,
                        help="noise batches for taylor/fisher/obs without --calibrate (default 4)")
    flags.add_pass_options(parser, PruneToBudgetConfig, SEARCH)
    parser.add_argument("--allow-depth", action="store_true",
                        help="when width alone cannot reach --speedup/--latency-ms, merge blocks instead (prunefx "
                             "depth on the same budget), and when depth alone cannot either, take both together "
                             "(needs --calibrate DATA to rank the blocks)")
    parser.add_argument("--choose-by", choices=("macs", "latency"), default=None,
                        help="which channels go: by importance alone (macs), or by importance lost per millisecond "
                             "saved in a per-layer latency table timed first on --backend at --batch (cached), which "
                             "cuts channels where the time goes; with --macs/--params/--channels the target stays "
                             "what it is, reached by the fastest plan the table finds that loses no more importance "
                             "than the MACs choice. Default: latency for a budget on the cuda backend, else macs")
    flags.add_measurement(parser, runs=RUNS, what="--speedup/--latency-ms (batch 1; a candidate that meets the "
                                                      "budget is confirmed with 4x the runs)")
    flags.add_budget_backend(parser)
    flags.add_device(parser, runs="channel importance, the OBS math, compensation and the calibration passes")
    flags.add_opset(parser)
    flags.add_output(parser, "model.pt2, model.onnx and report.json")
