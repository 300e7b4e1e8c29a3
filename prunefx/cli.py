"""The `prunefx` command line. Each sub-command lives in prunefx/commands/<name>.py.

Deliberate errors (bad model reference, malformed shape, missing or corrupt file, a model that will
not export) print one line to stderr and exit with status 2; never a traceback. An unexpected error
prints one line too, and the traceback only with PRUNEFX_DEBUG=1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings

from prunefx.graph.errors import PrunefxError, first_line

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3


def _model_arguments(parser: argparse.ArgumentParser, *, onnx_allowed: bool = False) -> None:
    what = "torchvision:NAME, timm:NAME, prunefx:NAME, path/to/file.py:factory or a saved .pt2"
    parser.add_argument("model", help=what + (" or an .onnx file" if onnx_allowed else ""))
    parser.add_argument("--weights", help="state dict (.pth/.pt) to load into the model")
    parser.add_argument("--input-shape", help="example input shape, e.g. 1x3x224x224 (default: the model's)")


def build_parser() -> argparse.ArgumentParser:
    from prunefx.commands import bench, compress, demo, depth, export, inspect, profile, prune

    parser = argparse.ArgumentParser(prog="prunefx", description="Make vision models smaller and faster.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (inspect, prune, depth, compress, export, bench, profile, demo):
        sub = commands.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        if getattr(module, "TAKES_MODEL", True):
            _model_arguments(sub, onnx_allowed=getattr(module, "ONNX_ALLOWED", False))
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


class _WithoutTorchPrints:
    """Stands in for sys.stderr while a command runs. torch.export prints the partial graph of a model
    it could not capture straight to sys.stderr (`print(e.partial_fx_graph, file=sys.stderr)`), which
    would bury the one-line error under pages of code; writes made directly from torch's own modules are
    dropped, everything else (progress bars, our messages) passes through as it comes."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            caller = sys._getframe(1).f_globals.get("__name__", "")
        except ValueError:  # called from C with no Python frame above: not torch's print
            caller = ""
        if caller == "torch" or caller.startswith("torch."):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(os.environ.get("PRUNEFX_DEBUG"))
    if not debug:
        warnings.filterwarnings("ignore")  # torch.export/onnx warnings are noise for CLI users
    quiet = contextlib.nullcontext() if debug else contextlib.redirect_stderr(_WithoutTorchPrints(sys.stderr))
    try:
        with quiet:
            return int(args.handler(args) or 0)
    except PrunefxError as error:
        print(f"prunefx {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("prunefx: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("PRUNEFX_DEBUG"):
            raise
        print(f"prunefx {args.command}: internal error: {first_line(error)} "
              "(rerun with PRUNEFX_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
