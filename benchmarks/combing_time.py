"""How long dependency analysis (combing) takes on ResNet-50 and ViT-B/16 at 224x224.

Issue 3 asks for under 2 s each on these machines. Capture is not timed, only
`find_channel_groups` (label propagation, components, groups, blocked report); median of --runs.

    .venv/bin/python benchmarks/combing_time.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from common import command_line, machine_info, machine_summary, markdown_table, write_results

from prunefx.graph import capture
from prunefx.graph.channels.groups import find_channel_groups

MODELS = {"resnet50": torchvision.models.resnet50, "vit_b_16": torchvision.models.vit_b_16}


def time_model(name: str, runs: int) -> dict:
    program = capture(MODELS[name]().eval(), torch.randn(1, 3, 224, 224), name=name)
    seconds, combing = [], None
    for _ in range(runs):
        start = time.perf_counter()
        combing = find_channel_groups(program.module)
        seconds.append(time.perf_counter() - start)
    return {"model": name, "median_s": statistics.median(seconds), "max_s": max(seconds),
            "groups": len(combing.groups), "blocked_groups": len(combing.blocked), "nodes": len(program.graph.nodes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    info = machine_info(runs=args.runs, input_shape=[1, 3, 224, 224])
    rows = [time_model(name, args.runs) for name in MODELS]
    table = markdown_table(["model", "graph nodes", "groups", "blocked groups", "median s", "max s"],
                           [[r["model"], r["nodes"], r["groups"], r["blocked_groups"], f"{r['median_s']:.3f}",
                             f"{r['max_s']:.3f}"] for r in rows])
    markdown = (f"# Combing time (dependency analysis)\n\nProduced by `{command_line()}` on {info['date_utc']} UTC.\n\n"
                f"- Machine: {machine_summary(info)}.\n- Random weights, input 1x3x224x224, {args.runs} runs each.\n\n"
                f"{table}\n")
    write_results("combing_time", {"machine": info, "command": command_line(), "results": rows}, markdown)
    print(table)


if __name__ == "__main__":
    main()
