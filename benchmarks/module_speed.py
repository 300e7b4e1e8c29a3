"""Is the written-back module (`prunefx prune --module`, module.pt) as fast as the pruned Program (model.pt2)?

    .venv/bin/python benchmarks/module_speed.py [--model timm:deit_small_patch16_224] [--batch 8]
        [--macs 0.5] [--heads whole|dims] [--device cuda|cpu] [--precision fp16|bf16|fp32] [--runs 200]
        [--tolerance 0.03] [--out FILE.json]

Builds MODEL with random weights, prunes it with remove_channels (MACs fraction, `heads`), saves the Program
as model.pt2 and loads it back, and writes it back into the model's own module classes (to_module). Then:
1. structure: the module, captured again, calls the same operators as the Program, as often (so the same
   kernels run; scaled_dot_product_attention among them), and every timm attention kept `fused_attn` as the
   dense model had it;
2. speed: the loaded Program's graph and the module are timed alternately. On a GPU: CUDA-graph replays
   sampled as runtime/cuda/graph.GpuModel samples any model, fp16/bf16 weights, channels_last; on a CPU:
   perf_counter blocks (runtime/measure/latency.compare_latency), which on a loaded machine say little.
Prints one JSON object; exits 1 when the structure differs or, on a GPU, the module is more than
`--tolerance` slower than the Program (median against median), 0 otherwise. A CPU timing is reported but not
judged (a shared CPU's noise is larger than the tolerance). Publishes nothing: run it on the target.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

from prunefx.graph import Program, capture
from prunefx.interop.write_back import to_module
from prunefx.models import build_model
from prunefx.passes.remove_channels import remove_channels

SDPA = torch.ops.aten.scaled_dot_product_attention.default


def attention_ops(graph_module: torch.fx.GraphModule) -> int:
    return sum(node.target is SDPA for node in graph_module.graph.nodes)


def operators(graph_module: torch.fx.GraphModule) -> collections.Counter:
    return collections.Counter(str(node.target) for node in graph_module.graph.nodes if node.op == "call_function")


def fused_flags(model: torch.nn.Module) -> dict[str, bool]:
    """name -> fused_attn of every module that has the flag (timm's attention classes)."""
    return {name: m.fused_attn for name, m in model.named_modules() if type(getattr(m, "fused_attn", None)) is bool}


def structure(program: Program, dense: torch.nn.Module, module: torch.nn.Module) -> dict:
    recaptured = capture(copy.deepcopy(module), program.example_inputs, name="written back")
    report = {"program_attention_ops": attention_ops(program.module),
              "module_attention_ops": attention_ops(recaptured.module),
              "fused_attn_switched_off": sorted(name for name, on in fused_flags(dense).items()
                                                if on and not fused_flags(module).get(name, False))}
    program_ops, module_ops = operators(program.module), operators(recaptured.module)
    report["operators_only_in_program"] = dict(program_ops - module_ops)
    report["operators_only_in_module"] = dict(module_ops - program_ops)
    report["ok"] = (report["program_attention_ops"] == report["module_attention_ops"]
                    and not report["fused_attn_switched_off"] and program_ops == module_ops)
    return report


def cpu_comparison(program_module, module, inputs, *, runs: int, clock=None):
    """Program first, module second: `speedup` = program median / module median (below 1: module slower)."""
    from prunefx.runtime.measure.latency import compare_latency

    def call(fn):
        def run():
            with torch.inference_mode():
                fn(*inputs)
        return run

    options = {"clock": clock} if clock is not None else {}
    return compare_latency(call(program_module), call(module), warmup=max(runs // 10, 1), runs=runs, **options)


def gpu_comparison(program_module, module, inputs, *, runs: int, precision: str, device=None):
    """Both timed as the cuda backend times a pair: as CUDA graphs, or both eagerly where one cannot be captured
    (a graph against eager calls would not compare like with like)."""
    from prunefx.runtime.backends.cuda import sample_alike
    from prunefx.runtime.cuda.graph import CudaDevice, GpuModel
    from prunefx.runtime.measure.gpu_latency import compare_gpu_latency

    device = device or CudaDevice()
    models = [GpuModel.of_module(copy.deepcopy(each), inputs, precision=precision, device=device)
              for each in (program_module, module)]
    if any(model.capture_failed for model in models):
        sample_alike(models)
    return compare_gpu_latency(models[0].time_once, models[1].time_once, warmup=max(runs // 4, 1), runs=runs,
                               warm_seconds=device.warm_seconds)


def verdict(comparison, tolerance: float) -> dict:
    slower = 1.0 / comparison.speedup - 1.0  # module time over program time, minus one
    return {"program_ms": comparison.a.median_ms, "module_ms": comparison.b.median_ms,
            "module_slower_by": slower, "ok": slower <= tolerance}


def run(args) -> dict:
    torch.manual_seed(0)
    dense = build_model(args.model, image_size=args.image_size).module.eval()
    inputs = (torch.randn(args.batch, 3, args.image_size, args.image_size),)
    program = capture(copy.deepcopy(dense), inputs, name=args.model).eval()
    removal = remove_channels(program, config={"macs": args.macs, "heads": args.heads, "strict": False})
    with tempfile.TemporaryDirectory() as folder:
        loaded = Program.load(program.save(Path(folder) / "model.pt2")).eval()
    module = to_module(loaded, dense)
    report = {"model": args.model, "batch": args.batch, "heads": args.heads,
              "macs_kept": removal.stats["macs_after"] / removal.stats["macs_before"],
              "structure": structure(loaded, dense, module)}
    if args.device == "cuda":
        comparison = gpu_comparison(loaded.module, module, inputs, runs=args.runs, precision=args.precision)
        from prunefx.runtime.cuda.graph import CudaDevice
        report["device"] = {**CudaDevice().describe(), "precision": args.precision, "timing": "samples of many CUDA-graph replays, warmed until settled"}
    else:
        comparison = cpu_comparison(loaded.module, module, inputs, runs=args.runs)
        report["device"] = {"cpu": True, "threads": torch.get_num_threads(), "timing": "perf_counter blocks"}
    report["speed"] = {**verdict(comparison, args.tolerance), "judged": args.device == "cuda"}
    report["ok"] = report["structure"]["ok"] and (report["speed"]["ok"] or not report["speed"]["judged"])
    return report


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="timm:deit_small_patch16_224")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--macs", type=float, default=0.5)
    parser.add_argument("--heads", choices=("whole", "dims"), default="whole")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16")
    parser.add_argument("--runs", type=int, help="timed calls per side (default 200 on a GPU, 20 on a CPU)")
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    args.runs = args.runs or (200 if args.device == "cuda" else 20)
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
