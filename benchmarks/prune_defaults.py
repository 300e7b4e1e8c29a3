"""prune_defaults: what `prunefx prune` gives a user who hands over calibration data and no other flag.

A Fashion-MNIST ResNet-20 is trained here (`--epochs`, cached in build/prune_defaults/; no test names
this checkpoint), saved as a .pt2, then pruned to half of its MACs by the real command line in a
separate process, as a user would run it:
- `prune MODEL --macs 0.5` (no data: l2 magnitudes);
- `prune MODEL --macs 0.5 --calibrate fashion-mnist --importance l2 --no-compensate` (the old default
  with data: l2 and batch-norm recalibration only);
- `prune MODEL --macs 0.5 --calibrate fashion-mnist` (the default with data: obs, compensation and
  batch-norm recalibration).
Each pruned model.pt2 is evaluated on the 10,000 test images, with no fine-tuning.

    .venv/bin/python benchmarks/prune_defaults.py [--epochs 2] [--threads 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import BUILD, command_line, machine_info, machine_summary, markdown_table, write_results

from prunefx.data.splits import fashion_mnist_data
from prunefx.graph import Program, capture
from prunefx.models import build_model
from prunefx.passes.distill import distill
from prunefx.passes.training.engine import evaluate

NAME = "prune_defaults"
BATCH = 128
CACHE = BUILD / NAME
VARIANTS = {
    "no data (l2)": [],
    "data, l2 + recalibration (old default)": ["--calibrate", "fashion-mnist", "--importance", "l2",
                                               "--no-compensate"],
    "data, defaults (obs + compensation + recalibration)": ["--calibrate", "fashion-mnist"],
}


def trained_resnet20(data, epochs: int, seed: int = 0) -> tuple[Path, float]:
    path = CACHE / (f"resnet20_{epochs}epochs.pt2" if seed == 0 else f"resnet20_{epochs}epochs_seed{seed}.pt2")
    if not path.is_file():
        torch.manual_seed(seed)
        program = capture(build_model("prunefx:resnet20").module, next(iter(data.train))[0], name="resnet20")
        print(f"training ResNet-20 for {epochs} epochs", file=sys.stderr)
        program = distill(program, config={"data": data.train, "epochs": epochs, "kd_weight": 0.0, "lr": 0.1,
                                           "weight_decay": 5e-4, "momentum": 0.9, "warmup_steps": 200,
                                           "seed": seed, "progress": True}).program.eval()
        path.parent.mkdir(parents=True, exist_ok=True)
        program.save(path)
    dense = Program.load(path).eval()
    return path, evaluate(dense, data.test)["accuracy"]


def prune_with_cli(model: Path, flags: list[str], output: Path, threads: int) -> tuple[dict, float]:
    command = [sys.executable, "-m", "prunefx", "prune", str(model), "--macs", "0.5", *flags, "-o", str(output)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment)
    return json.loads((output / "report.json").read_text()), time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the dense model's initialisation and data order "
                        "(0, the published run; others measure how far a figure moves with the seed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = fashion_mnist_data(BATCH, validation=0)
    model, dense_accuracy = trained_resnet20(data, args.epochs, args.seed)
    rows, runs = [], []
    for name, flags in VARIANTS.items():
        output = CACHE / "runs" / f"seed{args.seed}" / name.split(" ")[0].replace(",", "") / str(len(runs))
        report, seconds = prune_with_cli(model, flags, output, args.threads)
        accuracy = evaluate(Program.load(output / "model.pt2").eval(), data.test)["accuracy"]
        kept = report["macs_after"] / report["macs_before"]
        runs.append({"variant": name, "flags": flags, "importance": report["importance"],
                     "compensated": report["compensated"],
                     "recalibrated": report["recalibrate_batchnorm"] is not None, "macs_kept": kept,
                     "test_accuracy": accuracy, "points_vs_dense": 100 * (accuracy - dense_accuracy),
                     "seconds": seconds})
        rows.append([name, report["importance"], "yes" if report["compensated"] else "no",
                     "yes" if report["recalibrate_batchnorm"] else "no", f"{kept:.3f}", f"**{100 * accuracy:.2f}**",
                     f"{100 * (accuracy - dense_accuracy):+.2f}", f"{seconds:.0f}"])
    info = machine_info(threads=args.threads)
    result = {"command": command_line(), "machine": info, "epochs": args.epochs, "seed": args.seed,
              "dense_test_accuracy": dense_accuracy, "runs": runs}
    markdown = "\n".join([
        "# `prunefx prune --macs 0.5`: the defaults with and without calibration data", "",
        f"Produced by `{command_line()}`.", "", machine_summary(info), "",
        f"- Fashion-MNIST ResNet-20 trained here for {args.epochs} epochs: dense **{100 * dense_accuracy:.2f} %** "
        "on the 10,000 test images.",
        "- Each row is the real command line in its own process (`python -m prunefx prune MODEL --macs 0.5 "
        "FLAGS`); calibration: 256 training images; no fine-tuning.", "",
        markdown_table(["variant", "importance", "compensated", "BN recalibrated", "MACs kept", "test %",
                        "vs dense (points)", "seconds"], rows), ""])
    write_results(NAME, result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
