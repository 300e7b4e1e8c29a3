"""fashion_mnist_loading: Fashion-MNIST's training step with the crop and flip applied per image (torchvision's
RandomCrop + RandomHorizontalFlip, one call per image under a per-image seed: the route since the loaders moved
to torch's DataLoader) against the batched RandomCropFlip (prunefx/data/augment.py: one vectorised call per
batch, each image's draw from a per-epoch table), side by side in one process.

Both routes read the same 55,000 in-memory training images through StaticBatches (0 workers, the Fashion-MNIST
default: nothing to decode) at batch `--batch`. Per route and round: the seconds to read `--batches` batches
(loader only), then the seconds per training step of ResNet-20 (forward, cross-entropy, backward, SGD) over
`--batches` steps, reading included. Routes alternate, `--rounds` times; medians reported. One torch thread.

    .venv/bin/python benchmarks/fashion_mnist_loading.py [--batch 128] [--batches 40] [--rounds 3]

Results: benchmarks/results/fashion_mnist_loading.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from common import RESULTS, command_line, machine_info, machine_summary, markdown_table, publish_results
from torch import nn
from torchvision.transforms import v2

from prunefx.data.splits import fashion_mnist_data, tensor_batches
from prunefx.models import build_model

NAME = "fashion_mnist_loading"
PER_IMAGE = "per image (torchvision RandomCrop + RandomHorizontalFlip, one call each)"
BATCHED = "batched (RandomCropFlip, one call per batch)"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the saved .json")
    return parser.parse_args(argv)


def loaders(batch: int) -> dict:
    batched = fashion_mnist_data(batch, validation=5000).train
    source = batched.source  # the same images, labels and normalisation, augmented per image instead
    crop_flip = v2.Compose([v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip()])
    per_image = tensor_batches(source.images, source.labels, batch, shuffle=True, transform=crop_flip,
                               prepare=batched.collate_fn.prepare)
    return {PER_IMAGE: per_image, BATCHED: batched}


def read_seconds(loader, count: int) -> float:
    batches = iter(loader)
    started = time.perf_counter()
    for _ in range(count):
        next(batches)
    return time.perf_counter() - started


def step_seconds(loader, model: nn.Module, optimizer, count: int) -> float:
    batches = iter(loader)
    started = time.perf_counter()
    for _ in range(count):
        images, labels = next(batches)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / count


def measure(args) -> list[dict]:
    routes = loaders(args.batch)
    model = build_model("prunefx:resnet20").module.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    reads: dict[str, list[float]] = {name: [] for name in routes}
    steps: dict[str, list[float]] = {name: [] for name in routes}
    for round_ in range(args.rounds):
        for name, loader in routes.items():  # alternated: drift of the shared machine hits both
            loader.set_epoch(round_)
            reads[name].append(read_seconds(loader, args.batches) / args.batches)
            steps[name].append(step_seconds(loader, model, optimizer, args.batches))
            print(f"[round {round_}] {name}: {1000 * reads[name][-1]:.1f} ms a batch read, "
                  f"{1000 * steps[name][-1]:.1f} ms a step", file=sys.stderr)
    return [{"route": name, "read_ms_per_batch": 1000 * statistics.median(reads[name]),
             "step_ms": 1000 * statistics.median(steps[name]),
             "read_rounds_ms": [1000 * v for v in reads[name]], "step_rounds_ms": [1000 * v for v in steps[name]]}
            for name in routes]


def markdown(report: dict) -> str:
    settings, rows = report["settings"], report["routes"]
    before, after = rows
    table = markdown_table(["augmentation", "reading a batch (ms, median)", "training step incl. reading (ms, median)",
                            "step rounds (ms)"],
                           [(r["route"], f"{r['read_ms_per_batch']:.1f}", f"{r['step_ms']:.1f}",
                             ", ".join(f"{v:.1f}" for v in r["step_rounds_ms"])) for r in rows])
    return "\n".join([
        "# Fashion-MNIST training step: per-image against batched crop and flip", "",
        f"- Command: `{report['command']}`",
        f"- Machine: {machine_summary(report['machine'])}; load average at start "
        f"{report['machine']['load_average_at_start']}, at the end {report['machine']['load_average_at_end']}"
        + (f"; scheduling group {report['machine']['autogroup']}" if "autogroup" in report["machine"] else ""),
        f"- ResNet-20 (prunefx:resnet20), batch {settings['batch']}, {settings['batches']} steps a round, "
        f"{settings['rounds']} rounds alternated, 1 torch thread, 0 loader workers", "", table, "",
        f"Reading a batch: {before['read_ms_per_batch'] / after['read_ms_per_batch']:.1f}x faster batched; "
        f"the training step: {before['step_ms'] / after['step_ms']:.2f}x "
        f"({before['step_ms']:.1f} -> {after['step_ms']:.1f} ms)."])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_only:
        report = json.loads((RESULTS / f"{NAME}.json").read_text())
        return publish_results(NAME, report, markdown(report))
    torch.set_num_threads(1)
    info = machine_info(torch_threads=1)
    group = Path("/proc/self/autogroup")  # timings taken at -20 beat others' work at 19 (Linux autogroups)
    if group.is_file():
        info["autogroup"] = group.read_text().strip()
    routes = measure(args)
    info["load_average_at_end"] = list(os.getloadavg())
    report = {"command": command_line(), "machine": info, "settings": vars(args), "routes": routes}
    return publish_results(NAME, report, markdown(report))


if __name__ == "__main__":
    sys.exit(main())
