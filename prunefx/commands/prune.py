"""prunefx prune MODEL --macs 0.5 -o DIR: structured channel pruning, written as model.pt2, model.onnx
and report.json (costs before/after, the width of every group, blocked groups, ONNX parity)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prunefx.calibration import image_batches, noise_batches
from prunefx.graph.channel_importance import CRITERIA, GRADIENT_CRITERIA
from prunefx.graph.errors import PrunefxError
from prunefx.loading import program_from_args
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime import check_parity, export_onnx

NAME = "prune"
HELP = "remove channels to a MACs or parameter target; write model.pt2, model.onnx and report.json"


def add_arguments(parser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--macs", type=float, help="fraction of the MACs to keep, e.g. 0.5")
    target.add_argument("--params", type=float, help="fraction of the parameters to keep")
    target.add_argument("--channels", type=float, help="fraction of the prunable channels to keep")
    parser.add_argument("--importance", choices=CRITERIA, default="l2", help="channel importance (default l2)")
    ranking = parser.add_mutually_exclusive_group()
    ranking.add_argument("--global", dest="ranking", action="store_const", const="global",
                         help="rank channels across groups by normalised score (default)")
    ranking.add_argument("--local", dest="ranking", action="store_const", const="local",
                         help="remove the same fraction of every group")
    parser.set_defaults(ranking="global")
    parser.add_argument("--round-to", type=int, default=8,
                        help="keep every width a multiple of N (default 8: FP16 tensor cores; 16 for ONNX Runtime "
                             "on AVX-512 CPUs)")
    parser.add_argument("--max-ratio", type=float, default=0.8, help="largest fraction of one group removed (0.8)")
    parser.add_argument("--keep", action="append", default=[], metavar="NODE",
                        help="graph node whose channels must stay (repeatable; see `prunefx inspect`)")
    parser.add_argument("--calibration", metavar="DIR", help="folder of images for taylor/fisher (default: noise)")
    parser.add_argument("--calibration-batches", type=int, default=4,
                        help="noise batches for taylor/fisher when no --calibration folder is given (default 4)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("-o", "--output", required=True, help="folder for model.pt2, model.onnx and report.json")


def run(args) -> int:
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise PrunefxError(f"{output} exists and is not a folder")
    program = program_from_args(args).eval()
    config = _config(args, program)
    started = time.perf_counter()
    result = remove_channels(program, config=config)
    stats, pruned = result.stats, result.program
    print(f"pruned {program.name} to {_target_text(args)} ({args.importance}, {args.ranking}) "
          f"in {time.perf_counter() - started:.1f} s; exporting to ONNX", flush=True)
    output.mkdir(parents=True, exist_ok=True)
    pruned.save(output / "model.pt2")
    exported = export_onnx(pruned, output / "model.onnx", opset=args.opset)
    parity = check_parity(pruned, exported.path)
    report = _report(program.name, stats, parity, exported, calibration=_calibration_text(args))
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _summary(report, output)
    return 0


def _config(args, program) -> dict:
    config = {"importance": args.importance, "ranking": args.ranking, "round_to": args.round_to,
              "max_ratio": args.max_ratio, "keep": args.keep,
              "macs": args.macs, "params": args.params, "channels": args.channels}
    if args.importance in GRADIENT_CRITERIA:
        example = program.example_inputs[0]
        config["calibration"] = (image_batches(args.calibration, example) if args.calibration
                                 else noise_batches(example, args.calibration_batches))
    return config


def _target_text(args) -> str:
    kind = next(k for k in ("macs", "params", "channels") if getattr(args, k) is not None)
    return f"{kind}={getattr(args, kind):g}"


def _calibration_text(args) -> str | None:
    if args.importance not in GRADIENT_CRITERIA:
        return None
    return f"images from {args.calibration}" if args.calibration else f"{args.calibration_batches} noise batches"


def _report(name, stats, parity, exported, *, calibration) -> dict:
    report = {"model": name, **{k: stats[k] for k in ("params_before", "params_after", "macs_before", "macs_after")},
              "target": stats["target"], "importance": stats["importance"], "calibration": calibration,
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
    print(f"parity torch vs ONNX Runtime: relative error {report['parity']['relative']:.2e}")
    print(f"wrote {output / 'model.pt2'}, {output / 'model.onnx'}, {output / 'report.json'}")

