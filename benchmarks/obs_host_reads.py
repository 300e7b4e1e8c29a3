"""How often the OBS elimination waits on its device: host reads of tensor values inside `eliminate`.

On a GPU each read of a tensor's value by the host (`.cpu()`, `float()`, `bool()`, `.item()`, a boolean-mask index,
which calls `nonzero()`) and each copy to the device that is not `non_blocking` waits until the device's queue of
small kernels has run. This counts them on the CPU, where the code path is the same, during a calibrated
`prunefx prune MODEL --macs 0.5 --calibrate imagenet-sample` (one process, the counting wrapped around
graph/channels/obs_elimination.eliminate), with the elimination's seconds from the report. What the reads cost on a
GPU is for `make gpu-check` (its gpu_tool_speed times the elimination there).

    .venv/bin/python benchmarks/obs_host_reads.py [--model torchvision:resnet50]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import torch
from common import command_line, machine_info, machine_summary, markdown_table, write_results

import prunefx.graph.channels.saliency as saliency
from prunefx.cli import main as prunefx_main

READS = ("__bool__", "__float__", "__int__", "item", "tolist", "cpu", "nonzero")


class Counted:
    """Counts, while `inside`, the calls of torch.Tensor's reading methods and of `.to` by whether it may wait."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self.inside = False
        for name in READS:
            setattr(torch.Tensor, name, self._wrapped(name, getattr(torch.Tensor, name)))
        original_to = torch.Tensor.to

        def to(tensor, *args, **kwargs):
            if self.inside:
                self.counts["to (non_blocking)" if kwargs.get("non_blocking") else "to (waits)"] += 1
            return original_to(tensor, *args, **kwargs)
        torch.Tensor.to = to

    def _wrapped(self, name, original):
        def wrapped(tensor, *args, **kwargs):
            if self.inside:
                self.counts[name] += 1
            return original(tensor, *args, **kwargs)
        return wrapped

    def around(self, function):
        def counted(*args, **kwargs):
            self.inside = True
            try:
                return function(*args, **kwargs)
            finally:
                self.inside = False
        return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="torchvision:resnet50")
    args = parser.parse_args()
    counter = Counted()
    saliency.eliminate = counter.around(saliency.eliminate)
    with tempfile.TemporaryDirectory(prefix="obs-host-reads-") as folder:
        try:
            prunefx_main(["-q", "prune", args.model, "--macs", "0.5", "--calibrate", "imagenet-sample",
                          "-o", str(Path(folder) / "out")])
        except SystemExit as stop:
            if stop.code:
                raise
        seconds = json.loads((Path(folder) / "out" / "report.json").read_text())["seconds"]
    elimination = next(value for key, value in seconds.items() if key.endswith("elimination"))
    counts = dict(sorted(counter.counts.items()))
    reads = sum(count for name, count in counts.items() if name in READS)
    row = {"model": args.model, "reads": reads, "copies_that_wait": counts.get("to (waits)", 0),
           "by_kind": counts, "elimination_s": elimination}
    info = machine_info(model=args.model)
    table = markdown_table(["model", "host reads", "copies to the device that wait", "by kind", "elimination s"],
                           [[row["model"], reads, row["copies_that_wait"],
                             ", ".join(f"{name} {count}" for name, count in counts.items()),
                             f"{elimination:.2f}"]])
    markdown = (f"# Host reads in the OBS elimination\n\nProduced by `{command_line()}` on {info['date_utc']} UTC.\n\n"
                f"- Machine: {machine_summary(info)}.\n- `prunefx prune {args.model} --macs 0.5 --calibrate "
                f"imagenet-sample`, the reads counted inside `eliminate`; on a GPU each one waits for the device.\n\n"
                f"{table}\n")
    write_results("obs_host_reads", {"machine": info, "command": command_line(), "results": [row]}, markdown)
    print(table)


if __name__ == "__main__":
    main()
