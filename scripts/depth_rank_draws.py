"""Is depth_vs_channel's block choice sensitive to its calibration batches? On the dense MobileNetV2-small that
benchmarks/depth_vs_channel.py cached in build/, run `linearize_blocks` (count K, both rankings) with the 4
calibration batches it reads from the training data, drawn with data seeds 0..N-1, and write which blocks each
draw picks to benchmarks/results/reproduced/depth_vs_channel_rank_draws.{json,md}:

    .venv/bin/python scripts/depth_rank_draws.py [--count 6] [--draws 6]

Why: at depth 6 ranked by damage per MAC, b3cdfb1's code and today's picked different blocks on one dense
model (benchmarks/results/headline_reproduction.md). This shows whether today's pass gives b3cdfb1's choice
under another draw of the same data, i.e. whether the ranking or the calibration draw moved it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the benchmark's own cache and batch size, and `common`'s writer

from common import command_line, machine_info, markdown_table, write_results  # noqa: E402
from fashion_mnist_accuracy import BATCH, CACHE  # noqa: E402

from prunefx.data.splits import fashion_mnist_data  # noqa: E402
from prunefx.graph import Program  # noqa: E402
from prunefx.passes.linearize_blocks import linearize_blocks  # noqa: E402

RANKS = ("damage", "damage_per_mac")


def chosen_blocks(dense: Program, count: int, rank: str, seed: int) -> list[str]:
    data = fashion_mnist_data(BATCH, validation=5000, seed=seed)
    calibration = [batch for batch, _ in zip(data.train, range(4))]  # as depth_vs_channel.depth_variant reads it
    result = linearize_blocks(dense.clone(), config={"count": count, "mode": "progressive", "ramp": 0.5,
                                                     "rank": rank, "calibration": calibration, "progress": False})
    return result.stats["chosen"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--draws", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    dense = Program.load(CACHE / "mobilenetv2_small" / "dense.pt2").eval()
    rows = [{"seed": seed, "rank": rank, "blocks": chosen_blocks(dense, args.count, rank, seed)}
            for seed in range(args.draws) for rank in RANKS]
    report = {"command": command_line(), "machine": machine_info(threads=2), "count": args.count, "rows": rows}
    text = "\n".join([f"# linearize_blocks (count {args.count}) under {args.draws} calibration draws\n",
                      f"`{report['command']}`\n",
                      markdown_table(["data seed", "rank", "blocks chosen"],
                                     [[r["seed"], r["rank"], ", ".join(r["blocks"])] for r in rows]), ""])
    write_results("depth_vs_channel_rank_draws", report, text, folder=BENCHMARKS / "results" / "reproduced")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
