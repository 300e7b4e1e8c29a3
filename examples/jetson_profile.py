"""The workstation half of deploying to a Jetson, and the board half printed (or run, on the board):
prune a model, write the dense and pruned ONNX files (each checked against torch), time them side by
side with `prunefx bench`, and print the commands that copy them over and time and profile them with
trtexec on the board.

How-to: docs/howto/jetson.md. Run it on the workstation (ONNX Runtime timing), then on the board with
`--backend trtexec` (JetPack's trtexec, FP16 by default):

    .venv/bin/python examples/jetson_profile.py --model torchvision:mobilenet_v2 -o out/jetson
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import torch

import prunefx
from prunefx.cli import main as prunefx_cli
from prunefx.models import build_model, parse_input_shape
from prunefx.passes import remove_channels
from prunefx.runtime import check_parity, export_onnx


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="torchvision:mobilenet_v2", help="any reference `prunefx inspect` takes")
    parser.add_argument("--input-shape", default="1x3x224x224", help="batch 1, as deployed")
    parser.add_argument("--macs", type=float, default=0.5, help="fraction of the MACs to keep")
    parser.add_argument("--round-to", type=int, default=8, help="width multiple: 8 for FP16 tensor cores")
    parser.add_argument("--backend", choices=("ort", "trtexec"), default="ort",
                        help="ort: time here with ONNX Runtime; trtexec: time on this board with TensorRT")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp16", help="trtexec precision")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model")
    parser.add_argument("-o", "--output", default="out/jetson", help="output folder")
    return parser.parse_args(argv)


def board_commands(dense: Path, pruned: Path, precision: str) -> list[str]:
    """What to run on the board (see the how-to for power modes and clocks)."""
    files = f"{shlex.quote(str(dense))} {shlex.quote(str(pruned))}"
    return [f"scp {files} jetson:models/",
            "sudo nvpmodel -m 0 && sudo jetson_clocks",
            f"sudo prunefx bench models/{dense.name} --vs models/{pruned.name} --backend trtexec "
            f"--precision {precision} --json",
            f"sudo prunefx profile models/{pruned.name} --backend trtexec --precision {precision} --top 15"]


def main(argv=None) -> dict:
    args = parse_args(argv)
    example = torch.randn(parse_input_shape(args.input_shape))
    dense = prunefx.capture(build_model(args.model).module, example, name=args.model)
    step = (remove_channels, {"macs": args.macs, "round_to": args.round_to, "importance": "l2"})
    pruned = prunefx.Pipeline([step]).run(dense).program

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    files = {"dense.onnx": dense, "model.onnx": pruned}
    parity = {}
    for name, program in files.items():
        path = export_onnx(program, out / name).path
        parity[name] = check_parity(program, path).relative
        print(f"{path}: torch against ONNX Runtime, relative error {parity[name]:.1e}")

    bench = ["bench", str(out / "dense.onnx"), "--vs", str(out / "model.onnx"), "--runs", str(args.runs),
             "--backend", args.backend]
    if args.backend == "trtexec":
        bench += ["--precision", args.precision]
    print("$ prunefx " + shlex.join(bench))
    status = prunefx_cli(bench)
    if args.backend == "ort":
        print("\nOn the board:")
        for line in board_commands(out / "dense.onnx", out / "model.onnx", args.precision):
            print("  " + line)
    summary = {"model": args.model, "parity": parity, "bench_status": status}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
