"""semi_structured_speedup: 2:4 semi-structured sparse MLP layers of ViTs against dense, on an NVIDIA GPU.

For timm vit_small_patch16_224 and vit_base_patch16_224 (randomly initialised: timing does not depend
on trained values), the MLP of the first block: fc1 (E -> 4E) and fc2 (4E -> E), each made 2:4 by
magnitude along its input features, in fp16, at batch 64, 128 and 256 images (rows = batch x 197
tokens). Each is timed dense (F.linear, cuBLAS) against semi-structured (torch.sparse
.to_sparse_semi_structured, cuSPARSELt or CUTLASS) with CUDA events, alternately, each sample as many
back-to-back calls as last a millisecond, 100 samples after a warm-up of at least 20 pairs that lasts until the
times settle (runtime/measure/gpu_latency.py); the speed-up is the ratio of medians. The whole MLP block
(fc1, GELU, fc2) is timed the same way. Each pair is timed twice: eager (F.linear called from Python, as a
PyTorch model runs it) and replayed from a CUDA graph (runtime/cuda/semi_structured.cuda_graphed: the kernels
alone, no host work per call). The GPU, torch and CUDA versions are recorded.

    .venv/bin/python benchmarks/semi_structured_speedup.py [--batches 64 128 256] [--runs 100]

Without CUDA it says so and exits with status 2, writing nothing. Results go to
benchmarks/results/semi_structured_speedup.{json,md}.
"""

from __future__ import annotations

import argparse
import sys

import timm
import torch
import torch.nn.functional as F
from common import command_line, machine_info, markdown_table, write_results

from prunefx.graph.errors import PrunefxError
from prunefx.runtime.cuda.semi_structured import (
    cuda_graphed,
    require_sparse_gpu,
    semi_structured,
    time_callables,
    time_linear,
    two_four,
)

NAME = "semi_structured_speedup"
MODELS = ("vit_small_patch16_224", "vit_base_patch16_224")
BATCHES = (64, 128, 256)
TOKENS = 197


def mlp_layers(model_name: str) -> dict[str, torch.nn.Linear]:
    model = timm.create_model(model_name, pretrained=False)
    mlp = model.blocks[0].mlp
    return {"fc1": mlp.fc1, "fc2": mlp.fc2}


def mlp_block(layers: dict[str, torch.nn.Linear], rows: int, args) -> dict:
    """fc1 -> GELU -> fc2, dense against both layers semi-structured."""
    device, dtype = require_sparse_gpu(), torch.float16
    dense = {name: (two_four(layer.weight.detach()).to(device, dtype), layer.bias.detach().to(device, dtype))
             for name, layer in layers.items()}
    sparse = {name: (semi_structured(weight), bias) for name, (weight, bias) in dense.items()}
    x = torch.randn(rows, layers["fc1"].in_features, device=device, dtype=dtype)

    def block(weights):
        return lambda: F.linear(F.gelu(F.linear(x, *weights["fc1"])), *weights["fc2"])

    return {"rows": rows, **eager_and_graphed(block(dense), block(sparse), args)}


def layer_graphed(layer: torch.nn.Linear, rows: int, args) -> dict:
    """One layer, dense against semi-structured, each replayed from a CUDA graph (no host work per call)."""
    device, dtype = require_sparse_gpu(), torch.float16
    weight, bias = two_four(layer.weight.detach()).to(device, dtype), layer.bias.detach().to(device, dtype)
    sparse = semi_structured(weight)
    x = torch.randn(rows, layer.in_features, device=device, dtype=dtype)
    return graphed(lambda: F.linear(x, weight, bias), lambda: F.linear(x, sparse, bias), args)


def eager_and_graphed(dense_fn, sparse_fn, args) -> dict:
    dense_stats, sparse_stats = time_callables(dense_fn, sparse_fn, warmup=args.warmup, runs=args.runs)
    return {"dense": dense_stats.to_dict(), "sparse": sparse_stats.to_dict(),
            "speedup": dense_stats.median_ms / sparse_stats.median_ms, "graphed": graphed(dense_fn, sparse_fn, args)}


def graphed(dense_fn, sparse_fn, args) -> dict:
    """Both callables timed as CUDA-graph replays; where capture fails (a kernel that cannot be captured), why."""
    try:
        dense_stats, sparse_stats = time_callables(cuda_graphed(dense_fn), cuda_graphed(sparse_fn),
                                                   warmup=args.warmup, runs=args.runs)
    except RuntimeError as error:
        return {"error": str(error).splitlines()[0]}
    return {"dense": dense_stats.to_dict(), "sparse": sparse_stats.to_dict(),
            "speedup": dense_stats.median_ms / sparse_stats.median_ms}


def _graphed_cells(row: dict) -> list[str]:
    graph = row["graphed"]
    if "error" in graph:
        return ["capture failed", "", ""]
    return [f"{graph['dense']['median_ms']:.3f}", f"{graph['sparse']['median_ms']:.3f}", f"**{graph['speedup']:.2f}x**"]


def markdown(report: dict) -> str:
    lines = ["# 2:4 semi-structured sparse ViT MLP layers vs dense (fp16)\n",
             f"Produced by `{report['command']}`.\n",
             f"GPU: **{report['gpu']['name']}** (compute capability {report['gpu']['capability']}), torch "
             f"{report['machine']['versions']['torch']}, CUDA {report['gpu']['cuda']}.\n",
             "Per-call latency of F.linear, medians of 100 CUDA-event timings of 10 calls each, dense and sparse "
             "alternated; rows = batch x 197 tokens; weights 2:4 by magnitude; speed-up = dense / sparse. "
             "*Eager* calls F.linear from Python each time (what a PyTorch model does); *graph* replays the same "
             "call from a CUDA graph, so no host work is timed (the kernels alone).\n"]
    headers = ["eager dense ms", "eager 2:4 ms", "eager speed-up", "graph dense ms", "graph 2:4 ms", "graph speed-up"]
    rows = [[r["model"], r["layer"], r["batch"], f"{r['in_features']}->{r['out_features']}",
             f"{r['dense']['median_ms']:.3f}", f"{r['sparse']['median_ms']:.3f}", f"**{r['speedup']:.2f}x**",
             *_graphed_cells(r)] for r in report["layers"]]
    lines.append(markdown_table(["model", "layer", "batch", "shape", *headers], rows))
    lines.append("")
    rows = [[r["model"], r["batch"], f"{r['dense']['median_ms']:.3f}", f"{r['sparse']['median_ms']:.3f}",
             f"**{r['speedup']:.2f}x**", *_graphed_cells(r)] for r in report["blocks"]]
    lines.append("Whole MLP block (fc1, GELU, fc2):\n")
    lines.append(markdown_table(["model", "batch", *headers], rows))
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = require_sparse_gpu()
    except PrunefxError as error:
        print(f"{NAME}: {error}; nothing measured, nothing written", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    report = {"command": command_line(), "machine": machine_info(), "layers": [], "blocks": [],
              "gpu": {"name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                      "capability": ".".join(map(str, torch.cuda.get_device_capability(device)))}}
    for model_name in args.models:
        layers = mlp_layers(model_name)
        for batch in args.batches:
            rows = batch * TOKENS
            for name, layer in layers.items():
                timing = time_linear(layer.weight, rows, bias=layer.bias, warmup=args.warmup, runs=args.runs)
                report["layers"].append({"model": model_name, "layer": name, "batch": batch, **timing.to_dict(),
                                         "graphed": layer_graphed(layer, rows, args)})
                print(f"{model_name} {name} batch {batch}: {timing.speedup:.2f}x eager", file=sys.stderr)
            report["blocks"].append({"model": model_name, "batch": batch, **mlp_block(layers, rows, args)})
    json_path, md_path = write_results(NAME, report, markdown(report))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
