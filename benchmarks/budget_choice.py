"""Budget choice on Fashion-MNIST: width x depth x INT8 chosen together against each dimension alone, and
against a MACs target, at the same measured budget.

For each model and budget S (a speed-up on ONNX Runtime, batch 1, the INT8 file in this CPU's lowering):
1. passes/choose_for_budget.budget_candidates: every combination of width, depth and INT8 searched to S,
   measured as whole models side by side with the dense one (confirmed), scored by one-shot KL damage;
2. the variants compared: "joint" (the combination choose_for_budget keeps: least KL among those that met),
   each dimension alone that met S ("width", "depth", "int8"), and "macs 1/S" (remove_channels to 1/S of
   the MACs, the MACs-target habit, with the same width options and the same batch-norm recalibration),
   measured the same way;
   At equal latency the budget searched is the speed-up the "macs 1/S" model measures, so all variants
   run equally fast and accuracy alone compares them;
3. each variant's test accuracy one-shot, then after the study's steps of knowledge distillation from the
   dense model (for INT8 variants that is quantization-aware training), gradients clipped at norm 5 as in
   the budget-kd recipe (depth is merged: its batch norms are folded, and unclipped SGD diverges).
The studies (STUDIES), rows of one results set: the CNNs at 2x and 4x; the CNNs at equal latency; the ViT at
2x and 4x. The dense models train `--train-epochs` epochs first (cached under build/int8_latency, shared with
benchmarks/int8_latency.py). Results: benchmarks/results/budget_choice.{json,md}.

    .venv/bin/python benchmarks/budget_choice.py                                   # every study
    .venv/bin/python benchmarks/budget_choice.py --studies vit --models vit_tiny_fmnist --output-dir build/x
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from common import RESULTS, command_line, machine_info, machine_summary, markdown_table, write_results
from int8_latency import trained_fashion_mnist

from prunefx.data.splits import fashion_mnist_data
from prunefx.graph import Program, capture, count
from prunefx.graph.errors import PrunefxError
from prunefx.models import build_model, load_weights
from prunefx.passes.budget.search import Measured
from prunefx.passes.choose_for_budget import budget_candidates
from prunefx.passes.distill import distill
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import remove_channels
from prunefx.passes.training.engine import evaluate
from prunefx.runtime import onnx_latency_pair

NAME = "budget_choice"
MODELS = ("resnet20", "mobilenetv2_small", "vit_tiny_fmnist")
WIDTH = {"importance": "l2", "ranking": "global", "round_to": 8, "max_ratio": 0.8}
BATCH = 128
SHIPPED_RESNET20 = Path(__file__).resolve().parent.parent / "prunefx" / "checkpoints" / "resnet20_fashion_mnist.pt"


@dataclass(frozen=True)
class Study:
    """One configuration of the comparison: its models and budgets, the KD steps each variant recovers with,
    and whether the budget is the MACs-target model's own measured speed-up (equal latency)."""

    title: str
    models: tuple[str, ...]
    budgets: tuple[float, ...]
    kd_steps: int
    equal_latency: bool = False
    tolerance: float = 0.15  # a candidate may be this much faster than the budget (choose_for_budget's default)


STUDIES = {
    "budgets": Study("Width, depth and INT8 at 2x and 4x", ("mobilenetv2_small", "resnet20"), (2.0, 4.0), 150),
    # a full epoch of KD (429 steps at batch 128), every candidate within 5 % of the MACs target's speed
    "equal_latency": Study("At equal measured latency", ("resnet20", "mobilenetv2_small"), (2.0,), 429,
                           equal_latency=True, tolerance=0.05),
    "vit": Study("The ViT", ("vit_tiny_fmnist",), (2.0, 4.0), 100),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", default=list(STUDIES), choices=STUDIES, metavar="STUDY",
                        help=f"studies to run ({', '.join(STUDIES)}; default: all)")
    parser.add_argument("--models", nargs="+", choices=MODELS, metavar="NAME",
                        help="only these models of each study (default: the study's own)")
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs the dense models train (1)")
    parser.add_argument("--test-batches", type=int, default=20, help="test batches of 128 evaluated (20)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (1)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per candidate (30; confirmation 4x)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where the .json and .md go")
    parser.add_argument("--markdown-from", type=Path, metavar="JSON", help="only rewrite the Markdown of a results file")
    return parser.parse_args(argv)


def test_accuracy(program: Program, data, batches: int) -> float:
    loader = [batch for batch, _ in zip(data.test, range(batches))]
    return 100 * evaluate(program, loader)["accuracy"]


def recovered(program: Program, dense: Program, data, steps: int) -> Program:
    lr = 0.001 if any("fake_quantize" in str(node.target) for node in program.graph.nodes) else 0.01
    return distill(program.clone().train(), config={"data": data.train, "steps": steps, "teacher": dense,
                                                    "kd_weight": 0.9, "temperature": 4.0, "lr": lr, "momentum": 0.9,
                                                    "weight_decay": 5e-4, "max_grad_norm": 5.0,  # the budget-kd recipe's
                                                    "progress": False}).program.eval()


def macs_target(dense: Program, budget: float, batches, latency) -> tuple[Program, dict]:
    """remove_channels to 1/S of the MACs (the MACs-target habit), with the same width options and batch-norm
    recalibration as choose_for_budget, measured and confirmed as every accepted budget candidate is."""
    macs = remove_channels(dense.clone(), config={**WIDTH, "macs": 1 / budget}).program
    macs = recalibrate_batchnorm(macs, config={"data": batches}).program
    measured = Measured.of(latency(dense, macs))
    measured.confirm(latency, dense, macs)
    return macs, measured.to_dict() | {"macs_kept": count(macs).macs / count(dense).macs}


def variants(dense: Program, budget: float, batches, latency, *, equal_latency: bool = False,
             tolerance: float = 0.15) -> tuple[dict, list[dict]]:
    """name -> (Program, measured row) for joint, the single dimensions that met, and macs 1/S. With
    `equal_latency` the budget searched is the MACs-target model's own measured speed-up, so every variant
    runs as fast as it does and accuracy alone tells them apart."""
    macs, macs_row = macs_target(dense, budget, batches, latency)
    searched = macs_row["speedup"] if equal_latency else budget
    if searched <= 1.0:
        raise PrunefxError(f"the MACs target 1/{budget:g} measured {searched:.2f}x: no speed-up to search for")
    started = time.perf_counter()
    candidates = budget_candidates(dense, {"speedup": searched, "latency": latency, "calibration": batches,
                                           "width": WIDTH, "tolerance": tolerance})
    search_seconds = time.perf_counter() - started
    met = [c for c in candidates if c.met]
    chosen = {}
    if met:
        joint = min(met, key=lambda c: c.proxy)
        chosen[f"joint ({' + '.join(joint.dimensions)})"] = joint
    for candidate in met:
        if len(candidate.dimensions) == 1:
            chosen[candidate.dimensions[0]] = candidate
    programs = {name: (c.program, c.measured.to_dict() | {"macs_kept": c.macs_kept, "proxy": c.proxy})
                for name, c in chosen.items()}
    programs[f"macs 1/{budget:g}"] = (macs, macs_row)
    rows = [c.to_dict() for c in candidates]
    return programs, [{"search_seconds": search_seconds, "searched_speedup": searched}, *rows]


def dense_model(model: str, data, args) -> Program:
    """ResNet-20 from the checkpoint the repository ships (scripts/make_demo_checkpoint.py: 1600 steps, about
    3.7 epochs, 91 % on the test set; how it was trained is in the JSON beside it); the others trained here."""
    if model == "resnet20" and SHIPPED_RESNET20.is_file():
        module = load_weights(build_model("prunefx:resnet20").module, SHIPPED_RESNET20).eval()
        return capture(module, next(iter(data.train))[0], name=model).eval()
    return trained_fashion_mnist(model, data, args.train_epochs)


def run_model(model: str, study: Study, data, args) -> dict:
    dense = dense_model(model, data, args)
    batches = [(inputs,) for inputs, _ in zip((batch[0] for batch in data.train), range(4))]
    latency = onnx_latency_pair(threads=args.threads, runs=args.runs)
    result = {"dense_accuracy": test_accuracy(dense, data, args.test_batches), "budgets": {}}
    for budget in study.budgets:
        try:
            programs, search = variants(dense, budget, batches, latency, equal_latency=study.equal_latency,
                                        tolerance=study.tolerance)
        except PrunefxError as error:
            result["budgets"][f"{budget:g}"] = {"error": str(error)}
            print(f"[{model} {budget:g}x] {error}", file=sys.stderr)
            continue
        rows = {}
        for name, (program, measured) in programs.items():
            same = next((rows[other] for other, (seen, _) in programs.items() if seen is program and other in rows), None)
            if same is not None:  # the joint choice is one of the single dimensions: the same model, scored once
                rows[name] = same
                continue
            one_shot = test_accuracy(program, data, args.test_batches)
            started = time.perf_counter()
            after = test_accuracy(recovered(program, dense, data, study.kd_steps), data, args.test_batches)
            rows[name] = {**measured, "one_shot": one_shot, "after_kd": after,
                          "kd_seconds": time.perf_counter() - started}
            print(f"[{model} {budget:g}x] {name}: {measured['speedup']:.2f}x, one-shot {one_shot:.2f}, "
                  f"after KD {after:.2f}", file=sys.stderr)
        result["budgets"][f"{budget:g}"] = {"variants": rows, "search": search}
    return result


def markdown(report: dict) -> str:
    settings = report["settings"]
    lines = ["# Budget choice on Fashion-MNIST: width x depth x INT8 together vs alone vs a MACs target", "",
             machine_summary(report["machine"]), "", f"Command: `{report['command']}`", "",
             f"Speed-ups on ONNX Runtime, batch 1, {settings['threads']} thread(s), {settings['runs']} runs per "
             "candidate, confirmed with 4x the runs; INT8 in this CPU's lowering. Accuracy on the first "
             f"{settings['test_batches'] * BATCH} test images; KD at batch {BATCH}.", ""]
    for name, entry in report["studies"].items():
        study = entry["study"]
        at = ("; equal latency: each budget searched at the MACs-target model's measured speed-up"
              if study["equal_latency"] else "")
        lines += [f"## {study['title']} (`{name}`: KD {study['kd_steps']} steps, tolerance {study['tolerance']:g}{at})",
                  ""]
        for model, result in entry["models"].items():
            lines += study_model_markdown(model, result)
    return "\n".join(lines)


def study_model_markdown(model: str, result: dict) -> list[str]:
    lines = [f"### {model} (dense {result['dense_accuracy']:.2f} %)", ""]
    for budget, entry in result["budgets"].items():
        if "error" in entry:
            lines += [f"#### {budget}x: {entry['error']}", ""]
            continue
        table = [[name, f"{row['speedup']:.2f}x", f"{row['macs_kept']:.3f}",
                  "n/a" if row.get("proxy") is None else f"{row['proxy']:.4f}", f"{row['one_shot']:.2f}",
                  f"{row['after_kd']:.2f}"] for name, row in entry["variants"].items()]
        search = entry["search"][0]
        searched = search.get("searched_speedup", float(budget))
        lines += [f"#### budget {budget}x (searched at {searched:.2f}x, search {search['search_seconds']:.0f} s)", "",
                  markdown_table(["variant", "measured speed-up", "MACs kept", "KL damage", "one-shot %",
                                  "after KD %"], table), ""]
        every = [["+".join(row["dimensions"]), "yes" if row["met"] else "no",
                  f"{row['speedup']:.2f}x" if row.get("speedup") is not None else "n/a",
                  f"{row['macs_kept']:.3f}" if row.get("macs_kept") is not None else "n/a",
                  f"{row['proxy']:.4f}" if row.get("proxy") is not None else "n/a",
                  (row.get("failed") or "").replace("|", "/")] for row in entry["search"][1:]]
        lines += ["Every combination choose_for_budget searched (one-shot KL damage on the calibration batches):",
                  "", markdown_table(["combination", "met", "measured speed-up", "MACs kept", "KL damage", "why not"],
                                     every), ""]
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.markdown_from:  # the Markdown again from a results file (e.g. after a change of layout)
        report = json.loads(args.markdown_from.read_text())
        write_results(args.markdown_from.stem, report, markdown(report), folder=args.markdown_from.parent)
        return 0
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    data = fashion_mnist_data(BATCH)
    report = {"machine": machine_info(), "command": command_line(),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "studies": {}}
    for name in args.studies:
        study = STUDIES[name]
        entry = report["studies"][name] = {"study": asdict(study), "models": {}}
        for model in [m for m in study.models if args.models is None or m in args.models]:
            entry["models"][model] = run_model(model, study, data, args)
            write_results(NAME, report, markdown(report), folder=args.output_dir)  # after each model: a long run keeps its rows
    return 0


if __name__ == "__main__":
    sys.exit(main())
