"""Graph-rewriting passes: one pass per file, `(program, /, *, config) -> Result`,
declared with `@graph_pass` (passes/core/contract.py).

`prunefx.passes.NAME` is the pass function NAME for every shipped pass (the module of the same name is
`importlib.import_module("prunefx.passes.NAME")`), so `Pipeline([sparsify_nm])` works as written.

The names below are imported on first use, as prunefx.graph's are: a pass's configuration (the command line
makes its flags of it) is imported without torch.
"""

from prunefx.graph.lazy_package import functions_over_modules, lazy_names
from prunefx.passes.core.shipped import SHIPPED_PASSES

# name -> module that defines it
_LAZY = {
    **{name: f"prunefx.passes.{name}" for name in SHIPPED_PASSES},
    "Contract": "prunefx.passes.core.contract", "graph_pass": "prunefx.passes.core.contract",
    "Pipeline": "prunefx.passes.core.pipeline", "PipelineError": "prunefx.passes.core.pipeline",
    "PipelineResult": "prunefx.passes.core.pipeline", "Step": "prunefx.passes.core.pipeline",
    "run_inner": "prunefx.passes.core.pipeline",
    "RecipeError": "prunefx.passes.core.recipe", "load_recipe": "prunefx.passes.core.recipe",
    "pipeline_from_spec": "prunefx.passes.core.recipe",
    "PASSES": "prunefx.passes.core.registry", "get_pass": "prunefx.passes.core.registry",
    "register_pass": "prunefx.passes.core.registry", "registered_passes": "prunefx.passes.core.registry",
    "unregister_pass": "prunefx.passes.core.registry",
    "Pass": "prunefx.passes.core.result", "Result": "prunefx.passes.core.result",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
functions_over_modules(__name__, _LAZY)

__all__ = sorted(_LAZY)
