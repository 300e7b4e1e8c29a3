"""Depth pruning (UPDP) one-shot on pretrained ImageNet MobileNetV2: 2, 4 and 6 blocks linearised and merged.

For each k, the k blocks whose linearisation alone changes the outputs least (KL divergence on
calibration data) lose their activations (the abrupt pruned form: no training here), then
merge_blocks folds what became affine. Reported per k:
- top-1 agreement with the dense model on the 20 offline ImageNet images. Two folds: blocks are
  chosen (and batch norms recalibrated) on augmented views of 10 images and evaluated on the other
  10, then the other way round, so no image is scored by a model calibrated on it;
- ONNX Runtime latency at batch 1, dense and pruned timed alternately in this one process (fold 1's
  model), and the MACs. The dense reference goes through merge_blocks too (its batch norms folded, the
  same rewrite the pruned model gets), so the speed-up is that of the removed non-linearities alone.
Variants: "linearised" (pretrained statistics kept) and "+ BN recalibration" (the batch norms inside
the chosen blocks re-estimated on the calibration views, since their inputs changed).

    python benchmarks/depth_pruning.py [--blocks 2 4 6] [--threads 2] [--runs 200]

Results go to benchmarks/results/depth_pruning.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torchvision
from common import (
    command_line,
    interval_cell,
    machine_info,
    machine_summary,
    markdown_table,
    speedup_fields,
    write_results,
)
from one_shot_accuracy import imagenet_calibration_views

from prunefx.assets import imagenet_sample_images, load_imagenet_batch, mobilenet_v2_weights_path
from prunefx.graph import Program, capture, count
from prunefx.graph.rebatch import rebatch
from prunefx.models import load_weights
from prunefx.passes.linearize_blocks import linearize_blocks
from prunefx.passes.merge_blocks import merge_blocks
from prunefx.runtime import compare_latency, export_onnx, onnx_runner

NAME = "depth_pruning"
VARIANTS = ("linearised", "+ BN recalibration")


def ranking(dense: Program, calibration, most: int) -> list[str]:
    """Every block worth linearising (its merge saves MACs), least damaging first: what linearize_blocks'
    `count` ranks by, computed once per fold for every k."""
    stats = linearize_blocks(dense.clone(), config={"count": most, "mode": "abrupt", "calibration": calibration,
                                                    "progress": False}).stats
    scored = [c for c in stats["candidates"] if "damage" in c]
    return [c["name"] for c in sorted(scored, key=lambda c: c["damage"])]


def depth_prune(dense: Program, blocks: list[str], calibration, recalibrate: bool) -> Program:
    """Linearise `blocks` (abrupt), optionally recalibrate the batch norms inside them, merge."""
    linearized = linearize_blocks(dense.clone(), config={"blocks": blocks, "mode": "abrupt", "calibration": calibration,
                                                         "recalibrate": recalibrate})
    return merge_blocks(linearized.program.eval(), config={})


def latency(dense: Program, pruned: Program, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="prunefx-depth-") as tmp:
        one = [rebatch(program.clone(), 1) for program in (dense, pruned)]
        paths = [export_onnx(program, Path(tmp) / f"{i}.onnx").path for i, program in enumerate(one)]
        runners = [onnx_runner(path, one[0].example_inputs, threads=args.threads) for path in paths]
        result = compare_latency(*runners, warmup=20, runs=args.runs, threads=args.threads, progress=True)
    return {"dense_ms": result.a.median_ms, "pruned_ms": result.b.median_ms, **speedup_fields(result)}


def run(args) -> dict:
    images, labels = load_imagenet_batch(224)
    paths = [path for path, _ in imagenet_sample_images()]
    model = torchvision.models.mobilenet_v2(weights=None)
    load_weights(model, mobilenet_v2_weights_path())
    folds = []
    for calibration_paths, held_out in ((paths[0::2], slice(1, None, 2)), (paths[1::2], slice(0, None, 2))):
        print(f"[mobilenet_v2] ranking blocks on fold {len(folds) + 1}", file=sys.stderr)
        dense = capture(model.eval(), images[held_out], name="mobilenet_v2").eval()
        calibration = imagenet_calibration_views(calibration_paths, args.seed)
        folds.append((dense, images[held_out], calibration, ranking(dense, calibration, max(args.blocks))))
    rows = []
    for k in args.blocks:
        for variant in VARIANTS:
            agree, total, row = 0, 0, {"blocks": k, "variant": variant, "chosen": []}
            for index, (dense, held_out, calibration, ranked) in enumerate(folds):
                print(f"[mobilenet_v2] {k} blocks, {variant}, fold {index + 1}", file=sys.stderr)
                merged = depth_prune(dense, ranked[:k], calibration, variant != "linearised")
                pruned = merged.program
                with torch.no_grad():
                    agree += int((pruned(held_out).argmax(1) == dense(held_out).argmax(1)).sum())
                total += len(held_out)
                row["chosen"].append(ranked[:k])
                if index == 0:
                    row.update(macs_kept=count(pruned).macs / count(dense).macs, merges=len(merged.stats["merges"]))
                    if variant == VARIANTS[-1]:  # the reference has its batch norms folded too
                        row.update(latency(merge_blocks(dense.clone(), config={}).program, pruned, args))
            row["agreement"] = agree / total
            rows.append(row)
    return {"images": len(images), "runs": rows}


def markdown(report: dict) -> str:
    lines = ["# Depth pruning (UPDP, one-shot) on pretrained ImageNet MobileNetV2\n",
             f"Command: `{report['command']}`\n", machine_summary(report["machine"]) + "\n",
             "Blocks linearised abruptly (no training), chosen by output divergence on calibration views; "
             "two folds of 10 calibration / 10 evaluation images cover all 20 offline images. Latency: "
             "ONNX Runtime, batch 1, dense (batch norms folded) and pruned alternately in one process "
             "(fold 1's model).\n"]
    rows = [[r["blocks"], r["variant"], f"{r['macs_kept']:.3f}", r["merges"],
             f"**{100 * r['agreement']:.0f}**",
             f"{r['dense_ms']:.2f} / {r['pruned_ms']:.2f}" if "speedup" in r else "",
             f"**{r['speedup']:.2f}x**{interval_cell(r)}" if "speedup" in r else "",
             "; ".join(", ".join(c) for c in r["chosen"])]
            for r in report["runs"]]
    lines.append(markdown_table(["blocks", "variant", "MACs kept", "merges", "top-1 agreement %",
                                 "latency dense / pruned ms", "speed-up", "blocks chosen (fold 1; fold 2)"], rows))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", nargs="+", type=int, default=[2, 4, 6])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"command": command_line(), "machine": machine_info(threads=args.threads), **run(args)}
    _, md_path = write_results(NAME, report, markdown(report))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
