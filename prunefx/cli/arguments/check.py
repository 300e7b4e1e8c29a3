"""`prunefx check`'s flags (the command: prunefx/cli/commands/check.py): the targets it knows, without onnx."""

from __future__ import annotations

from prunefx.runtime.check.descriptions import DESCRIPTIONS


def add_arguments(parser) -> None:
    parser.add_argument("file", help="the .onnx file to check")
    parser.add_argument("--target", choices=tuple(DESCRIPTIONS), default="trt10",
                        help="; ".join(f"{name}: {description}" for name, description in DESCRIPTIONS.items())
                        + " (default trt10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
