"""A speed-up measured again by a separate process with its own timer: the oracle for the cuda backend's
budgets (benchmarks/gpu_speedup.py, `make gpu-check`).

    python benchmarks/remeasure_speedup.py DENSE.pt2 CHOSEN.pt2 --batch 32 [--precision fp16] [--rounds 5]
        [--json OUT]

prunefx loads and places the two Programs (fp16 or bf16, channels_last, as `--backend cuda` deploys them),
and none of its timing code runs: on a GPU, Triton's `do_bench_cudagraph` times each model (its own CUDA
graph, its own repetitions and statistics); on a CPU (a smoke run), torch.utils.benchmark's
`blocked_autorange`. Dense and chosen alternate for `--rounds` rounds; the speed-up is the median over
rounds of the ratio. Prints one JSON line and writes it to `--json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from prunefx.graph import Program
from prunefx.graph.rebatch import rebatch
from prunefx.runtime.cuda.graph import placed

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _callable(path: Path, batch: int, precision: str, on_gpu: bool):
    program = Program.load(path).eval()
    if int(program.example_inputs[0].shape[0]) != batch:
        program = rebatch(program, batch)
    if not on_gpu:
        module, inputs = program.module, program.example_inputs
    else:
        # placed as the cuda backend places a model (its timer is what this script checks)
        module, inputs = placed(program.module, program.example_inputs, DTYPES[precision], "cuda")

    def call():
        with torch.inference_mode():
            return module(*inputs)

    for _ in range(3):  # cuDNN autotuning and lazy initialisation happen outside the timing
        call()
    return call


def _ms(call, on_gpu: bool) -> float:
    if on_gpu:
        from triton.testing import do_bench_cudagraph

        return float(do_bench_cudagraph(call, rep=200))
    from torch.utils.benchmark import Timer

    return 1e3 * Timer("call()", globals={"call": call}).blocked_autorange(min_run_time=0.2).median


def remeasure(dense: Path, chosen: Path, *, batch: int, precision: str, rounds: int) -> dict:
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    calls = [_callable(path, batch, precision, on_gpu) for path in (dense, chosen)]
    samples = [[_ms(call, on_gpu) for call in calls] for _ in range(rounds)]
    return {"dense_ms": statistics.median(s[0] for s in samples), "ms": statistics.median(s[1] for s in samples),
            "speedup": statistics.median(s[0] / s[1] for s in samples), "rounds": rounds, "batch": batch,
            "precision": precision if on_gpu else "fp32",
            "timer": "triton.testing.do_bench_cudagraph" if on_gpu else "torch.utils.benchmark blocked_autorange",
            "device": torch.cuda.get_device_name() if on_gpu else "cpu"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dense", type=Path)
    parser.add_argument("chosen", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precision", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = remeasure(args.dense, args.chosen, batch=args.batch, precision=args.precision, rounds=args.rounds)
    line = json.dumps(result)
    print(line)
    if args.json:
        args.json.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
