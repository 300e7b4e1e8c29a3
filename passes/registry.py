"""Passes by name, so recipes (YAML) and the CLI spell the same pipeline as the Python API."""

from __future__ import annotations

from prunefx.graph.errors import PrunefxError
from prunefx.passes.choose_for_budget import choose_for_budget
from prunefx.passes.comb_channels import comb_channels
from prunefx.passes.depth_to_budget import depth_to_budget
from prunefx.passes.distill import distill
from prunefx.passes.fold_batchnorm import fold_batchnorm
from prunefx.passes.linearize_blocks import linearize_blocks
from prunefx.passes.merge_blocks import merge_blocks
from prunefx.passes.prune_to_budget import prune_to_budget
from prunefx.passes.prune_while_training import prune_while_training
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import remove_channels
from prunefx.passes.result import Pass
from prunefx.passes.sparsify_nm import sparsify_nm

PASSES: dict[str, Pass] = {
    "choose_for_budget": choose_for_budget,
    "comb_channels": comb_channels,
    "depth_to_budget": depth_to_budget,
    "distill": distill,
    "fold_batchnorm": fold_batchnorm,
    "linearize_blocks": linearize_blocks,
    "merge_blocks": merge_blocks,
    "prune_to_budget": prune_to_budget,
    "prune_while_training": prune_while_training,
    "quantize_int8": quantize_int8,
    "recalibrate_batchnorm": recalibrate_batchnorm,
    "remove_channels": remove_channels,
    "sparsify_nm": sparsify_nm,
}


def get_pass(name: str) -> Pass:
    try:
        return PASSES[name]
    except KeyError:
        known = ", ".join(sorted(PASSES))
        raise PrunefxError(f"unknown pass '{name}' (known passes: {known})") from None
