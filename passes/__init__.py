"""Graph-rewriting passes: one pass per file, `(program, /, *, config) -> Result`."""

from prunefx.passes.comb_channels import comb_channels
from prunefx.passes.distill import distill
from prunefx.passes.fold_batchnorm import fold_batchnorm
from prunefx.passes.pipeline import Pipeline, PipelineError, PipelineResult, Step
from prunefx.passes.prune_while_training import prune_while_training
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.recipe import RecipeError, load_recipe, pipeline_from_spec
from prunefx.passes.registry import PASSES, get_pass
from prunefx.passes.remove_channels import remove_channels
from prunefx.passes.result import Pass, Result

__all__ = [
    "PASSES", "Pass", "Pipeline", "PipelineError", "PipelineResult", "RecipeError", "Result", "Step",
    "comb_channels", "distill", "fold_batchnorm", "get_pass", "load_recipe", "pipeline_from_spec",
    "prune_while_training", "recalibrate_batchnorm", "remove_channels",
]
