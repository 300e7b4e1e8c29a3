"""long_call_readings: how far apart are a budget search's readings of a model whose calls are long?

A search reading (runtime/measure/speedup.py) times the dense model and a candidate side by side in this process
for ROUND_SECONDS. A ViT-L/16's pair of calls takes about a second on 2 cores, so a round holds few of them, and
how they are grouped decides what a burst on a shared machine does to the reading. This benchmark reads the same
two ONNX files (ViT-L/16, dense and at half its MACs) `--repeats` times in two ways, interleaved:

- "one pass": one block of 3 timed calls a side after 2 settling calls, a then b (what a 5 s round holds when its
  blocks only shrink until one pass fits);
- "fitted": compare_latency with `seconds=ROUND_SECONDS`, as a search reading times, its blocks fitted by
  runtime/measure/timing_loop.py's fitted_blocks (at least MIN_PASSES passes a round where calls allow).

Per way: each reading, their spread (largest / smallest) and their median distance from a reference reading of
60 runs a side (blocks of 3 after a settling call, about 90 s), taken after them.

    .venv/bin/python benchmarks/long_call_readings.py --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import command_line, machine_info, machine_summary, markdown_table, publish_results

NAME = "long_call_readings"
MODEL, MACS = "timm:vit_large_patch16_224", 0.5


def make_pair(folder: Path) -> tuple[Path, Path, np.ndarray]:
    """The dense model and one pruned to MACS of its MACs (l2 importance), exported at batch 1, and an input."""
    import prunefx
    from prunefx.models import build_model
    from prunefx.passes import remove_channels
    from prunefx.runtime import export_onnx

    torch.manual_seed(0)
    spec = build_model(MODEL)
    example = torch.randn(1, 3, 224, 224)
    program = prunefx.capture(spec.module.eval(), example, name="dense")
    pruned = prunefx.Pipeline([(remove_channels, {"macs": MACS, "importance": "l2"})]).run(program)
    return (export_onnx(program, folder / "dense.onnx").path, export_onnx(pruned.program, folder / "model.onnx").path,
            example.numpy())


def ways(seconds: float) -> dict[str, dict]:
    """Each way's compare_latency arguments."""
    return {"one pass": {"warmup": 10, "runs": 3, "block": 3, "settle": 2},
            "fitted": {"warmup": 10, "runs": 50, "seconds": seconds}}


def read(runners: tuple, threads: int, **how) -> dict:
    from prunefx.runtime.measure.latency import compare_latency

    comparison = compare_latency(*runners, threads=threads, **how)
    return {"speedup": comparison.speedup, "runs": comparison.a.runs, "dense_ms": comparison.a.median_ms,
            "model_ms": comparison.b.median_ms}


def summary(readings: list[dict], reference: float) -> dict:
    points = [r["speedup"] for r in readings]
    return {"spread": max(points) / min(points), "median_off": statistics.median(abs(p / reference - 1) for p in points),
            "worst_off": max(abs(p / reference - 1) for p in points)}


def markdown(results: dict) -> str:
    rows = [[way, i, f"{r['speedup']:.3f}x", r["runs"], f"{r['dense_ms']:.0f} / {r['model_ms']:.0f}"]
            for way, readings in results["ways"].items() for i, r in enumerate(readings)]
    verdicts = [f"- **{way}**: readings spread {s['spread']:.2f}x (largest / smallest); their median distance from "
                f"the reference {100 * s['median_off']:.1f} %, the largest {100 * s['worst_off']:.1f} %"
                for way, s in results["summary"].items()]
    reference = results["reference"]
    return "\n\n".join([
        f"# Readings of a long-call pair: {' against '.join(results['ways'])}\n\n`{results['command']}`",
        machine_summary(results["machine"]),
        f"{results['pair']}; ONNX Runtime, batch 1, {results['threads']} threads, the same two sessions for every "
        f"reading, the ways interleaved repeat by repeat (which goes first alternates). Reference: "
        f"{reference['speedup']:.3f}x, {reference['runs']} runs a side ({reference['dense_ms']:.0f} / "
        f"{reference['model_ms']:.0f} ms), after the readings.",
        "\n".join(verdicts),
        markdown_table(["way", "repeat", "speed-up", "runs a side", "dense / model ms"], rows)])


def main(argv: list[str] | None = None) -> int:
    from prunefx.runtime.measure.speedup import ROUND_SECONDS
    from prunefx.runtime.ort.runners import OnnxRunnerMaker

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    chosen = ways(ROUND_SECONDS)
    with tempfile.TemporaryDirectory(prefix="long-call-readings-") as tmp:
        dense, model, example = make_pair(Path(tmp))
        runners = tuple(OnnxRunnerMaker(path, [example], threads=args.threads)() for path in (dense, model))
        readings: dict[str, list] = {way: [] for way in chosen}
        for repeat in range(args.repeats):
            order = list(chosen) if repeat % 2 == 0 else list(chosen)[::-1]
            for way in order:
                readings[way].append(read(runners, args.threads, **chosen[way]))
                print(f"{repeat} {way}: {readings[way][-1]['speedup']:.3f}x", file=sys.stderr, flush=True)
        reference = read(runners, args.threads, warmup=5, runs=60, block=3, settle=1)
    results = {"command": command_line(), "machine": machine_info(threads=args.threads),
               "pair": f"{MODEL} (random weights) against {MACS} of its MACs (l2)", "threads": args.threads,
               "ways": readings, "reference": reference,
               "summary": {way: summary(found, reference["speedup"]) for way, found in readings.items()}}
    return publish_results(NAME, results, markdown(results))


if __name__ == "__main__":
    sys.exit(main())
