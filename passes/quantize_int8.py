"""quantize_int8: post-training INT8 fake quantization in TensorRT's explicit-quantization form.

Every convolution, linear layer and matmul gets per-tensor activation and per-channel weight quantizers, as do
residual adds and pools where TensorRT (and ONNX Runtime) need them to run the layer before on integers.
The form and the calibration are graph/int8/quantization.py's; lowering to ONNX Q/DQ is runtime/onnx/'s.
The rewrite, the config and why mse is the default: see docs/algorithms.md, 'quantize_int8'.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from prunefx.graph import Program
from prunefx.graph.activations import calibration_inputs, run_tapped, tap_nodes
from prunefx.graph.attributes import get_tensor
from prunefx.graph.errors import PrunefxError
from prunefx.graph.int8.attention import decompose_attention
from prunefx.graph.int8.quantization import (
    QUANTIZABLE_OPERATORS,
    QuantTarget,
    channel_amax,
    fake_quantize,
    find_targets,
    has_fake_quant,
    quantize_activation,
    quantize_weight,
    scale_of,
)
from prunefx.graph.int8.ranges import RangeObserver
from prunefx.graph.tensor_copies import tensor_copies
from prunefx.passes.core import config_checks as checks
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.pipeline import run_inner
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result
from prunefx.passes.fold_batchnorm import Folded, fold_batchnorm
from prunefx.passes.rewrites.quantize_config import OWNER, QuantizeInt8Config

_KEPT_BYTES = 256 << 20  # calibration activations kept between their reads (_Activations)


def _settings(config: dict | QuantizeInt8Config | None) -> QuantizeInt8Config:
    settings = QuantizeInt8Config.parse(config)  # a copy below: the caller's parsed config stays as given
    return dataclasses.replace(settings, skip_nodes=tuple(settings.skip_nodes),
                               skip_operators=tuple(settings.skip_operators))


@dataclass(frozen=True)
class Quantized:
    """What quantize_int8 hands to its caller (choose_for_budget, `prunefx quantize`): how many layers
    (convolutions, linear layers, matmuls) it quantized, how many residual adds and average pools it quantized
    beside them, and how many of its targets it kept in float."""

    layers: int
    kept_in_float: int = 0
    adds_and_pools: int = 0


@shipped_pass
@graph_pass(config=QuantizeInt8Config, in_place=True)
def quantize_int8(program: Program, /, *, config: dict | QuantizeInt8Config | None = None) -> Result:
    settings = _settings(config)
    if has_fake_quant(program.graph):  # quantized before: its choices (layers left in float included) stand
        return Result(program, modified=False, stats={"quantized": [], "skipped": [], "already_quantized": True},
                      facts=Quantized(0))
    folded = run_inner(fold_batchnorm, program).facts_as(Folded).folded if settings.fold_batchnorm else 0
    attention, attention_kept = decompose_attention(program) if settings.attention else (0, {})
    targets, refused = find_targets(program.graph)
    refused.update({name: f"attention kept whole ({reason})" for name, reason in attention_kept.items()})
    if not any(target.kind == "layer" for target in targets):  # adds and pools alone: nothing to compute on INT8
        raise PrunefxError(f"{OWNER}: model '{program.name}' has no quantizable layer (convolution, linear or "
                           f"matmul with a float input){_refusals(refused)}")
    _check_skip_lists(program, settings, targets, refused)
    skipped = [{"layer": name, "operator": None, "reason": reason} for name, reason in refused.items()]
    chosen = []
    for target in targets:
        reason = _kept_by_user(target, settings)
        if reason:
            skipped.append({"layer": target.layer.name, "operator": target.operator, "reason": reason})
        else:
            chosen.append(target)
    _check_something_left(program, chosen, settings)
    batches = calibration_inputs(program.example_inputs, settings.calibration, max_batches=settings.max_batches,
                                 what=f"{OWNER} calibration")
    with program.evaluating():
        values = _Activations(program, chosen, batches)
        amax = _calibrate(values, settings)
        errors = _layer_errors(program, chosen, amax, values, settings.sensitivity_batches)
        del values  # the kept activations, before the rewrite
    chosen, sensitive = _leave_sensitive(chosen, errors, settings.sensitive)
    skipped += sensitive
    _rewrite(program, chosen, amax)
    stats = {"method": settings.method, "percentile": settings.percentile if settings.method == "percentile" else None,
             "calibration_batches": len(batches), "calibration_images": sum(int(b[0].shape[0]) for b in batches),
             "folded_batch_norms": folded, "attention_decomposed": attention,
             "quantized": [_row(target, amax, errors) for target in chosen],
             "skipped": skipped,
             "activation_quantizers": len({node for target in chosen for node in target.activations}),
             "weight_quantizers": sum(target.weight is not None for target in chosen)}
    return Result(program, modified=bool(chosen), stats=stats, facts=Quantized(
        sum(target.kind == "layer" for target in chosen), len(skipped), sum(target.kind != "layer" for target in chosen)))


def _check_something_left(program: Program, chosen, settings: QuantizeInt8Config) -> None:
    """Skips or a `sensitive` count that leave nothing to quantize, refused before the calibration's minutes (the
    model would come out unquantized, and every INT8 step after this one would fail)."""
    if not any(target.kind == "layer" for target in chosen):
        raise PrunefxError(f"{OWNER}: skip_nodes and skip_operators keep every quantizable layer of "
                           f"'{program.name}' in float: nothing is left to quantize")
    if settings.sensitive >= len(chosen):
        raise PrunefxError(f"{OWNER}: sensitive={settings.sensitive} would leave all {len(chosen)} quantizable "
                           f"layers, adds and pools of '{program.name}' in float: give fewer than {len(chosen)}")


def _refusals(refused: dict[str, str]) -> str:
    if not refused:
        return ""
    name, reason = next(iter(refused.items()))
    return f" ({name}: {reason})"


def _check_skip_lists(program: Program, settings: QuantizeInt8Config, targets, refused: dict[str, str]) -> None:
    """A name in skip_nodes or skip_operators that matches nothing would quantize what the user meant to keep in
    float, silently; an operator a model lacks is fine (one recipe, many models), one no layer can have is not."""
    layers = {target.layer.name for target in targets} | set(refused)
    checks.names_in(OWNER, "skip_nodes", settings.skip_nodes, layers,
                    what=f"a layer of {program.name} that {OWNER} quantizes or refuses")
    checks.names_in(OWNER, "skip_operators", settings.skip_operators, QUANTIZABLE_OPERATORS,
                    what="an operator it quantizes", where=f" ({', '.join(sorted(QUANTIZABLE_OPERATORS))})")


def _kept_by_user(target: QuantTarget, settings: QuantizeInt8Config) -> str | None:
    if target.layer.name in settings.skip_nodes:
        return "kept in float by name (skip_nodes)"
    # an in-place form is the same operator: `out += x` captures as add_, and 'add' names the residual adds
    if target.operator.rstrip("_") in {name.rstrip("_") for name in settings.skip_operators}:
        return f"kept in float by operator {target.operator} (skip_operators)"
    return None


def _sources(targets: Sequence[QuantTarget]) -> list[torch.fx.Node]:
    """The activation nodes to quantize, each once, in graph order of first use."""
    return list(dict.fromkeys(node for target in targets for node in target.activations))


def _calibrate(values: _Activations, settings: QuantizeInt8Config) -> dict[torch.fx.Node, float]:
    """amax of every activation source: a max pass, then (percentile, mse, entropy) a histogram pass on [0, max]."""
    observers = {node: RangeObserver() for node in values.sources}
    for tapped in values.each():
        for node, value in tapped.items():
            if not math.isfinite(observers[node].observe_max(value)):
                # a NaN is lost in a max over batches (the range came out 0) and an inf makes no scale: refused
                raise PrunefxError(f"quantize_int8: {node.name} is not finite (NaN or inf) on the calibration "
                                   "data: check the batches for NaN or inf, or the model for an overflow")
    if settings.method != "max":
        for tapped in values.each():
            for node, value in tapped.items():
                observers[node].observe_histogram(value, count_zeros=settings.method == "entropy")
    return {node: observer.amax(settings.method, settings.percentile) for node, observer in observers.items()}


def _layer_errors(program: Program, targets, amax, values: _Activations, batches: int) -> dict[str, float]:
    """Per layer: ||op(q(x), q(W)) - op(x, W)||^2 / ||op(x, W)||^2 over the first `batches`, every other layer
    float."""
    noise = {target.layer.name: 0.0 for target in targets}
    signal = dict(noise)
    with torch.no_grad():
        for tapped in values.each(batches):
            for target in targets:
                exact = _run_layer(program, target, tapped, None)
                quantized = _run_layer(program, target, tapped, amax)
                noise[target.layer.name] += float((quantized - exact).double().pow(2).sum())
                signal[target.layer.name] += float(exact.double().pow(2).sum())
    return {name: noise[name] / signal[name] if signal[name] > 0 else 0.0 for name in noise}


class _Activations:
    """The values of the activation sources on each calibration batch. Calibration reads them twice (the max, then
    the histogram) and the layer errors a third time: the first batches' values are kept, up to _KEPT_BYTES, so
    that the model runs on them once; later batches run again when read again."""

    def __init__(self, program: Program, targets, batches: Sequence):
        self.sources, self.batches = _sources(targets), batches
        self._tapped = tap_nodes(program.module, [node.name for node in self.sources]) if self.sources else None
        self._kept: dict[int, tuple[torch.Tensor, ...]] = {}
        self._room = _KEPT_BYTES

    def each(self, count: int | None = None) -> Iterator[dict[torch.fx.Node, torch.Tensor]]:
        """Source -> value on each of the first `count` batches (None: all of them), in order."""
        for index in range(len(self.batches) if count is None else min(count, len(self.batches))):
            yield dict(zip(self.sources, self._values(index)))

    def _values(self, index: int) -> tuple[torch.Tensor, ...]:
        if self._tapped is None:  # nothing to calibrate
            return ()
        if index in self._kept:
            return self._kept[index]
        values = run_tapped(self._tapped, self.batches[index])
        size = sum(value.numel() * value.element_size() for value in values)
        if size <= self._room:
            self._kept[index], self._room = values, self._room - size
        return values


def _run_layer(program: Program, target: QuantTarget, values: dict, amax: dict | None) -> torch.Tensor:
    """The layer's operator alone on the tapped inputs: quantized as the rewrite will do when `amax` is given."""
    def value(node):
        if node.op == "get_attr":
            tensor = get_tensor(program.module, node.target)
            if amax is not None and node is target.weight:
                return fake_quantize(tensor, scale_of(channel_amax(tensor, target.weight_axis)), target.weight_axis)
            return tensor
        tensor = values[node]
        return fake_quantize(tensor, scale_of(amax[node])) if amax is not None else tensor

    args = torch.fx.node.map_arg(target.layer.args, value)
    kwargs = torch.fx.node.map_arg(target.layer.kwargs, value)
    if target.layer.target._schema.is_mutable:  # add_: on copies, the tapped values are read again
        args = tensor_copies(tuple(args))
    return target.layer.target(*args, **kwargs)


def _leave_sensitive(targets, errors: dict[str, float], count: int):
    """(targets still quantized, skipped rows for the `count` with the largest errors)."""
    if count == 0:
        return targets, []
    ranked = sorted(targets, key=lambda target: errors[target.layer.name], reverse=True)
    worst = {target.layer.name: rank for rank, target in enumerate(ranked[:count], start=1)}
    rows = [{"layer": target.layer.name, "operator": target.operator,
             "reason": f"sensitive: relative squared output error {errors[target.layer.name]:.3g} when quantized, "
                       f"rank {worst[target.layer.name]} of {len(targets)} layers", "error": errors[target.layer.name]}
            for target in ranked[:count]]
    return [target for target in targets if target.layer.name not in worst], rows


def _rewrite(program: Program, targets, amax) -> None:
    if not targets:
        return
    graph = program.graph
    for source in _sources(targets):
        quantize_activation(graph, source, amax[source], [t.layer for t in targets if source in t.activations])
    for target in targets:
        if target.weight is not None:
            quantize_weight(program.module, target)
    program.recompile()


def _row(target: QuantTarget, amax, errors) -> dict:
    return {"layer": target.layer.name, "operator": target.operator,
            "input_amax": [amax[node] for node in target.activations],
            "weight_axis": target.weight_axis if target.weight is not None else None,
            "error": errors.get(target.layer.name)}
