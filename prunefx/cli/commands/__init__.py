"""CLI sub-commands: each module has run(args) -> exit code, and its flags are prunefx/cli/arguments/NAME.py's
add_arguments(parser). This table names them and says what each does, so that `prunefx --help` and a
mistyped command answer without importing any of them (their imports take torch, seconds before the first
line); a command's module is imported only to run it, once its arguments are parsed."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    takes_model: bool = True  # the shared MODEL, --weights and --input-shape arguments
    onnx_allowed: bool = False  # MODEL may be an .onnx file

    def module(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.name}")

    def arguments(self) -> ModuleType:
        """The module that makes the command's flags (prunefx/cli/arguments/NAME.py): it imports no torch."""
        return importlib.import_module(f"prunefx.cli.arguments.{self.name}")

    def run(self, args) -> int:
        return self.module().run(args)


COMMANDS = (
    Command("inspect", "parameters, MACs, node count and operator histogram of a model"),
    Command("prune", "remove channels to a MACs or parameter target, or to a speed-up or latency measured on ONNX "
                     "Runtime or TensorRT; write model.pt2, model.onnx and report.json"),
    Command("depth", "remove whole non-linearities from the least harmful blocks and merge them (one-shot UPDP), as "
                     "many as asked or as a measured speed-up or latency budget needs"),
    Command("quantize", "INT8 with Q/DQ (TensorRT's explicit quantization): write model.pt2, model.onnx (for "
                        "--backend), model_trt.onnx, model_ort.onnx, report.json"),
    Command("compress", "prune and recover a model with a recipe on a data set; write model.pt2, model.onnx and a "
                        "report with accuracy, MACs and measured speed-up", takes_model=False),
    Command("export", "export a model to a cleaned, checked ONNX file and print its parity with torch"),
    Command("bench", "measure latency (median, p90, p99); with --vs, two models side by side and their speed-up",
            onnx_allowed=True),
    Command("profile", "per-layer profile on a GPU backend: time per layer, sparse kernels, and the Program nodes "
                       "each layer computes", onnx_allowed=True),
    Command("check", "report what would stop or slow an engine build of an ONNX file on a target (no GPU needed); "
                     "exit 1 on errors", takes_model=False),
    Command("demo", "prune a Fashion-MNIST ResNet-20 (shipped checkpoint) the recommended way: calibration images, "
                    "second-order channel choice with compensation, short distillation; accuracy and ONNX Runtime "
                    "latency before and after (--imagenet: fold MobileNetV2)", takes_model=False),
)
