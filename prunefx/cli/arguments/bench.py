"""`prunefx bench`'s flags (the command: prunefx/cli/commands/bench.py): the registry's backends and the
options some of them read, runs, warm-up and threads."""

from __future__ import annotations

from prunefx import options
from prunefx.cli import flags
from prunefx.runtime import backends
from prunefx.runtime.backends import Settings
from prunefx.runtime.measure.timing_loop import WARM_SECONDS
from prunefx.runtime.ort.threads import LATENCY_THREADS


def add_arguments(parser) -> None:
    parser.add_argument("--vs", metavar="OTHER", help="a second model or .onnx file, timed alternately with the first")
    names = backends.names()
    flags.add_backend_arguments(parser, names, names[0])
    parser.add_argument("--runs", type=options.runs, default=100, help="timed runs per model (default 100)")
    parser.add_argument("--warmup", type=options.warmup_runs, default=None,
                        help=f"untimed warm-up runs per model (default {Settings.warmup}); on ort and torch they stop "
                             f"after {WARM_SECONDS:g} s, once each model ran twice; the GPU backends warm until "
                             "their times settle; trtexec keeps its own")
    parser.add_argument("--threads", type=options.threads, default=None,
                        help=f"intra-op threads for ort and torch (default {LATENCY_THREADS})")
    parser.add_argument("--no-spinning", action="store_true",
                        help="ort: worker threads sleep between operators instead of spinning (ONNX Runtime's "
                             "default, and prunefx's, is to spin; turn it off on hosts that share their cores)")
    parser.add_argument("--rounds", type=options.runs, default=None,
                        help="ort with --vs: fresh processes the runs are spread over, a pair of sessions each (default 4)")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="ort: time subnormal floats as IEEE arithmetic (slow on x86) instead of flushing them to "
                             "zero as GPUs and TensorRT do (also PRUNEFX_KEEP_DENORMALS=1, for every command)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
