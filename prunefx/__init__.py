"""prunefx: make vision models smaller and faster.

Capture a model with torch.export, rewrite it with an ordered pipeline of verified passes, lower it
to ONNX and measure it on ONNX Runtime or TensorRT.

    import prunefx
    program = prunefx.capture(model, torch.randn(1, 3, 224, 224))
    result = prunefx.Pipeline([prunefx.passes.fold_batchnorm]).run(program.eval())
    prunefx.runtime.export_onnx(result.program, "model.onnx")
    faster, outcome = prunefx.meet_budget(program, speedup=2.0)   # measured on ONNX Runtime at batch 1
"""

import importlib

# First, before torch is imported: in a deleted working folder its native libraries abort the process.
from prunefx import working_folder  # noqa: F401  (checks on import)

# Imported on first use, so that `import prunefx.graph` (which runs this file first) loads neither onnx nor
# onnxruntime, and `prunefx --help` not even torch: name -> (module, attribute path or None for the module).
_LAZY = {
    "graph": ("prunefx.graph", None),
    "CaptureError": ("prunefx.graph", "CaptureError"),
    "Program": ("prunefx.graph", "Program"),
    "PrunefxError": ("prunefx.graph", "PrunefxError"),
    "VerificationError": ("prunefx.graph", "VerificationError"),
    "capture": ("prunefx.graph", "capture"),
    "count": ("prunefx.graph", "count"),
    "verify": ("prunefx.graph", "verify"),
    "load": ("prunefx.graph", "Program.load"),
    "channel_rule": ("prunefx.graph.channels.rules", "channel_rule"),
    "remove_channel_rule": ("prunefx.graph.channels.rules", "remove_channel_rule"),
    "passes": ("prunefx.passes", None),
    "runtime": ("prunefx.runtime", None),
    "models": ("prunefx.models", None),  # prunefx.models.prepare_ultralytics, as capture's refusal advises
    "prune_part": ("prunefx.detectors", "prune_part"),
    "meet_budget": ("prunefx.budget", "meet_budget"),
    "BudgetOutcome": ("prunefx.budget", "BudgetOutcome"),
    "BudgetUnreachable": ("prunefx.budget", "BudgetUnreachable"),
    "latency_table": ("prunefx.layer_latency", "latency_table"),
    "Pipeline": ("prunefx.passes.core.pipeline", "Pipeline"),
    "PipelineError": ("prunefx.passes.core.pipeline", "PipelineError"),
    "load_recipe": ("prunefx.passes.core.recipe", "load_recipe"),
    "graph_pass": ("prunefx.passes.core.contract", "graph_pass"),
    "register_pass": ("prunefx.passes.core.registry", "register_pass"),
    "unregister_pass": ("prunefx.passes.core.registry", "unregister_pass"),
    "registered_passes": ("prunefx.passes.core.registry", "registered_passes"),
    "DistillationLoss": ("prunefx.interop.recovery", "DistillationLoss"),
    "PruneWhileTraining": ("prunefx.interop.recovery", "PruneWhileTraining"),
    "to_module": ("prunefx.interop.write_back", "to_module"),
    "register_module_resizer": ("prunefx.interop.module_resizers", "register_module_resizer"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'prunefx' has no attribute '{name}'")
    module_name, attribute = _LAZY[name]
    value = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else ():
        value = getattr(value, part)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BudgetOutcome", "BudgetUnreachable", "CaptureError", "DistillationLoss", "PruneWhileTraining", "Pipeline", "PipelineError", "Program", "PrunefxError", "VerificationError",
    "capture", "channel_rule", "count", "graph_pass", "latency_table", "load", "load_recipe", "meet_budget", "models", "passes", "prune_part",
    "register_module_resizer", "register_pass", "registered_passes", "remove_channel_rule", "runtime", "to_module", "unregister_pass", "verify",
]
