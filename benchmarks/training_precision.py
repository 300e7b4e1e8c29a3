"""Recovery training in bf16 against fp32: images per second of the distillation step, side by side.

    .venv/bin/python benchmarks/training_precision.py [--model torchvision:resnet50] [--input-shape 64x3x224x224]
        [--device cuda|cpu] [--steps 20] [--warmup 5] [--rounds 3] [--out FILE.json]

Captures MODEL with random weights at the input shape (its batch is the training batch), then trains it with the
trainer of the `distill` pass against a frozen copy of itself (knowledge distillation and a task loss, SGD) on
random batches that are on the device already, so that the loader is not what is measured: `fp32`, then `bf16`
(TrainConfig.precision), the order turned each round. A run's images per second are its steps after `warmup`,
timed from the end of one step (the device synchronised) to the end of the last. Each round's speed-up is bf16's
images per second over fp32's, in that round; the report gives each round's and their median, and both runs'
last losses (bf16 rounds its products: close to, not equal to, fp32's). On a CPU without bfloat16 arithmetic
(no AVX-512 BF16 or AMX), bf16 is emulated: the figure then says only that the path runs. Prints one JSON
object; writes it to --out too. Publishes nothing: run it where the training runs (`make gpu-check` does).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from prunefx.loading import model_and_program
from prunefx.passes.training.engine import TrainConfig, Trainer

PRECISIONS = ("fp32", "bf16")


def random_batches(program, classes: int, device: torch.device, count: int = 4) -> list:
    generator = torch.Generator().manual_seed(0)
    shape = tuple(program.example_inputs[0].shape)
    return [(torch.randn(shape, generator=generator).to(device),
             torch.randint(0, classes, (shape[0],), generator=generator).to(device)) for _ in range(count)]


def timed_run(program, teacher, batches, *, precision: str, device: torch.device, steps: int, warmup: int) -> dict:
    """One training run; images per second over its steps after `warmup`."""
    ends = []

    def step_ended(trainer, step):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ends.append(time.perf_counter())

    config = TrainConfig(steps=warmup + steps, lr=0.01, progress=False, precision=precision, device=str(device))
    trainer = Trainer(program, teacher=teacher, data=batches, config=config, after_step=[step_ended])
    trainer.fit()
    seconds = ends[-1] - ends[warmup - 1]
    images = steps * program.example_inputs[0].shape[0]
    return {"images_per_second": images / seconds, "last_loss": trainer.log[-1]["loss"]}


def device_facts(device: torch.device) -> dict:
    facts = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        facts.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                     cudnn=torch.backends.cudnn.version(),
                     bf16_arithmetic=torch.cuda.is_bf16_supported(including_emulation=False))
    else:
        facts.update(threads=torch.get_num_threads())
    return facts


def run(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    _, program = model_and_program(args.model, input_shape=args.input_shape, keep_model=False)
    program = program.eval()
    teacher = copy.deepcopy(program)
    classes = int(program.module(*program.example_inputs).shape[-1])
    batches = random_batches(program, classes, device)
    rounds = []
    for index in range(args.rounds):
        order = PRECISIONS if index % 2 == 0 else PRECISIONS[::-1]
        runs = {precision: timed_run(copy.deepcopy(program), teacher, batches, precision=precision, device=device,
                                     steps=args.steps, warmup=args.warmup) for precision in order}
        runs["speedup"] = runs["bf16"]["images_per_second"] / runs["fp32"]["images_per_second"]
        rounds.append(runs)
    return {"model": args.model, "input_shape": list(program.example_inputs[0].shape), "steps": args.steps,
            "warmup": args.warmup, "machine": device_facts(device), "rounds": rounds,
            "speedup_median": statistics.median(r["speedup"] for r in rounds),
            "images_per_second_median": {p: statistics.median(r[p]["images_per_second"] for r in rounds)
                                         for p in PRECISIONS}}


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="torchvision:resnet50")
    parser.add_argument("--input-shape", default="64x3x224x224", help="its batch is the training batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the timing (at least 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--steps, --warmup and --rounds take at least 1")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
