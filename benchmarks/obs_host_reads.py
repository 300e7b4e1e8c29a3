"""How often the OBS scoring and the compensation wait on their device: host reads of tensor values in them.

On a GPU each read of a tensor's value by the host (`.cpu()`, `float()`, `bool()`, `.item()`, a boolean-mask index,
which calls `nonzero()`) and each copy to the device that is not `non_blocking` waits until the device's queue of
small kernels has run. This counts them on the CPU, where the code path is the same, during a calibrated
`prunefx prune MODEL --macs 0.5 --calibrate imagenet-sample` (one process, the counting wrapped around
graph/channels/saliency._compute, the whole scoring, obs_elimination.eliminate inside it, and
compensation.compensate_removed_inputs), with their seconds from the report. What the reads cost on a GPU is
for `make gpu-check` (its gpu_tool_speed times these parts there).

    .venv/bin/python benchmarks/obs_host_reads.py [--model torchvision:resnet50]
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import tempfile
from pathlib import Path

import torch
from common import command_line, machine_info, machine_summary, markdown_table, write_results

import prunefx.graph.channels.saliency as saliency
from prunefx.cli import main as prunefx_main

READS = ("__bool__", "__float__", "__int__", "item", "tolist", "cpu", "nonzero")


class Counted:
    """Counts, per named scope that is running, the calls of torch.Tensor's reading methods and of `.to` with a
    device, by whether it may wait (a `.to` of a dtype alone copies to no device)."""

    def __init__(self):
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.active: list[str] = []
        for name in READS:
            setattr(torch.Tensor, name, self._wrapped(name, getattr(torch.Tensor, name)))
        original_to = torch.Tensor.to

        def to(tensor, *args, **kwargs):
            if any(isinstance(arg, (torch.device, str)) for arg in (*args, kwargs.get("device"))):
                self._count("to (non_blocking)" if kwargs.get("non_blocking") else "to (waits)")
            return original_to(tensor, *args, **kwargs)
        torch.Tensor.to = to

    def _count(self, name: str) -> None:
        for scope in self.active:
            self.counts[scope][name] += 1

    def _wrapped(self, name, original):
        def wrapped(tensor, *args, **kwargs):
            self._count(name)
            return original(tensor, *args, **kwargs)
        return wrapped

    def around(self, scope: str, function):
        def counted(*args, **kwargs):
            self.active.append(scope)
            try:
                return function(*args, **kwargs)
            finally:
                self.active.remove(scope)
        return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="torchvision:resnet50")
    args = parser.parse_args()
    counter = Counted()
    saliency.eliminate = counter.around("elimination", saliency.eliminate)
    saliency._compute = counter.around("scoring", saliency._compute)
    removal = importlib.import_module("prunefx.passes.remove_channels")  # the module, not the pass it exports
    removal.compensate_removed_inputs = counter.around("compensation", removal.compensate_removed_inputs)
    with tempfile.TemporaryDirectory(prefix="obs-host-reads-") as folder:
        try:
            prunefx_main(["-q", "prune", args.model, "--macs", "0.5", "--calibrate", "imagenet-sample",
                          "-o", str(Path(folder) / "out")])
        except SystemExit as stop:
            if stop.code:
                raise
        seconds = json.loads((Path(folder) / "out" / "report.json").read_text())["seconds"]
    rows = []
    for scope in ("scoring", "elimination", "compensation"):
        counts = dict(sorted(counter.counts[scope].items()))
        reads = sum(count for name, count in counts.items() if name in READS)
        rows.append({"model": args.model, "scope": scope, "reads": reads,
                     "copies_that_wait": counts.get("to (waits)", 0), "by_kind": counts,
                     "seconds": next(value for key, value in seconds.items() if key.endswith(scope))})
    info = machine_info(model=args.model)
    table = markdown_table(["model", "part", "host reads", "copies to the device that wait", "by kind", "seconds"],
                           [[row["model"], row["scope"], row["reads"], row["copies_that_wait"],
                             ", ".join(f"{name} {count}" for name, count in row["by_kind"].items()),
                             f"{row['seconds']:.2f}"] for row in rows])
    markdown = (f"# Host reads in the OBS scoring and the compensation\n\nProduced by `{command_line()}` on "
                f"{info['date_utc']} UTC.\n\n- Machine: {machine_summary(info)}.\n- `prunefx prune {args.model} "
                f"--macs 0.5 --calibrate imagenet-sample`, the reads counted inside the second-order scoring "
                f"(`saliency._compute`: the Hessians, their inverses and the elimination), inside its elimination "
                f"(`eliminate`) and inside the compensation after it (`compensate_removed_inputs`); on a GPU each "
                f"one waits for the device. A `.to` that names a device counts as a copy that waits unless non_blocking: "
                f"an upper bound, since on the GPU a tensor already there is not copied.\n\n{table}\n")
    write_results("obs_host_reads", {"machine": info, "command": command_line(), "results": rows}, markdown)
    print(table)


if __name__ == "__main__":
    main()
