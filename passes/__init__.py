"""Graph-rewriting passes: one pass per file, `(program, /, *, config) -> Result`,
declared with `@graph_pass` (passes/core/contract.py).

`prunefx.passes.NAME` is the pass function NAME for every shipped pass (the module of the same name is
`importlib.import_module("prunefx.passes.NAME")`), so `Pipeline([sparsify_nm])` works as written.
"""

from prunefx.passes.choose_for_budget import choose_for_budget
from prunefx.passes.comb_channels import comb_channels
from prunefx.passes.core.contract import Contract, graph_pass
from prunefx.passes.core.pipeline import Pipeline, PipelineError, PipelineResult, Step, run_inner
from prunefx.passes.core.recipe import RecipeError, load_recipe, pipeline_from_spec
from prunefx.passes.core.registry import PASSES, get_pass, register_pass, registered_passes, unregister_pass
from prunefx.passes.core.result import Pass, Result
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
from prunefx.passes.sparsify_nm import sparsify_nm

__all__ = [
    "PASSES", "Contract", "Pass", "Pipeline", "PipelineError", "PipelineResult", "RecipeError", "Result", "Step",
    "choose_for_budget", "comb_channels", "depth_to_budget", "distill", "fold_batchnorm", "get_pass", "graph_pass", "linearize_blocks", "load_recipe", "merge_blocks",
    "pipeline_from_spec", "prune_to_budget", "prune_while_training", "quantize_int8", "recalibrate_batchnorm",
    "register_pass", "registered_passes", "remove_channels", "run_inner", "sparsify_nm", "unregister_pass",
]
