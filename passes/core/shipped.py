"""The passes prunefx ships, by name: each is the function NAME of prunefx.passes.NAME (passes/NAME.py). The
package imports a pass on first use (passes/__init__.py) and the registry imports them all when it is first
read (core/registry.py), so that a pass's configuration is imported without torch."""

SHIPPED_PASSES = (
    "choose_for_budget", "comb_channels", "depth_to_budget", "distill", "fold_batchnorm", "linearize_blocks",
    "merge_blocks", "prune_to_budget", "prune_while_training", "quantize_int8", "recalibrate_batchnorm",
    "remove_channels", "sparsify_nm",
)
