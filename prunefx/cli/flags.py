"""The flags several commands share, and the flags made from the passes' config classes: the parsers of every
command are built of these before anything heavy is imported, so that `--help` and a mistyped flag answer at
once (what measures, the run reads back from them: prunefx/cli/options.py).

A flag that sets a pass option is made from the option's field (passes/core/pass_config.py): its type, its
default, its bounds (checked while the command line is parsed), its choices and its help all come from
the field, so a default or a range lives in one place. `pass_config(args, ...)` reads the flags back
into the pass's config mapping. Options that are not pass options (output folder, calibration data,
ONNX opset, measurement threads and runs, the backend a budget is measured on, the device the calibrated
work runs on) are added here once, and mean the same in every command.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from prunefx import options
from prunefx.graph.errors import PrunefxError
from prunefx.graph.normalisation_bounds import MEAN_RANGE, STD_RANGE
from prunefx.passes.core.config_checks import ConfigError
from prunefx.passes.core.pass_config import check_bounds
from prunefx.runtime import backends
from prunefx.runtime.onnx.opsets import DEFAULT_OPSET
from prunefx.runtime.ort.threads import LATENCY_THREADS


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(kind):
    """int, float, str, bool or list for an annotation such as `float | None` or `list[str]`."""
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    members = [m for m in typing.get_args(kind) if m is not type(None)] if union else [kind]
    for member in members:
        origin = typing.get_origin(member) or member
        if origin in (bool, int, float, str, list):
            return origin
    return None


def _parser_for(config_class, field: dataclasses.Field, kind, optional: bool):
    """An argparse `type=` that converts the text and checks the field's bounds while parsing; `optional`: the
    field also takes None, given as `none` (what a recipe writes as null)."""
    def parse(text: str):
        if optional and text.strip().lower() == "none":
            return None
        value = options.integer(-(2**63))(text) if kind is int else options.number(float("-inf"))(text) \
            if kind is float else text
        try:
            check_bounds(config_class.owner, field, value)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error).split(": ", 1)[1]) from None
        return value
    parse.__name__ = {int: "integer", float: "number"}.get(kind, "text")
    return parse


def _default_text(field: dataclasses.Field, default) -> str:
    if default is None or default == []:
        return ""
    shown = {True: "on", False: "off"}.get(default, default) if isinstance(default, bool) else default
    return f" (default {shown})"


def add_pass_options(parser, config_class, names, *, flags: dict[str, str] | None = None, group=None) -> None:
    """A flag for each of the fields `names` of `config_class` (`--round-to` for round_to unless `flags`
    renames it), added to `group` when given (e.g. a mutually exclusive one)."""
    flags = flags or {}
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    target = group if group is not None else parser
    for name in names:
        field = fields[name]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kind = _base_type(hints[name])
        help_text = field.metadata["help"] + _default_text(field, default)
        common = {"dest": name, "help": help_text}
        if kind is bool:
            target.add_argument(flags.get(name, flag_of(name)), action=argparse.BooleanOptionalAction,
                                default=default, **common)
        elif kind is list:
            target.add_argument(flags.get(name, flag_of(name)), action="append", default=default, metavar="NAME",
                                **{**common, "help": help_text + " (repeatable)"})
        else:
            optional = kind in (int, float) and type(None) in typing.get_args(hints[name])
            target.add_argument(flags.get(name, flag_of(name)), type=_parser_for(config_class, field, kind, optional),
                                default=default, choices=field.metadata.get("choices"), **common)


def pass_config(args, names) -> dict:
    """The pass options among `names` as the command line set them (defaults included)."""
    return {name: getattr(args, name) for name in names}


# ---- options shared by several commands ----------------------------------------------------------

def add_output(parser, what: str, *, required: bool = True) -> None:
    parser.add_argument("-o", "--output", required=required, help=f"folder for {what}")


def add_opset(parser) -> None:
    parser.add_argument("--opset", type=options.opset, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET})")


def add_measurement(parser, *, runs: int, what: str = "the latency") -> None:
    """`--threads` and `--runs` (`runs` its default: check with `refuse_unread(args, measurement_defaults(runs))`
    where a run may measure nothing)."""
    parser.add_argument("--threads", type=options.threads, default=LATENCY_THREADS,
                        help=f"ONNX Runtime threads for {what} (default {LATENCY_THREADS})")
    parser.add_argument("--runs", type=options.runs, default=runs, help=f"timed runs per model (default {runs})")


def add_calibration(parser, *, reads: str) -> None:
    """`--calibrate DATA` (the one calibration flag, in every command) and how many images it reads."""
    parser.add_argument("--calibrate", metavar="DATA",
                        help=f"calibration data: fashion-mnist, imagenet-sample, a data set on disk (ImageFolder with "
                             f"train/, COCO, YOLO data.yaml, image + mask folders) or a folder of images; {reads}")
    parser.add_argument("--calibration-images", type=options.calibration_images, default=256,
                        help="images read from --calibrate, in batches of the captured batch size (default 256)")
    add_normalisation(parser)


def add_normalisation(parser) -> None:
    """`--mean` and `--std`: the statistics the images a command reads are normalised with (read back by
    prunefx/image_statistics.py)."""
    parser.add_argument("--mean", type=options.channel_values(*MEAN_RANGE), metavar="M[,M,M]",
                        help="per-channel mean the images read are normalised with, pixels scaled to [0, 1] (default: "
                             "the model's own where known, as timm's configuration, else ImageNet's; with --std)")
    parser.add_argument("--std", type=options.channel_values(*STD_RANGE), metavar="S[,S,S]",
                        help="per-channel standard deviation, with --mean")


def add_device(parser, *, runs: str) -> None:
    """`--device`: where the calibrated work runs (prunefx/device.py); files are written from the CPU either way."""
    parser.add_argument("--device", type=_device_text, default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                        help=f"where {runs} run (default auto: cuda when torch sees a GPU, else cpu); what is "
                             "written is the same model, moved back to the CPU")


def _device_text(text: str) -> str:
    """The device's spelling, checked while parsing (a GPU that is missing is refused by resolve_device)."""
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not auto, cpu, cuda or cuda:N")


def backend_help(names: list[str], default: str) -> str:
    """'ort (ONNX Runtime, default), trt (TensorRT), ...' from the registry."""
    return ", ".join(f"{name} ({backends.label(name)}{', default' if name == default else ''})" for name in names)


def add_budget_backend(parser, *, note: str = "", batch_from: str = "--input-shape", subject: str = "a budget") -> None:
    """`--backend`, `--precision`, `--batch`, `--compile` and `--trtexec`: where `--speedup/--latency-ms` is
    measured (runtime/backends/); check them with options.check_budget_backend (prunefx/cli/options.py) before
    loading a model."""
    names = backends.names(budgets=True)
    parser.add_argument("--backend", choices=names, default=names[0],
                        help=f"where {subject} is measured: {backend_help(names, names[0])}{note}")
    parser.add_argument("--precision", choices=backends.budget_precisions(), default=None,
                        help=f"precision of {subject}'s measurement (default: the backend's, "
                             + ", ".join(f"{b.default_precision} on {b.name}" for b in backends.described(budgets=True))
                             + "); a quantized model's INT8 comes from its own Q/DQ nodes")
    parser.add_argument("--batch", type=options.count, default=1,
                        help=f"batch size {subject} is measured at (default 1); a model captured at a smaller batch "
                             f"cannot be measured at a larger one (give {batch_from})")
    parser.add_argument("--compile", action="store_true",
                        help="cuda: compile each model with torch.compile (inductor) before timing it")
    parser.add_argument("--trtexec", metavar="PATH", help="the trtexec program (default: on PATH or JetPack's)")


def add_backend_arguments(parser, choices: list[str], default: str) -> None:
    """`bench` and `profile`'s `--backend` among `choices`, and the options some backends read (their checks:
    prunefx/bench_models.py)."""
    parser.add_argument("--backend", choices=choices, default=default,
                        help=", ".join(f"{name}: {backends.label(name)}{' (default)' if name == default else ''}"
                                       for name in choices))
    listed = {backend.name: backend for backend in backends.described()}
    precisions = dict.fromkeys(p for name in choices for p in (listed[name].bench_precisions
                                                               or listed[name].precisions))
    parser.add_argument("--precision", choices=list(precisions), default=None,
                        help="precision (default: the backend's, fp16 on cuda, else fp32); int8 (TensorRT) needs a "
                             "file with Q/DQ nodes (quantize_int8) or --calibrate DATA to quantize it first")
    parser.add_argument("--batch", type=options.count, metavar="B",
                        help="time at batch B: a model reference is captured at B, a .pt2 cut to B (a saved "
                             "program cannot grow: capture it at B); default: the model's own batch, 1 for a "
                             "reference; an .onnx file's batch is its --input-shape")
    parser.add_argument("--compile", action="store_true", help="cuda: torch.compile (inductor) before timing")
    parser.add_argument("--sparse", action="store_true",
                        help="allow 2:4 sparse tensor-core kernels (TensorRT SPARSE_WEIGHTS / trtexec --sparsity)")
    parser.add_argument("--calibrate", metavar="DATA",
                        help="for --backend trt --precision int8 on a file without Q/DQ: fashion-mnist, "
                             "imagenet-sample or a folder of images (256 images), read by ONNX Runtime's "
                             "quantize_static to write TensorRT's symmetric Q/DQ form first")
    add_normalisation(parser)
    parser.add_argument("--trtexec", metavar="PATH", help="the trtexec program (default: on PATH or JetPack's)")
    parser.add_argument("--cache-dir", help="TensorRT engine cache (default ~/.cache/prunefx/tensorrt)")


def add_cpu_timing_arguments(parser) -> None:
    """`bench` and `profile`'s flags for how ONNX Runtime (and torch on the CPU) time: threads, spinning, subnormals."""
    parser.add_argument("--threads", type=options.threads, default=None,
                        help=f"intra-op threads for ort and torch (default {LATENCY_THREADS})")
    parser.add_argument("--no-spinning", action="store_true",
                        help="ort: worker threads sleep between operators instead of spinning (ONNX Runtime's "
                             "default, and prunefx's, is to spin; turn it off on hosts that share their cores)")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="ort: time subnormal floats as IEEE arithmetic (slow on x86) instead of flushing them to "
                             "zero as GPUs and TensorRT do (also PRUNEFX_KEEP_DENORMALS=1, for every command)")


def refuse_unread(args, defaults: dict[str, object], why: str) -> None:
    """Flags this run would not read, refused in one line before any model is loaded (`why`: what they apply to),
    rather than ignored: those given on the command line (`args.given`, whatever their value: `--threads 2` is
    the default and still a request), else those set away from their defaults."""
    typed = getattr(args, "given", None)
    given = [flag_of(name) for name, default in defaults.items()
             if (name in typed if typed is not None else getattr(args, name) != default)]
    if given:
        raise PrunefxError(f"{', '.join(given)}: {why}")


def measurement_defaults(runs: int) -> dict[str, object]:
    """`add_measurement`'s defaults, for `refuse_unread`."""
    return {"threads": LATENCY_THREADS, "runs": runs}


def given_destinations(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations `argv` sets itself, whatever their values: `argv` parsed again with every default of the
    parser and its sub-commands suppressed (absent flags then leave no attribute), the defaults put back after."""
    actions = _every_action(parser)
    saved = [(action, action.default) for action in actions]
    for action in actions:
        action.default = argparse.SUPPRESS
    try:
        parsed, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(parsed))


def _every_action(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    actions = []
    for action in parser._actions:
        actions.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                actions += _every_action(sub)
    return actions
