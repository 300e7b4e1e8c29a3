"""sparsify_nm: N:M (default 2:4) sparse weights for TensorRT's sparse tensor cores, chosen by magnitude
or second order with weight updates (SparseGPT-style OBS, or CAP); also CAP's unstructured variant.

Rewrites the weights (never the graph) of every eligible convolution and linear layer, and records them in
`program.analysis.sparsity` so that distill keeps the zeros and every export carries them. The math is in
graph/sparsity/nm_masks.py. The criteria, the config and the exactness: see docs/algorithms.md, 'sparsify_nm'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prunefx.graph import Program
from prunefx.graph.activations import within_budget
from prunefx.graph.analysis_record import SparsityRecord
from prunefx.graph.attributes import get_tensor, set_tensor
from prunefx.graph.placement import module_device
from prunefx.graph.progress import progress_bar
from prunefx.graph.sparsity.nm_hessians import (
    SparseLayer,
    find_sparse_layers,
    fisher_inverses,
    grouped_weight,
    layer_hessians,
)
from prunefx.graph.sparsity.nm_masks import (
    blocks_of,
    cap_eliminate,
    global_counts,
    magnitude_mask,
    nm_counts,
    obs_prune,
    relative_output_error,
    weight_from_grouped,
)
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result
from prunefx.passes.sparsity.config import UNSTRUCTURED, SparsifyNMConfig, SparsityPlan, checked_config
from prunefx.passes.training.engine import IGNORE_LABEL, logits_of

_FISHER_BUDGET = 1 << 29  # bytes of float64 Fisher inverses held at once (512 MiB)


@shipped_pass
@graph_pass(config=SparsifyNMConfig, in_place=True, writes=("sparsity",))
def sparsify_nm(program: Program, /, *, config: dict | None = None) -> Result:
    plan = checked_config(program, config)
    layers, skipped = find_sparse_layers(program.module, pattern=plan.pattern, min_channels=plan.min_channels,
                                         keep=set(plan.keep), only=plan.layers)
    before = {layer.weight: get_tensor(program.module, layer.weight).detach().clone() for layer in layers}
    with program.evaluating():
        errors = _sparsify(program.module, layers, plan)
    changed = sum(not torch.equal(before[layer.weight], get_tensor(program.module, layer.weight)) for layer in layers)
    stats = _statistics(program, layers, skipped, plan, errors, changed)
    # a weight with no zero has none to keep (an M:M pattern removes nothing)
    holding = [layer for layer in stats["layers"] if layer["zero_fraction"] > 0]
    record = SparsityRecord(stats["pattern"], stats["criterion"], [layer["weight"] for layer in holding], holding,
                            stats["skipped"])
    program.analysis.sparsity = _merged(program.analysis.sparsity, record)
    return Result(program, modified=changed > 0, stats=stats)


def _merged(previous: SparsityRecord | None, record: SparsityRecord) -> SparsityRecord:
    """`record` beside the weights an earlier run made sparse and this one left alone: a second run over other
    layers replaced the record, and distill no longer kept the first run's zeros (nor did remove_channels refuse)."""
    if previous is None:
        return record
    earlier = [w for w in previous.weights if w not in set(record.weights)]
    if not earlier:
        return record
    if not record.weights:
        return SparsityRecord(previous.pattern, previous.criterion, earlier,
                              [layer for layer in previous.layers if layer.get("weight") in earlier], record.skipped)

    def both(first: str, second: str) -> str:
        return first if first == second else f"{first} and {second}"

    return SparsityRecord(both(previous.pattern, record.pattern), both(previous.criterion, record.criterion),
                          [*earlier, *record.weights],
                          [*(layer for layer in previous.layers if layer.get("weight") in earlier), *record.layers],
                          record.skipped)


def _sparsify(module, layers: list[SparseLayer], config: SparsityPlan) -> dict[str, float]:
    """Sparsify every layer in place; return relative layer-output errors where a Hessian was at hand."""
    criterion, pattern = config.criterion, config.pattern
    if pattern is None:  # unstructured
        if criterion == "magnitude":
            _global_magnitude(module, layers, config.sparsity)
        else:
            _cap_unstructured(module, layers, config)
        return {}
    if criterion == "magnitude":
        for layer in layers:
            matrix = grouped_weight(module, layer)
            _store(module, layer, matrix * magnitude_mask(matrix, pattern))
        return {}
    if criterion == "obs":
        return _obs(module, layers, config)
    counts = {layer.node: None for layer in layers}  # None: (M - N) per group
    _store_all(module, layers, _cap_round(module, layers, config, counts))
    return {}


def _obs(module, layers: list[SparseLayer], config: SparsityPlan) -> dict[str, float]:
    """sequential: one layer at a time, each H read on the network sparsified so far (SparseGPT);
    otherwise every H from the dense network (updates stored once all are computed)."""
    errors, updates = {}, {}
    batches, damping, pattern = config.calibration, config.damping, config.pattern
    with progress_bar("sparsifying (obs)", len(layers), unit="layer", progress=config.progress) as bar:
        for chunk in ([[layer] for layer in layers] if config.sequential else [layers]):
            for layer, hessian in layer_hessians(module, chunk, batches):
                matrix = grouped_weight(module, layer)
                updates[layer.node], _ = obs_prune(matrix, hessian, pattern, damping=damping)
                errors[layer.node] = relative_output_error(matrix, updates[layer.node], hessian)
                if config.sequential:
                    _store(module, layer, updates[layer.node])
                bar.update()
    _store_all(module, layers, {node: (matrix, None) for node, matrix in updates.items()})
    return errors


def _cap_round(module, layers: list[SparseLayer], config: SparsityPlan, counts: dict) -> dict:
    """CAP elimination of every layer from Fisher inverses of the module as given (nothing is stored):
    {node: (grouped matrix after it, cumulative loss curve [blocks, steps])}. counts[node]: weights per
    block to remove (None: the N:M count). Layers go in chunks whose inverses fit in memory."""
    size, pattern, results = config.block_size, config.pattern, {}

    def fisher_bytes(layer: SparseLayer) -> int:  # its Fisher inverse: numel * B float64, plus a B x B block
        return 8 * size * (torch.Size(layer.shape).numel() + size)

    with progress_bar("sparsifying (cap)", len(layers), unit="layer", progress=config.progress) as bar:
        for chunk in within_budget(layers, fisher_bytes, _FISHER_BUDGET):
            inverses = _fisher(module, chunk, config)
            for layer in chunk:
                blocks, valid = blocks_of(grouped_weight(module, layer).reshape(-1), size)
                count = counts[layer.node] if counts[layer.node] is not None else nm_counts(valid, pattern)
                weights, _, losses = cap_eliminate(blocks, inverses.pop(layer.node).inverse, valid, count, pattern)
                results[layer.node] = (weights.reshape(-1)[valid.reshape(-1)].reshape(layer.shape[0], -1), losses)
                bar.update()
    return results


def _fisher(module, layers: list[SparseLayer], config: SparsityPlan):
    return fisher_inverses(module, layers, config.calibration, _summed_cross_entropy,
                           block_size=config.block_size, damping=config.damping)


def _cap_unstructured(module, layers: list[SparseLayer], config: SparsityPlan) -> None:
    """Loss curves with every weight eliminated, one global threshold, then the elimination again with
    each block's count (the Fisher gathered afresh per chunk, so only one chunk's inverses are held)."""
    device = module_device(module)  # the counts meet the curves, which sit beside the weights
    everything = {layer.node: blocks_of(torch.empty(torch.Size(layer.shape).numel(), device=device),
                                        config.block_size)[1].sum(1)
                  for layer in layers}
    curves = {node: losses for node, (_, losses) in _cap_round(module, layers, config, everything).items()}
    counts = dict(zip(curves, global_counts(list(curves.values()), config.sparsity)))
    _store_all(module, layers, _cap_round(module, layers, config, counts))


def _store_all(module, layers: list[SparseLayer], results: dict) -> None:
    for layer in layers:
        if layer.node in results:
            _store(module, layer, results[layer.node][0])


def _global_magnitude(module, layers: list[SparseLayer], fraction: float) -> None:
    magnitudes = torch.cat([get_tensor(module, layer.weight).detach().abs().reshape(-1).double() for layer in layers])
    wanted = int(round(fraction * magnitudes.numel()))
    if wanted == 0:
        return
    threshold = magnitudes.kthvalue(wanted).values
    for layer in layers:
        matrix = grouped_weight(module, layer)
        _store(module, layer, torch.where(matrix.abs() <= threshold, torch.zeros_like(matrix), matrix))


def _summed_cross_entropy(outputs: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the samples: each sample's gradient is then its own (label -1 ignored)."""
    return F.cross_entropy(logits_of(outputs[0]), labels, ignore_index=IGNORE_LABEL, reduction="sum")


def _store(module, layer: SparseLayer, matrix: torch.Tensor) -> None:
    old = get_tensor(module, layer.weight)
    value = weight_from_grouped(matrix, torch.Size(layer.shape)).to(dtype=old.dtype, device=old.device)
    if torch.equal(value, old):
        return  # untouched tensors keep their identity (and any optimizer state tied to it)
    # Standard strides: a permuted [K, C, 1, 1] counts as contiguous but makes oneDNN pick other kernels.
    stored = torch.empty_like(old, memory_format=torch.contiguous_format).copy_(value)
    set_tensor(module, layer.weight, stored)


def _statistics(program, layers, skipped, config, errors: dict, changed: int) -> dict:
    described, zeros, total = [], 0, 0
    for layer in layers:
        weight = get_tensor(program.module, layer.weight)
        layer_zeros = int((weight == 0).sum())
        zeros, total = zeros + layer_zeros, total + weight.numel()
        entry = {**layer.to_dict(), "zero_fraction": layer_zeros / weight.numel()}
        if layer.node in errors:
            entry["relative_output_error"] = errors[layer.node]
        described.append(entry)
    pattern = config.pattern
    return {"pattern": str(pattern) if pattern else UNSTRUCTURED, "criterion": config.criterion,
            "target_sparsity": config.sparsity if pattern is None else pattern.pruned / pattern.group,
            "damping": config.damping, "block_size": config.block_size if config.criterion == "cap" else None,
            "weights": [layer.weight for layer in layers], "layers": described, "skipped": skipped,
            "layers_changed": changed, "zero_fraction": zeros / total if total else 0.0,
            "calibration_images": sum(int(_first(b).shape[0]) for b in config.calibration or ())}


def _first(batch) -> torch.Tensor:
    return batch[0] if isinstance(batch[0], torch.Tensor) else batch[0][0]
