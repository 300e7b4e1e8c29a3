"""Torch-Pruning, the baseline of benchmarks/tool_speed.py and gpu_speedup.py: one model pruned to a MACs fraction,
in its own process (a search that runs out of memory or time then ends the child, not the benchmark).

What a Torch-Pruning user runs: build the model (the same builder and random weights as `prunefx prune`),
then MetaPruner with MagnitudeImportance(p=2) at one uniform ratio (the classifier kept whole, timm
attention heads kept whole; channel counts rounded to `--round-to` where given), set up for torchvision's ViT as
Torch-Pruning's own torchvision example does (widths a multiple of the head count, the model's hidden_dim
following its patch embedding), the ratio found by bisection on Torch-Pruning's own MAC counter
(`tp.utils.count_ops_and_params`) until the pruned model keeps the asked fraction within 1 %. Each try
prunes a fresh copy of the dense model. No calibration data, no export, no parity check.

Prints one JSON line on stdout: the dense parameters and MACs, the fraction reached, the ratio, the tries
and the seconds spent building, searching and in the last single prune (what one prune costs when the
ratio is known). The caller times the whole process; this file only times its parts. `--save PATH` also saves
the pruned module (torch.save, the whole module) for the caller to capture.

    .venv/bin/python benchmarks/torch_pruning_baseline.py torchvision:resnet50 --macs 0.5 [--round-to 8]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
import warnings
from typing import Any

import torch
import torch_pruning as tp

from prunefx.models import build_model

MAX_TRIES = 12
CLOSE_ENOUGH = 0.01  # relative distance to the asked MACs fraction that ends the bisection


def _attention_modules(model: torch.nn.Module) -> list[Any]:
    """timm-style attention: a fused qkv Linear and an int num_heads (the reshape reads them)."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "qkv", None), torch.nn.Linear) and isinstance(getattr(m, "num_heads", None), int)]


def _torchvision_vits(model: torch.nn.Module) -> list[Any]:
    """torchvision-style ViTs: a patch-embedding `conv_proj` and an int `hidden_dim` that forward() reshapes by."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "conv_proj", None), torch.nn.Conv2d) and isinstance(getattr(m, "hidden_dim", None), int)]


def _whole_heads(model: torch.nn.Module, round_to: int | None) -> int | None:
    """round_to, made a multiple of every nn.MultiheadAttention's head count: its embedding width must divide
    into its heads, which Torch-Pruning's torchvision example keeps so (round_to = num_heads)."""
    for module in model.modules():
        if isinstance(module, torch.nn.MultiheadAttention):
            round_to = math.lcm(round_to or 1, module.num_heads)
    return round_to


def prune_at(dense: torch.nn.Module, example: torch.Tensor, ratio: float,
             round_to: int | None = None) -> torch.nn.Module:
    """Torch-Pruning at one uniform channel ratio on a deep copy of `dense`."""
    model = copy.deepcopy(dense)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    attentions = _attention_modules(model)
    round_to = _whole_heads(model, round_to)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes about unwrapped parameters (layer scales, tokens) are expected
        pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                      global_pruning=False, pruning_ratio=ratio, ignored_layers=linears[-1:], round_to=round_to,
                                      num_heads={m.qkv: m.num_heads for m in attentions})
        pruner.step()
    for m in attentions:  # the head count stays; the head width follows the pruned qkv
        m.num_heads = pruner.num_heads[m.qkv]
        m.head_dim = m.qkv.out_features // (3 * m.num_heads)
        if hasattr(m, "attn_dim"):
            m.attn_dim = m.num_heads * m.head_dim
    for m in _torchvision_vits(model):  # forward() reshapes the patches by hidden_dim, which no pruner updates
        m.hidden_dim = m.conv_proj.out_channels
    return model.eval()


def prune_to_macs(dense: torch.nn.Module, example: torch.Tensor, fraction: float,
                  round_to: int | None = None) -> tuple[torch.nn.Module, dict]:
    """Bisection on the ratio; the closest try wins. Returns it, with what was reached and the time of each
    part."""
    dense_macs, dense_params = tp.utils.count_ops_and_params(dense, example)
    low, high = 0.0, 0.95
    tries: list[dict] = []
    best: dict = {}
    chosen = dense
    while len(tries) < MAX_TRIES:
        ratio = 0.5 * (low + high)
        start = time.perf_counter()
        pruned = prune_at(dense, example, ratio, round_to)
        seconds = time.perf_counter() - start
        kept = tp.utils.count_ops_and_params(pruned, example)[0] / dense_macs
        tries.append({"ratio": ratio, "macs_kept": kept, "prune_seconds": seconds})
        if not best or abs(kept - fraction) < abs(best["macs_kept"] - fraction):
            best, chosen = tries[-1], pruned
        if abs(kept - fraction) <= CLOSE_ENOUGH * fraction:
            break
        low, high = (ratio, high) if kept > fraction else (low, ratio)
    return chosen, {"params": int(dense_params), "macs": int(dense_macs), "macs_kept": best["macs_kept"],
            "ratio": best["ratio"], "one_prune_seconds": best["prune_seconds"], "tries": tries}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a prunefx model reference (torchvision:resnet50, timm:...)")
    parser.add_argument("--macs", type=float, default=0.5, help="fraction of the MACs to keep (default 0.5)")
    parser.add_argument("--round-to", type=int, default=None, help="channel counts in multiples of this")
    parser.add_argument("--save", default=None, help="where to torch.save the pruned module")
    parser.add_argument("--device", default="cpu", help="where the model is pruned (default cpu)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    spec = build_model(args.model)
    if spec.module is None or spec.default_input_shape is None:
        raise SystemExit(f"{args.model} is a saved program: Torch-Pruning needs the model's own module")
    dense = spec.module.eval().to(args.device)
    example = torch.randn(spec.default_input_shape, device=args.device)
    built = time.perf_counter()
    pruned, result = prune_to_macs(dense, example, args.macs, args.round_to)  # autograd on: it traces grad_fn
    if args.save:
        torch.save(pruned.cpu(), args.save)
    result.update(build_seconds=built - start, search_seconds=time.perf_counter() - built,
                  torch_threads=torch.get_num_threads())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
