"""The layers a latency table times, found in a captured graph: 2-D convolutions, linear layers, attention
(timed_attention.py) and layer norms, each a `TimedLayer`, its kind and geometry at its dense widths, with what runs
on its output alone (its epilogue: an inference batch norm, an activation), which a runtime runs with it. A layer
norm computes no MACs but reads and writes its whole input, a transformer's residual stream: a tenth of a
ConvNeXt's or a ViT's time on ONNX Runtime's CPU provider, which narrowing the stream saves. A backend builds a
one-layer model from a TimedLayer alone (runtime/tables/timers.py); plan_latency.py prices plans from their times.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace

import torch

from prunefx.graph.channels.timed_attention import timed_attention
from prunefx.graph.counting import _shape

aten = torch.ops.aten
_CONV2D = {aten.conv2d.default, aten.conv2d.padding, aten.convolution.default}
_LAYER_NORMS = {aten.layer_norm.default, aten.native_layer_norm.default}
ATTENTION_KINDS = ("attention", "attention_products")  # fused (scaled_dot_product_attention), spelled out
_LAST_AXIS = ("linear", "layer_norm")  # kinds whose channels are their input's last dim

@dataclass(frozen=True)
class TimedLayer:
    """One layer a latency table times: its kind and geometry at some widths (the dense ones as found in
    the graph; `resized` gives it at others). A backend builds a one-layer model from this alone. An attention's
    widths are its heads (in) and head dim (out): q, k and v of one shape, softmax(q kᵀ / sqrt(dim)) v, fused
    ("attention") or spelled out as products ("attention_products"; timed_attention.py)."""

    name: str                        # the graph node
    kind: str                        # "conv2d", "linear", "layer_norm", or one of ATTENTION_KINDS
    input_shape: tuple[int, ...]     # [N, C, H, W] for conv2d, [..., C] for linear and layer_norm, q's [N, heads,
    #                                  tokens, dim] for attention
    out_channels: int                # an attention's head dim; a layer norm's channels
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
        return self.input_shape[-1] if self.kind in _LAST_AXIS else self.input_shape[1]  # an attention's heads

    @property
    def tied(self) -> bool:
        """Whether its output width follows its input width (a depthwise convolution, a layer norm): one axis."""
        return self.kind == "layer_norm" or (self.groups > 1 and self.groups == self.in_channels)

    def resized(self, in_channels: int, out_channels: int) -> TimedLayer:
        """This layer with other widths: a depthwise convolution stays depthwise (its group count follows its
        channels, as the removal rewrites it); other grouped convolutions keep their group count; a layer norm has
        one width, `in_channels`."""
        shape = list(self.input_shape)
        shape[-1 if self.kind in _LAST_AXIS else 1] = in_channels
        if self.kind == "layer_norm":
            return replace(self, input_shape=tuple(shape), out_channels=in_channels)
        if self.kind in ATTENTION_KINDS:
            shape[-1] = out_channels
        return replace(self, input_shape=tuple(shape), out_channels=out_channels,
                       groups=in_channels if self.tied else self.groups)

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


def timed_layers(module: torch.fx.GraphModule) -> list[TimedLayer]:
    """Every 2-D convolution, linear layer, self-attention (timed_attention.py) and layer norm over the last dim of
    the graph whose shapes the metadata records, at its dense widths. Transposed, 1-D and 3-D convolutions, other
    products of activations and other operators without weights (adds, layout changes) are not timed."""
    layers, batch = [], _model_batch(module)
    for node in module.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in _CONV2D:
            layer = _convolution(node)
        elif node.target is aten.linear.default:
            layer = _linear(node)
        elif node.target in _LAYER_NORMS:
            layer = _layer_norm(node)
        elif (attention := timed_attention(node)) is not None:
            keys = attention.keys if attention.keys != attention.shape[2] else 0
            layer = TimedLayer(node.name, "attention" if attention.fused else "attention_products", attention.shape,
                               attention.shape[-1], False, score_terms=attention.score_terms, keys=keys)
        else:
            continue
        if layer is not None:
            found = epilogue(node, norm=layer.kind == "conv2d") if layer.kind in ("conv2d", "linear") else ()
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


def _layer_norm(node: torch.fx.Node) -> TimedLayer | None:
    """A layer norm over its input's last dim (the form every vision transformer's and ConvNeXt's takes), timed
    with a scale and, where it has one, a shift."""
    source = _shape(node.args[0])
    if source is None or len(source) < 2 or len(list(node.args[1])) != 1 or int(node.args[1][0]) != source[-1]:
        return None
    return TimedLayer(node.name, "layer_norm", source, int(source[-1]), _argument(node, 3, "bias", None) is not None)
