"""How long the latency-aware channel choice takes: remove_channels to a fraction of a per-layer latency
table's time (a budget's `--choose-by latency` selection, the table given), and to half the MACs with the table
(`prune --macs 0.5 --choose-by latency`: the fastest plan by the table that loses no more importance than the MACs
choice), on seven models at 224x224.

The table is written here, not timed: stairs of 8 input and 32 output channels plus a fixed launch, the shape
a GPU's kernels give, so that many narrower widths save nothing and the knapsack searches as it does on a
measured table. Timed: the whole remove_channels call (importance, the choice, the removal), median of --runs;
capture is not timed. The widths it chose are summarised by the parameters kept.

    .venv/bin/python benchmarks/latency_choice_speed.py [--runs 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from common import command_line, machine_info, machine_summary, markdown_table, write_results

from prunefx.graph import count
from prunefx.loading import model_and_program
from prunefx.passes.remove_channels import remove_channels

MODELS = ("torchvision:resnet101", "torchvision:vit_b_16", "torchvision:vit_l_16", "torchvision:swin_t",
          "torchvision:convnext_tiny", "torchvision:mobilenet_v3_large", "timm:mobilenetv4_conv_medium")
TARGETS = (("layer_time", 0.45), ("layer_time", 0.7), ("macs", 0.5))  # of the dense model's table time, or MACs


def stair_table(layer, in_channels: int, out_channels: int) -> float:
    """ms of one layer at these widths: 0.002 + ceil(in / 8) * ceil(out / 32) * kernel area * positions / groups; a
    layer norm (one width): 0.002 + ceil(in / 8) * positions."""
    positions = math.prod(layer.input_shape[2:] if layer.kind == "conv2d" else layer.input_shape[:-1])
    if layer.kind == "layer_norm":
        return 0.002 + math.ceil(in_channels / 8) * positions * 1e-7
    return 0.002 + (math.ceil(in_channels / 8) * math.ceil(out_channels / 32) * math.prod(layer.kernel)
                    * positions / max(layer.groups, 1) * 1e-7)


def time_model(reference: str, runs: int) -> list[dict]:
    _, dense = model_and_program(reference, input_shape="1x3x224x224")
    rows = []
    for kind, fraction in TARGETS:
        seconds, program = [], None
        for _ in range(runs):
            program = dense.clone()
            start = time.perf_counter()
            remove_channels(program, config={kind: fraction, "latency_table": stair_table, "strict": False})
            seconds.append(time.perf_counter() - start)
        rows.append({"model": reference, "target": kind, "fraction": fraction, "median_s": statistics.median(seconds),
                     "max_s": max(seconds), "params_kept": count(program).params / count(dense).params,
                     "macs_kept": count(program).macs / count(dense).macs})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    info = machine_info(runs=args.runs, input_shape=[1, 3, 224, 224])
    rows = [row for reference in MODELS for row in time_model(reference, args.runs)]
    asked = {"layer_time": "table time", "macs": "MACs"}
    table = markdown_table(["model", "target", "params kept", "MACs kept", "median s", "max s"],
                           [[r["model"], f"{asked[r['target']]} {r['fraction']:.2f}", f"{r['params_kept']:.3f}",
                             f"{r['macs_kept']:.3f}", f"{r['median_s']:.2f}", f"{r['max_s']:.2f}"] for r in rows])
    markdown = (f"# Latency-aware channel choice: time of remove_channels with a latency table\n\n"
                f"Produced by `{command_line()}` on {info['date_utc']} UTC.\n\n"
                f"- Machine: {machine_summary(info)}.\n- Random weights, input 1x3x224x224, a stair-shaped table "
                f"written by the script (no timing of layers), {args.runs} runs each.\n\n{table}\n")
    write_results("latency_choice_speed", {"machine": info, "command": command_line(), "results": rows}, markdown)
    print(table)


if __name__ == "__main__":
    main()
