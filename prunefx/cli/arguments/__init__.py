"""Each command's flags, one module per command (prunefx/cli/commands/NAME.py runs it): `add_arguments(parser)`
and the names its run reads the flags back by. They import no torch, onnx or onnxruntime, so that `prunefx
CMD --help` and a mistyped flag answer before the command's module (seconds of imports) is loaded."""
