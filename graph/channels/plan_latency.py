"""The time of a channel-removal plan, predicted from a per-layer latency table without touching the graph.

The caller hands in the table: a callable `(layer, in_channels, out_channels) -> ms` that gives the time of
one timed layer (a 2-D convolution, a linear layer, a self-attention or a layer norm: `TimedLayer`) at those
widths; the runtime measures one (runtime/tables/table.py), a test writes one by hand. A plan's time is the
sum over the timed layers of their time at the widths the plan leaves them: the surviving widths of the
layer's input and weight (an attention's heads and head dims), the same ones the MACs prediction reads
(plan_cost.py); a layer norm's width is that of the dim it normalises. Other operators (pooling, adds, layout
changes, and what the runtime fuses into a layer) are not in the sum: the table prices what channel removal
changes most, and a whole-model measurement is what confirms a speed-up.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from prunefx.graph.channels.plan_cost import CostModel
from prunefx.graph.channels.removal import expand_mask
from prunefx.graph.channels.timed_attention import TimedAttention, timed_attention
from prunefx.graph.channels.timed_layers import ATTENTION_KINDS, TimedLayer, timed_layers
from prunefx.graph.counting import node_macs
from prunefx.graph.errors import PrunefxError

LayerTime = Callable[[TimedLayer, int, int], float]  # (dense layer, in width, out width) -> ms


def width_dims(node: torch.fx.Node, layer: TimedLayer, attention: TimedAttention | None) -> tuple[list[tuple], list[tuple]]:
    """The (tensor, axis) dims whose surviving indices are a timed layer's in and out widths: a layer's input
    channels and weight rows; an attention's (`attention`, found at `node`) heads, and the head dims of q and v,
    whose mean is its out width (its two products' MACs go with the mean, and the timers run q, k and v of one
    width)."""
    if attention is not None:
        return [(attention.q, 1)], [(attention.q, -1), (attention.v, -1)]
    if layer.kind == "layer_norm":  # one width, the normalised dim's
        return [(node.args[0], -1)], [(node.args[0], -1)]
    return [(node.args[0], 1 if layer.kind == "conv2d" else -1)], [(node.args[1], 0)]


def layer_macs(node: torch.fx.Node, attention: TimedAttention | None) -> int:
    """The MACs a timed layer stands for: an attention's products, any other layer's node."""
    return sum(node_macs(product) for product in attention.products) if attention is not None else node_macs(node)


class PlanLatency:
    """Prices a removal mask in milliseconds: the sum of the table's time of every timed layer at the widths
    the removal leaves it. Lookups are memoised: a search prices the same layer at the same widths often."""

    def __init__(self, cost_model: CostModel, layer_time: LayerTime):
        if not callable(layer_time):
            raise PrunefxError("a latency table must be a callable (layer, in_channels, out_channels) -> ms")
        self.cost_model, self.layer_time = cost_model, layer_time
        layers = {layer.name: layer for layer in timed_layers(cost_model.module)}
        self.nodes = [node for node in cost_model.module.graph.nodes if node.name in layers]
        self.layers = [layers[node.name] for node in self.nodes]
        # found once: an attention's q, v and products give both its widths and its MACs
        attentions = [timed_attention(node) if layer.kind in ATTENTION_KINDS else None
                      for node, layer in zip(self.nodes, self.layers)]
        assert all(found is not None for found, layer in zip(attentions, self.layers) if layer.kind in ATTENTION_KINDS), \
            "a timed attention's node is one"
        self.dense_macs = [layer_macs(node, found) for node, found in zip(self.nodes, attentions)]
        self._memo: dict[tuple[int, int, int], float] = {}
        # the memo's keys packed in one sorted array beside their times, for lookups of many widths at once
        self._packed_keys, self._packed_times = np.zeros(0, dtype=np.int64), np.zeros(0)
        self._index_widths(attentions)
        self.dense_layers = self.layer_ms(np.zeros(cost_model.classes, dtype=bool))
        self.dense_ms = float(self.dense_layers.sum())

    def _index_widths(self, attentions: list[TimedAttention | None]) -> None:
        """The classes of every timed layer's input-channel dim and output-channel dim, laid end to end, so that
        a plan's widths are one count of surviving classes (a dim without labels keeps its dense width);
        `attentions`: each layer's attention, None for the others."""
        spans, self._fixed, parts = [], [], []
        for node, layer, attention in zip(self.nodes, self.layers, attentions):
            for dims, dense in zip(width_dims(node, layer, attention), (layer.in_channels, layer.out_channels)):
                classes = [self.cost_model.dim_classes(arg, axis) for arg, axis in dims]
                labelled = all(each is not None for each in classes)
                spans.append(np.concatenate(classes) if labelled else np.zeros(0, dtype=np.int64))
                self._fixed.append(None if labelled else dense)
                parts.append(len(dims))
        self.spans = spans  # per layer: its input dim's classes (index 2i), its output dim's (2i + 1)
        self.parts = np.array(parts, dtype=np.int64)  # the dims a span lays end to end: its width is their mean
        self._span_classes = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
        self._span_bounds = np.concatenate([[0], np.cumsum([span.size for span in spans])]).astype(np.int64)

    def widths(self, removed_mask: np.ndarray, which: list[int] | None = None) -> list[tuple[int, int]]:
        """(in, out) widths of every timed layer after the removal (or of those at the indices `which`)."""
        return self.surviving_widths(~expand_mask(self.cost_model.analysis, removed_mask), which)

    def surviving_widths(self, survives: np.ndarray, which: list[int] | None = None) -> list[tuple[int, int]]:
        """`widths` from the classes that survive a removal (its expanded mask inverted)."""
        if which is not None:  # a few layers: count their spans alone (a search prices one group's layers often)
            return [(self._surviving(survives, 2 * index), self._surviving(survives, 2 * index + 1))
                    for index in which]
        running = np.concatenate([[0], np.cumsum(survives[self._span_classes], dtype=np.int64)])
        counts = ((running[self._span_bounds[1:]] - running[self._span_bounds[:-1]]) // self.parts).tolist()
        counts = [count if fixed is None else fixed for count, fixed in zip(counts, self._fixed)]
        return list(zip(counts[0::2], counts[1::2]))

    def _surviving(self, survives: np.ndarray, span: int) -> int:
        fixed = self._fixed[span]
        return fixed if fixed is not None else int(np.count_nonzero(survives[self.spans[span]])) // int(
            self.parts[span])

    def layer_ms(self, removed_mask: np.ndarray, which: list[int] | None = None) -> np.ndarray:
        """The time of every timed layer (or of those at the indices `which`, in that order) after the removal."""
        return self.times_at(range(len(self.layers)) if which is None else which, self.widths(removed_mask, which))

    def times_at(self, indices, widths: list[tuple[int, int]]) -> np.ndarray:
        """The table's times of the timed layers at `indices`, each at its (in, out) of `widths`."""
        return np.array([self.time_at(index, *pair) for index, pair in zip(indices, widths)], dtype=np.float64)

    def ms(self, removed_mask: np.ndarray) -> float:
        return float(self.layer_ms(removed_mask).sum())

    def macs_at(self, index: int, in_width, out_width):
        """The MACs of timed layer `index` at these widths (numbers, or arrays of them: an array alike): its dense
        MACs scaled by its outputs and by what each output reads (in / groups: one channel for a depthwise
        convolution at any width); an attention's by its heads and its mean head dim."""
        layer = self.layers[index]
        if not layer.in_channels or not layer.out_channels:
            return 0.0
        depthwise = layer.groups > 1 and layer.groups == layer.in_channels  # as `resized` keeps it
        reads = 1 if depthwise else in_width / layer.groups
        return self.dense_macs[index] * reads / (layer.in_channels / layer.groups) * out_width / layer.out_channels

    def macs_at_many(self, indices: list[int], ins: np.ndarray, outs: np.ndarray) -> np.ndarray:
        """macs_at of layer indices[l] at every (ins[l, j], outs[l, j]), [layers, widths]: macs_at on a row of widths
        at once (the same operations in the same order)."""
        result = np.zeros(ins.shape)
        for row, index in enumerate(indices):
            result[row] = self.macs_at(index, ins[row], outs[row])
        return result

    def times_at_many(self, indices: list[int], ins: np.ndarray, outs: np.ndarray) -> np.ndarray:
        """time_at of layer indices[l] at every (ins[l, j], outs[l, j]), [layers, widths]: looked up in the memo at
        once (a knapsack prices a group's every narrower width on every layer it touches, millions of lookups);
        widths not priced yet are priced by time_at first."""
        keys = _packed(np.asarray(indices, dtype=np.int64)[:, None], ins, outs)
        at = np.searchsorted(self._packed_keys, keys)
        found = self._packed_keys[np.minimum(at, self._packed_keys.size - 1)] == keys if self._packed_keys.size \
            else np.zeros(keys.shape, dtype=bool)
        if not found.all():
            missing = np.unique(keys[~found])
            self._pack(missing, [self.time_at(*_unpacked(key)) for key in missing.tolist()])
            at = np.searchsorted(self._packed_keys, keys)
        return self._packed_times[at]

    def _pack(self, keys: np.ndarray, times: list[float]) -> None:
        all_keys = np.concatenate([self._packed_keys, keys])
        order = np.argsort(all_keys, kind="stable")
        self._packed_keys, self._packed_times = all_keys[order], np.concatenate([self._packed_times, times])[order]

    def time_at(self, index: int, in_width: int, out_width: int) -> float:
        """The table's time of timed layer `index` at these widths."""
        key = (index, in_width, out_width)
        if key not in self._memo:
            value = float(self.layer_time(self.layers[index], in_width, out_width))
            if not np.isfinite(value) or value < 0:
                raise PrunefxError(f"the latency table gave {value!r} ms for layer {self.layers[index].name} at "
                                   f"{in_width} -> {out_width} channels (a time is a finite number >= 0)")
            self._memo[key] = value
        return self._memo[key]


_WIDTH_BITS = 24  # a key: layer index (15 bits), in width, out width (24 bits each) in one int64
_WIDTH_MASK = (1 << _WIDTH_BITS) - 1


def _packed(index: np.ndarray, ins: np.ndarray, outs: np.ndarray) -> np.ndarray:
    if (ins < 0).any() or (outs < 0).any() or (ins > _WIDTH_MASK).any() or (outs > _WIDTH_MASK).any():
        raise PrunefxError(f"a timed layer's width out of range ({int(ins.min())}..{int(ins.max())} in, "
                           f"{int(outs.min())}..{int(outs.max())} out)")
    return (index << (2 * _WIDTH_BITS)) | (ins.astype(np.int64) << _WIDTH_BITS) | outs.astype(np.int64)


def _unpacked(key: int) -> tuple[int, int, int]:
    """(layer index, in width, out width): the memo's key of a packed one."""
    return key >> (2 * _WIDTH_BITS), (key >> _WIDTH_BITS) & _WIDTH_MASK, key & _WIDTH_MASK


def priced_by(latency: PlanLatency | None) -> PlanLatency:
    """`latency`, checked to price a `layer_time` target: a table given, and a dense time to be a fraction of."""
    if latency is None:
        raise PrunefxError("a layer_time target needs a latency table (layer_time=...)")
    if latency.dense_ms <= 0:
        raise PrunefxError("the latency table gives the dense model's timed layers no time (0 ms); a layer_time "
                           "target cannot be a fraction of it")
    return latency
