"""prunefx quantize MODEL --calibrate DATA [--backend ort|trt] -o DIR: INT8 in TensorRT's explicit-quantization form.

Runs the quantize_int8 pass in a verified Pipeline (the flags are the pass's config fields) and writes, in one
staged folder, model.pt2 (fake-quantized, trainable), model_trt.onnx (S8 Q/DQ for TensorRT), model_ort.onnx
(UINT8 activations for ONNX Runtime on x86), model.onnx (the one for --backend) and report.json (readiness,
the pass's statistics, exports and parity, ONNX Runtime latency). See docs/reference/cli.md, 'quantize'.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from prunefx.cli import flags
from prunefx.cli.arguments.quantize import BACKENDS, OPTIONS
from prunefx.device import on_device, resolve_device
from prunefx.graph.counted import counted
from prunefx.graph.errors import PrunefxError
from prunefx.graph.int8.quantization import has_fake_quant
from prunefx.graph.progress import progress_bar
from prunefx.graph.rebatch import rebatch
from prunefx.image_statistics import calibration_read
from prunefx.loading import program_from_args
from prunefx.output import staged_folder
from prunefx.output_paths import check_output_folder
from prunefx.passes.core.pipeline import Pipeline
from prunefx.passes.quantize_int8 import Quantized, quantize_int8
from prunefx.passes.rewrites.quantize_config import QuantizeInt8Config
from prunefx.reports import report_json
from prunefx.reports.parity_text import parity_words
from prunefx.reports.report_facts import Costs, Latency, LatencySkipped, ReportFacts
from prunefx.reports.report_json import output_files
from prunefx.runtime import (
    QuantizedExport,
    check_parity,
    export_onnx,
    export_quantized_lowerings,
    onnx_side_by_side,
    onnxruntime_lowering,
    program_parity,
)
from prunefx.runtime.backends import Settings
from prunefx.runtime.check.readiness import report_entry
from prunefx.runtime.onnx.parity import warn_if_constant
from prunefx.runtime.onnx.quantized import require_float32_quantizers

log = logging.getLogger(__name__)
NAME = "quantize"
READINESS = {"model_trt.onnx": ("trt10", "trt11"), "model_ort.onnx": ("ort",)}  # prunefx check's targets per file


def run(args) -> int:
    device = resolve_device(args.device)  # a GPU that is missing is refused before anything loads
    output = check_output_folder(args.output)
    if not args.calibrate:
        raise PrunefxError("quantize needs calibration images for the activation ranges: give --calibrate DATA")
    if args.method != "percentile":
        flags.refuse_unread(args, {"percentile": QuantizeInt8Config.default("percentile")},
                            f"only --method percentile reads it, and the method is {args.method}")
    program = program_from_args(args, writes_onnx=True).eval()
    if has_fake_quant(program.graph):  # its float baseline and its ranges would be the INT8 model's own
        raise PrunefxError(f"{args.model} is already quantized (INT8 fake quantizers): quantize the float model; "
                           "prunefx export --backend ort|trt writes this one's INT8 files")
    require_float32_quantizers(program)  # before the calibration's minutes
    calibration = calibration_read(args, program, program.example_inputs[0])
    config = {**flags.pass_config(args, OPTIONS), "calibration": calibration.on(device).batches}
    started = time.perf_counter()
    with on_device(program, device) as placed:  # the float Program goes back even when the pass fails
        result = Pipeline([(quantize_int8, config)], verify="full").run(program)
        placed.home(result.program)  # exported, checked and written from the CPU
    quantized, stats, facts = result.program, result.stats()["quantize_int8"], result.facts("quantize_int8", Quantized)
    departure = program_parity(program, quantized)  # the scale the files' parity is read on
    warn_if_constant(departure, program.name)  # then so is every file's
    joins = f" and {counted(facts.adds_and_pools, 'add or pool', 'adds and pools')}" if facts.adds_and_pools else ""
    print(f"quantized {counted(facts.layers, 'layer')}{joins} of {program.name} ({facts.kept_in_float} kept in float) "
          f"on {_calibrated_on(stats, calibration)} in {time.perf_counter() - started:.1f} s; exporting", flush=True)
    lowering = onnxruntime_lowering()
    files = {"model_trt.onnx": "s8", "model_ort.onnx": lowering}
    with staged_folder(output) as staging:
        # a bar over the export's steps (on a terminal): one ONNX export, then each file's parity and readiness
        with progress_bar("exporting", 1 + 2 * len(files), unit="step", progress=None) as bar:
            quantized.save(staging / "model.pt2")
            exports = _exports(quantized, staging, files, args.opset, bar)
            readiness = {name: _readiness(staging / name, bar) for name in files}
        shutil.copyfile(staging / BACKENDS[args.backend], staging / "model.onnx")
        latency = _latency(program, quantized, staging / "model_ort.onnx", args)
        names = ("model.pt2", "model.onnx", *files, "report.json")
        report = report_json.write(staging, ReportFacts(
            NAME, program.name, Costs.of(program, quantized), output_files(output, *names),
            parity=exports[BACKENDS[args.backend]]["parity"], calibration=_calibrated_on(stats, calibration), latency=latency,
            sections={"onnxruntime_lowering": lowering, "backend": args.backend, "model.onnx": BACKENDS[args.backend],
                      "quantize_int8": stats, "float_departure": departure.entry(), "exports": exports,
                      "readiness": readiness}))
    _summary(report, output)
    return 0


def _calibrated_on(stats: dict, calibration) -> str:
    """The calibration data the ranges were read on: its first batches only under --max-batches."""
    used = stats["calibration_batches"]
    if used >= len(calibration.batches):
        return calibration.description
    return f"the first {counted(used, 'batch', 'batches')} ({stats['calibration_images']} images) of {calibration.description}"


def _exports(program, folder: Path, files: dict[str, str], opset: int, bar) -> dict:
    """Each of `files` (name -> lowering) exported into `folder` from one ONNX export, and its parity checked."""
    exported = export_quantized_lowerings(program, {folder / name: lowering for name, lowering in files.items()},
                                          opset=opset)
    bar.update()
    entries = {}
    for path, entry in exported.items():
        entries[path.name] = _export_entry(program, entry)
        bar.update()
    return entries


def _readiness(path: Path, bar) -> dict:
    """prunefx check's verdicts on `path` for the targets its file is meant for."""
    entries = {target: report_entry(path, target) for target in READINESS[path.name]}
    bar.update()
    return entries


def _export_entry(program, exported: QuantizedExport) -> dict:
    parity = check_parity(program, exported.path)
    return {"activations": exported.activations, "weight_initializers": exported.weight_initializers,
            "activation_pairs": exported.activation_pairs, "integer_units": exported.integer_units,
            "unsigned_activations": exported.unsigned_activations, "weight_levels": exported.weight_levels,
            "parity": parity.entry()}


def _latency(dense, quantized, quantized_file: Path, args) -> Latency | LatencySkipped:
    """The float model against model_ort.onnx, ONNX Runtime at batch 1, alternately over fresh processes."""
    if int(dense.example_inputs[0].shape[0]) != 1:
        return LatencySkipped("the model was captured at a batch size other than 1; bench its files at batch 1")
    with tempfile.TemporaryDirectory(prefix="prunefx-quantize-") as tmp:
        dense_file = export_onnx(rebatch(dense, 1), Path(tmp) / "dense.onnx", opset=args.opset).path
        comparison = onnx_side_by_side([(dense_file, dense.example_inputs), (quantized_file, quantized.example_inputs)],
                                       Settings(runs=args.runs, threads=args.threads))
    return Latency("onnxruntime", args.threads, args.runs, comparison.a.median_ms, comparison.b.median_ms,
                   comparison.speedup, extra=comparison.reported())


def _summary(report: dict, output: Path) -> None:
    for name, entry in report["exports"].items():
        print(f"{name}: {entry['activations']} activations, {entry['weight_initializers']} INT8 weights, "
              f"{entry['activation_pairs']} activation Q/DQ pairs; parity with the fake-quantized model: "
              f"{parity_words(entry['parity'])}")
    # an INT8 file and the Program round values on a boundary apart, and the network carries the step on as it
    # carries quantization noise: the Program's own departure from the float model is the scale to read that on
    print(f"the fake-quantized model against the float one: {parity_words(report['float_departure'])}")
    latency = report["latency"]
    if "speedup" in latency:
        print(f"ONNX Runtime, batch 1, {counted(latency['threads'], 'thread')}: float {latency['dense_ms']:.2f} ms, "
              f"INT8 {latency['compressed_ms']:.2f} ms ({latency['speedup']:.2f}x)")
        _warn_if_slower(latency)
    print(f"wrote {', '.join(report['files'].values())} (model.onnx: {report['model.onnx']})")


def _warn_if_slower(latency: dict) -> None:
    """INT8 measured slower than float, its whole interval below 1x: a warning, not only a ratio under 1."""
    interval = latency.get("interval") or {}
    if interval.get("high") is None or interval["high"] >= 1:
        return
    log.warning(f"model_ort.onnx ran slower than the float model on this machine's ONNX Runtime at batch 1, "
                f"{counted(latency['threads'], 'thread')} ({latency['speedup']:.2f}x, interval "
                f"{interval['low']:.2f}-{interval['high']:.2f}x): its INT8 kernels do not pay here; time the files "
                f"where they will run (prunefx bench, --backend trt or trtexec for model_trt.onnx)")
