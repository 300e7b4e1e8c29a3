"""The time of a channel-removal plan, predicted from a per-layer latency table without touching the graph.

The caller hands in the table: a callable `(layer, in_channels, out_channels) -> ms` that gives the time of
one timed layer (a 2-D convolution, a linear layer or a self-attention, described by `TimedLayer`) at those
widths; the runtime measures one (runtime/tables/table.py), a test writes one by hand. A plan's time is the
sum over the timed layers of their time at the widths the plan leaves them: the surviving widths of the
layer's input and weight (an attention's heads and head dims), the same ones the MACs prediction reads
(plan_cost.py). Other operators (norms, pooling, adds, layout changes) are not in the sum: the table prices
what channel removal changes most, and a whole-model measurement is what confirms a speed-up.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from prunefx.graph.channels.plan_cost import CostModel
from prunefx.graph.channels.removal import expand_mask
from prunefx.graph.channels.timed_attention import timed_attention
from prunefx.graph.counting import _shape, node_macs
from prunefx.graph.errors import PrunefxError

aten = torch.ops.aten
_CONV2D = {aten.conv2d.default, aten.conv2d.padding, aten.convolution.default}
ATTENTION_KINDS = ("attention", "attention_products")  # fused (scaled_dot_product_attention), spelled out


@dataclass(frozen=True)
class TimedLayer:
    """One layer a latency table times: its kind and geometry at some widths (the dense ones as found in
    the graph; `resized` gives it at others). A backend builds a one-layer model from this alone. An attention's
    widths are its heads (in) and head dim (out): q, k and v of one shape, softmax(q kᵀ / sqrt(dim)) v, fused
    ("attention") or spelled out as products ("attention_products"; timed_attention.py)."""

    name: str                        # the graph node
    kind: str                        # "conv2d", "linear", or one of ATTENTION_KINDS
    input_shape: tuple[int, ...]     # [N, C, H, W] for conv2d, [..., C] for linear, q's [N, heads, tokens, dim]
    out_channels: int                # an attention's head dim
    bias: bool
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()    # begin and end per spatial dim: (top, left, bottom, right)
    dilation: tuple[int, ...] = ()
    groups: int = 1
    epilogue: tuple[str, ...] = ()   # what runs on its output alone, in order: "batch_norm", then an activation
    batch: int = 1                   # the model's batch size input_shape was found at (not part of the geometry)
    score_terms: int = 0             # attention: tensors added to its scores (a relative-position bias, a mask)
    keys: int = 0                    # attention: the tokens its k and v hold, where fewer than its q's

    @property
    def in_channels(self) -> int:
        return self.input_shape[-1] if self.kind == "linear" else self.input_shape[1]  # an attention's heads

    def resized(self, in_channels: int, out_channels: int) -> TimedLayer:
        """This layer with other widths: a depthwise convolution stays depthwise (its group count follows its
        channels, as the removal rewrites it); other grouped convolutions keep their group count."""
        shape = list(self.input_shape)
        shape[-1 if self.kind == "linear" else 1] = in_channels
        if self.kind in ATTENTION_KINDS:
            shape[-1] = out_channels
        depthwise = self.groups > 1 and self.groups == self.in_channels
        return replace(self, input_shape=tuple(shape), out_channels=out_channels,
                       groups=in_channels if depthwise else self.groups)

    def with_batch(self, batch: int) -> TimedLayer:
        """This layer in the model run at `batch`: its first dim scaled with the model's, since a layer can see
        more rows than images (Swin's attention sees one per window: batch x windows)."""
        rows = self.input_shape[0]
        first = rows // self.batch * batch if rows % self.batch == 0 else batch
        return replace(self, input_shape=(first, *self.input_shape[1:]), batch=batch)

    def geometry(self) -> str:
        """Everything but the name: equal geometries time alike, so a cache keys entries by this."""
        return (f"{self.kind} in={list(self.input_shape)} out={self.out_channels} bias={int(self.bias)} "
                f"k={list(self.kernel)} s={list(self.stride)} p={list(self.padding)} d={list(self.dilation)} "
                f"g={self.groups}" + (f" e={'+'.join(self.epilogue)}" if self.epilogue else "")
                + (f" t={self.score_terms}" if self.score_terms else "") + (f" kv={self.keys}" if self.keys else ""))


LayerTime = Callable[[TimedLayer, int, int], float]  # (dense layer, in width, out width) -> ms


def timed_layers(module: torch.fx.GraphModule) -> list[TimedLayer]:
    """Every 2-D convolution, linear layer and self-attention (timed_attention.py) of the graph whose shapes the
    metadata records, at its dense widths. Transposed, 1-D and 3-D convolutions and other products of
    activations are not timed."""
    layers, batch = [], _model_batch(module)
    for node in module.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in _CONV2D:
            layer = _convolution(node)
        elif node.target is aten.linear.default:
            layer = _linear(node)
        elif (attention := timed_attention(node)) is not None:
            keys = attention.keys if attention.keys != attention.shape[2] else 0
            layer = TimedLayer(node.name, "attention" if attention.fused else "attention_products", attention.shape,
                               attention.shape[-1], False, score_terms=attention.score_terms, keys=keys)
        else:
            continue
        if layer is not None:
            found = epilogue(node, norm=layer.kind == "conv2d") if layer.kind not in ATTENTION_KINDS else ()
            layers.append(replace(layer, epilogue=found, batch=batch))
    return layers


def _model_batch(module: torch.fx.GraphModule) -> int:
    """The first dim of the graph's first tensor input: the batch size its shapes were recorded at."""
    for node in module.graph.find_nodes(op="placeholder"):
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor) and value.dim() > 0 and int(value.shape[0]) > 0:
            return int(value.shape[0])
    return 1


ACTIVATIONS = ("relu", "relu6", "silu", "gelu", "hardswish", "hardsigmoid", "sigmoid")
_NORMS = ("batch_norm", "_native_batch_norm_legit_no_training")


def _op(node: torch.fx.Node) -> str:
    packet = getattr(node.target, "_overloadpacket", None)
    name = getattr(packet, "__name__", "") if node.op == "call_function" else ""
    if name in ("hardtanh", "hardtanh_") and tuple(node.args[1:3]) == (0.0, 6.0):
        return "relu6"
    return name.rstrip("_") if name not in _NORMS else name


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def epilogue(node: torch.fx.Node, norm: bool = True) -> tuple[str, ...]:
    """The inference batch norm (where `norm`: after a convolution) and the activation that alone read a
    layer's output, in order: a runtime runs them with the layer (ONNX Runtime folds the norm and fuses the
    activation; a GPU runs them on the output it just wrote), so a latency table prices the layer with them."""
    found: list[str] = []
    user = _only_user(node)
    if norm and user is not None and _op(user) in _NORMS:
        found.append("batch_norm")
        if _op(user) != "batch_norm":  # the native norm returns a tuple: its output is item 0
            item = _only_user(user)
            user = item if item is not None and item.target is operator.getitem and item.args[1] == 0 else None
        user = _only_user(user) if user is not None else None
    if user is not None and _op(user) in ACTIVATIONS:
        found.append(_op(user))
    return tuple(found)


def _argument(node: torch.fx.Node, index: int, name: str, default):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _pair(value, size: int = 2) -> tuple[int, ...]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return tuple(int(v) for v in (values * size if len(values) == 1 else values))


def _convolution(node: torch.fx.Node) -> TimedLayer | None:
    source, weight = _shape(node.args[0]), _shape(node.args[1])
    if source is None or weight is None or len(weight) != 4 or len(source) != 4:
        return None
    if node.target is aten.convolution.default:
        if node.args[6]:  # transposed
            return None
        stride, padding, dilation, groups = node.args[3], node.args[4], node.args[5], node.args[8]
    else:
        stride = _argument(node, 3, "stride", 1)
        padding = _argument(node, 4, "padding", 0)
        dilation = _argument(node, 5, "dilation", 1)
        groups = _argument(node, 6, "groups", 1)
    kernel, dilation = _pair(weight[2:]), _pair(dilation)
    if isinstance(padding, str):  # "valid" or "same" (the extra pixel of an odd total goes at the end)
        totals = [0 if padding == "valid" else d * (k - 1) for k, d in zip(kernel, dilation)]
        pads = tuple(t // 2 for t in totals) + tuple(t - t // 2 for t in totals)
    else:
        pads = _pair(padding) * 2
    bias = _argument(node, 2, "bias", None) is not None
    return TimedLayer(node.name, "conv2d", source, int(weight[0]), bias, kernel, _pair(stride), pads, dilation,
                      int(groups))  # type: ignore[arg-type]  # an fx argument: an int here


def _linear(node: torch.fx.Node) -> TimedLayer | None:
    source, weight = _shape(node.args[0]), _shape(node.args[1])
    if source is None or weight is None or len(weight) != 2:
        return None
    return TimedLayer(node.name, "linear", source, int(weight[0]), _argument(node, 2, "bias", None) is not None)


def width_dims(node: torch.fx.Node, layer: TimedLayer) -> tuple[list[tuple], list[tuple]]:
    """The (tensor, axis) dims whose surviving indices are a timed layer's in and out widths: a layer's input
    channels and weight rows; an attention's heads, and the head dims of q and v, whose mean is its out width
    (its two products' MACs go with the mean, and the timers run q, k and v of one width)."""
    if layer.kind in ATTENTION_KINDS:
        attention = timed_attention(node)
        assert attention is not None, "a timed attention's node is one"
        return [(attention.q, 1)], [(attention.q, -1), (attention.v, -1)]
    return [(node.args[0], 1 if layer.kind == "conv2d" else -1)], [(node.args[1], 0)]


def layer_macs(node: torch.fx.Node, layer: TimedLayer) -> int:
    """The MACs a timed layer stands for: a spelled-out attention's two products, any other layer's node."""
    attention = timed_attention(node) if layer.kind in ATTENTION_KINDS else None
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
        self.dense_macs = [layer_macs(node, layer) for node, layer in zip(self.nodes, self.layers)]
        self._memo: dict[tuple[int, int, int], float] = {}
        self._index_widths()
        self.dense_layers = self.layer_ms(np.zeros(cost_model.classes, dtype=bool))
        self.dense_ms = float(self.dense_layers.sum())

    def _index_widths(self) -> None:
        """The classes of every timed layer's input-channel dim and output-channel dim, laid end to end, so that
        a plan's widths are one count of surviving classes (a dim without labels keeps its dense width)."""
        spans, self._fixed, parts = [], [], []
        for node, layer in zip(self.nodes, self.layers):
            for dims, dense in zip(width_dims(node, layer), (layer.in_channels, layer.out_channels)):
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

    def macs_at(self, index: int, in_width: int, out_width: int) -> float:
        """The MACs of timed layer `index` at these widths: its dense MACs scaled by its outputs and by what each
        output reads (in / groups: one channel for a depthwise convolution at any width); an attention's by its
        heads and its mean head dim."""
        layer = self.layers[index]
        if not layer.in_channels or not layer.out_channels:
            return 0.0
        depthwise = layer.groups > 1 and layer.groups == layer.in_channels  # as `resized` keeps it
        reads = 1 if depthwise else in_width / layer.groups
        return self.dense_macs[index] * reads / (layer.in_channels / layer.groups) * out_width / layer.out_channels

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


def priced_by(latency: PlanLatency | None) -> PlanLatency:
    """`latency`, checked to price a `layer_time` target: a table given, and a dense time to be a fraction of."""
    if latency is None:
        raise PrunefxError("a layer_time target needs a latency table (layer_time=...)")
    if latency.dense_ms <= 0:
        raise PrunefxError("the latency table gives the dense model's timed layers no time (0 ms); a layer_time "
                           "target cannot be a fraction of it")
    return latency
