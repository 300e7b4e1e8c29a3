"""`prunefx bench`'s flags (the command: prunefx/cli/commands/bench.py): the registry's backends and the
options some of them read, runs, warm-up and threads."""

from __future__ import annotations

from prunefx import options
from prunefx.cli import flags
from prunefx.runtime import backends
from prunefx.runtime.backends import Settings
from prunefx.runtime.measure.timing_loop import WARM_SECONDS


def add_arguments(parser) -> None:
    parser.add_argument("--vs", metavar="OTHER", help="a second model or .onnx file, timed alternately with the first")
    names = backends.names()
    flags.add_backend_arguments(parser, names, names[0])
    parser.add_argument("--runs", type=options.runs, default=100, help="timed runs per model (default 100)")
    parser.add_argument("--warmup", type=options.warmup_runs, default=None,
                        help=f"untimed warm-up runs per model (default {Settings.warmup}); on ort and torch they stop "
                             f"after {WARM_SECONDS:g} s, once each model ran twice; the GPU backends warm until "
                             "their times settle; trtexec keeps its own")
    flags.add_cpu_timing_arguments(parser)
    parser.add_argument("--rounds", type=options.runs, default=None,
                        help="ort with --vs: fresh processes the runs are spread over, a pair of sessions each (default 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
