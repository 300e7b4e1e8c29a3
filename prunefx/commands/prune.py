"""prunefx prune MODEL --macs 0.5 -o DIR: structured channel pruning, written as model.pt2, model.onnx
and report.json (costs before/after, the width of every group, blocked groups, ONNX parity).

Calibration data, for the data-driven criteria (taylor, fisher, obs) and for compensation:
- `--calibrate DATA` (fashion-mnist | imagenet-sample | a folder: ImageFolder with train/, or images
  directly in it; `--calibration-images`, 256 by default, in batches of the captured batch size):
  the importance reads it, `--compensate` updates the remaining weights on it (remove_channels'
  `compensate`), and every batch norm is recalibrated on it after the removal (recalibrate_batchnorm);
- `--calibration DIR` (a flat folder of images): only the importance reads it;
- neither: taylor/fisher/obs read `--calibration-batches` batches of noise; `--compensate` is refused
  (fitting weights to noise would only hurt).
report.json says which was used (`calibration`), and holds the statistics of the compensation
(`compensation`) and of the recalibration (`recalibrate_batchnorm`), null when they did not run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prunefx import options
from prunefx.calibration import Calibration, calibration_data, image_batches, noise_batches
from prunefx.graph.channel_importance import CRITERIA, DATA_CRITERIA
from prunefx.graph.errors import PrunefxError
from prunefx.loading import program_from_args
from prunefx.output import check_output_folder, staged_folder
from prunefx.passes.pipeline import Pipeline
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime import check_parity, export_onnx

NAME = "prune"
HELP = "remove channels to a MACs or parameter target; write model.pt2, model.onnx and report.json"


def add_arguments(parser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--macs", type=options.fraction, help="fraction of the MACs to keep, e.g. 0.5")
    target.add_argument("--params", type=options.fraction, help="fraction of the parameters to keep")
    target.add_argument("--channels", type=options.fraction, help="fraction of the prunable channels to keep")
    parser.add_argument("--importance", choices=CRITERIA, default="l2", help="channel importance (default l2)")
    ranking = parser.add_mutually_exclusive_group()
    ranking.add_argument("--global", dest="ranking", action="store_const", const="global",
                         help="rank channels across groups by normalised score (default)")
    ranking.add_argument("--local", dest="ranking", action="store_const", const="local",
                         help="remove the same fraction of every group")
    parser.set_defaults(ranking="global")
    parser.add_argument("--round-to", type=options.count, default=8,
                        help="keep every width a multiple of N (default 8: FP16 tensor cores; 16 for ONNX Runtime "
                             "on AVX-512 CPUs)")
    parser.add_argument("--max-ratio", type=options.number(0.0, 1.0, high_open=True), default=0.8, help="largest fraction of one group removed (0.8)")
    parser.add_argument("--keep", action="append", default=[], metavar="NODE",
                        help="graph node whose channels must stay (repeatable; see `prunefx inspect`)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--calibrate", metavar="DATA",
                      help="calibration data: fashion-mnist, imagenet-sample or a folder (ImageFolder with train/, "
                           "or images); read by taylor/fisher/obs and --compensate, and every batch norm is "
                           "recalibrated on it after pruning")
    data.add_argument("--calibration", metavar="DIR", help="folder of images for taylor/fisher/obs only "
                                                           "(default: noise)")
    parser.add_argument("--calibration-images", type=options.count, default=256,
                        help="images read from --calibrate, in batches of the captured batch size (default 256)")
    parser.add_argument("--calibration-batches", type=options.count, default=4,
                        help="noise batches for taylor/fisher/obs without --calibrate or --calibration (default 4)")
    parser.add_argument("--compensate", action="store_true",
                        help="update the remaining weights of every layer that loses inputs so that its output "
                             "on the calibration data changes least (needs --calibrate or --calibration)")
    parser.add_argument("--damping", type=options.number(0.0), default=0.01,
                        help="ridge term of --compensate and obs, a fraction of the mean Hessian diagonal (0.01)")
    parser.add_argument("--opset", type=options.opset, default=18, help="ONNX opset (default 18)")
    parser.add_argument("-o", "--output", required=True, help="folder for model.pt2, model.onnx and report.json")


def run(args) -> int:
    output = check_output_folder(args.output)
    if args.compensate and not (args.calibrate or args.calibration):
        raise PrunefxError("--compensate needs calibration images: give --calibrate DATA (or --calibration DIR)")
    program = program_from_args(args).eval()
    calibration = _calibration(args, program)
    config = _config(args, calibration)
    started = time.perf_counter()
    # The same Pipeline as the API and recipes: every step verified (lint, shapes, re-export), exact
    # steps checked, and a failure names the pass.
    steps = [(remove_channels, config)]
    if args.calibrate:
        steps.append((recalibrate_batchnorm, {"data": calibration.batches}))
    result = Pipeline(steps, verify="full").run(program)
    pruned, all_stats = result.program, result.stats()
    stats, recalibration = all_stats["remove_channels"], all_stats.get("recalibrate_batchnorm")
    print(f"pruned {program.name} to {_target_text(args)} ({args.importance}, {args.ranking}"
          f"{', compensated' if args.compensate else ''}{', batch norms recalibrated' if recalibration else ''}) "
          f"in {time.perf_counter() - started:.1f} s; exporting to ONNX", flush=True)
    with staged_folder(output) as staging:
        pruned.save(staging / "model.pt2")
        exported = export_onnx(pruned, staging / "model.onnx", opset=args.opset)
        parity = check_parity(pruned, exported.path)
        report = _report(program.name, stats, parity, exported,
                         calibration=calibration.description if calibration else None, recalibration=recalibration)
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _summary(report, output)
    return 0


def _calibration(args, program) -> Calibration | None:
    """The calibration batches, when anything reads them (see the module docstring)."""
    example = program.example_inputs[0]
    if args.calibrate:
        return calibration_data(args.calibrate, example, args.calibration_images)
    if args.importance not in DATA_CRITERIA and not args.compensate:
        return None
    if args.calibration:
        return Calibration(image_batches(args.calibration, example), f"images from {args.calibration}")
    return Calibration(noise_batches(example, args.calibration_batches), f"{args.calibration_batches} noise batches")


def _config(args, calibration: Calibration | None) -> dict:
    config = {"importance": args.importance, "ranking": args.ranking, "round_to": args.round_to,
              "max_ratio": args.max_ratio, "keep": args.keep,
              "macs": args.macs, "params": args.params, "channels": args.channels,
              "compensate": args.compensate, "damping": args.damping}
    if calibration is not None and (args.importance in DATA_CRITERIA or args.compensate):
        config["calibration"] = calibration.batches
    return config


def _target_text(args) -> str:
    kind = next(k for k in ("macs", "params", "channels") if getattr(args, k) is not None)
    return f"{kind}={getattr(args, kind):g}"


def _report(name, stats, parity, exported, *, calibration, recalibration) -> dict:
    report = {"model": name, **{k: stats[k] for k in ("params_before", "params_after", "macs_before", "macs_after")},
              "target": stats["target"], "importance": stats["importance"],
              "importance_fallback_groups": stats["importance_fallback_groups"], "calibration": calibration,
              "compensation": stats.get("compensation"), "recalibrate_batchnorm": recalibration,
              "ranking": stats["ranking"], "round_to": stats["round_to"], "max_ratio": stats["max_ratio"],
              "groups": stats["groups"], "blocked": stats["blocked"],
              "onnx": {"exporter": exported.exporter, "fallback_reason": exported.fallback_reason,
                       "nodes": exported.node_count},
              "parity": {"max_abs_error": parity.max_abs_error, "output_scale": parity.output_scale,
                         "relative": parity.relative}}
    return report


def _summary(report: dict, output: Path) -> None:
    macs = report["macs_after"] / report["macs_before"]
    params = report["params_after"] / report["params_before"]
    changed = sum(g["width_after"] != g["width_before"] for g in report["groups"])
    print(f"MACs   {report['macs_before'] / 1e6:.1f} M -> {report['macs_after'] / 1e6:.1f} M ({macs:.3f})")
    print(f"params {report['params_before'] / 1e6:.2f} M -> {report['params_after'] / 1e6:.2f} M ({params:.3f})")
    print(f"groups {changed} of {len(report['groups'])} narrowed; {len(report['blocked'])} blocked"
          + (f" by {', '.join(sorted({op for b in report['blocked'] for op in b['operators']}))}"
             if report["blocked"] else ""))
    if report["compensation"]:
        layers = report["compensation"]["compensated"]
        errors = [(layer["error_without"], layer["error_with"]) for layer in layers]
        mean = [sum(pair[i] for pair in errors) / max(len(errors), 1) for i in (0, 1)]
        print(f"compensated {len(layers)} layers ({len(report['compensation']['skipped'])} skipped): relative "
              f"output error on the calibration data {mean[0]:.3g} -> {mean[1]:.3g} (mean over layers)")
    if report["recalibrate_batchnorm"]:
        recalibration = report["recalibrate_batchnorm"]
        print(f"recalibrated {recalibration['recalibrated']} of {recalibration['batch_norms']} batch norms on "
              f"{recalibration['images']} images")
    print(f"parity torch vs ONNX Runtime: relative error {report['parity']['relative']:.2e}")
    print(f"wrote {output / 'model.pt2'}, {output / 'model.onnx'}, {output / 'report.json'}")

