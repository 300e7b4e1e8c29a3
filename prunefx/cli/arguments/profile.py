"""`prunefx profile`'s flags (the command: prunefx/cli/commands/profile.py): the registry's backends that
profile, and the options some of them read."""

from __future__ import annotations

from prunefx import options
from prunefx.cli import flags
from prunefx.runtime import backends
from prunefx.runtime.backends import Settings


def add_arguments(parser) -> None:
    names = backends.names(profiles=True)
    flags.add_backend_arguments(parser, names, names[0])  # ONNX Runtime, as every command measures by default
    parser.add_argument("--runs", type=options.runs, default=50, help="profiled runs (default 50)")
    parser.add_argument("--warmup", type=options.warmup_runs, default=None,
                        help=f"untimed warm-up runs (default {Settings.warmup}; trtexec keeps its own)")
    flags.add_cpu_timing_arguments(parser)
    parser.add_argument("--top", type=options.count, metavar="N", help="show only the N slowest layers")
    # -o is where results go in every command; --json (inspect, bench) prints JSON instead of text
    parser.add_argument("-o", "--output", metavar="PATH", help="also write the profile as JSON to PATH")
