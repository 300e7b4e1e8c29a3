"""One layer of a latency table rendered to run alone (runtime/tables/timers.py times it): a one-layer ONNX
model (`layer_model`) and a torch module (`LayerModule`), built from a `TimedLayer` alone, with the same random
weights, batch norm and attention score terms, so that both backends time the same computation.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from prunefx.graph.channels.timed_layers import ATTENTION_KINDS, TimedLayer

OPSET = 18
IR_VERSION = 9  # read by every ONNX Runtime prunefx supports
NORM_EPS = 1e-5


def _weights(layer: TimedLayer) -> tuple[np.ndarray, np.ndarray | None]:
    """Random weights of the layer's shape (their values do not change its time) and a bias if it has one."""
    rng = np.random.default_rng(0)
    weight = (0.05 * rng.standard_normal(_weight_shape(layer))).astype(np.float32)
    bias = (0.05 * rng.standard_normal(layer.out_channels)).astype(np.float32) if layer.bias else None
    return weight, bias


def _weight_shape(layer: TimedLayer) -> tuple[int, ...]:
    """The shape of a convolution's, linear layer's or layer norm's weight (a layer norm's: its scale)."""
    if layer.kind == "conv2d":
        return (layer.out_channels, layer.in_channels // layer.groups, *layer.kernel)
    if layer.kind == "layer_norm":
        return (layer.in_channels,)
    return (layer.out_channels, layer.in_channels)


def weight_bytes(layer: TimedLayer) -> int:
    """The bytes of the layer's float32 weights (an attention's score terms; a layer norm's scale)."""
    if layer.kind in ATTENTION_KINDS:
        _, heads, tokens, _ = layer.input_shape
        return 4 * layer.score_terms * heads * tokens * key_shape(layer)[2]
    return 4 * math.prod(_weight_shape(layer))


def _norm(layer: TimedLayer) -> tuple[np.ndarray, ...]:
    """An inference batch norm's scale, shift, mean and variance over the layer's outputs (random, positive
    variance): they do not change its time, and both renderings of the layer read the same ones."""
    rng = np.random.default_rng(1)
    scale, shift, mean = (rng.standard_normal(layer.out_channels).astype(np.float32) for _ in range(3))
    return scale, shift, mean, (0.5 + rng.random(layer.out_channels)).astype(np.float32)


def _onnx_epilogue(layer: TimedLayer, source: str) -> tuple[list, list]:
    """The ONNX nodes (and initializers) of the layer's epilogue, from `source` to the output "y"."""
    nodes, initializers = [], []
    for index, op in enumerate(layer.epilogue):
        out = "y" if index == len(layer.epilogue) - 1 else f"e{index}"
        if op == "batch_norm":
            names = [f"bn_{part}" for part in ("scale", "shift", "mean", "var")]
            initializers += [numpy_helper.from_array(array, name) for array, name in zip(_norm(layer), names)]
            nodes.append(helper.make_node("BatchNormalization", [source, *names], [out], epsilon=NORM_EPS))
        elif op == "relu6":
            initializers += [numpy_helper.from_array(np.array(v, np.float32), n) for v, n in ((0, "lo"), (6, "hi"))]
            nodes.append(helper.make_node("Clip", [source, "lo", "hi"], [out]))
        elif op in ("silu", "gelu"):  # x * sigmoid(x); x * (1 + erf(x / sqrt 2)) / 2, which ORT fuses to Gelu
            if op == "silu":
                nodes.append(helper.make_node("Sigmoid", [source], [f"{out}_g"]))
            else:
                initializers += [numpy_helper.from_array(np.array(v, np.float32), n)
                                 for v, n in ((np.sqrt(2.0), "root2"), (1.0, "one"), (0.5, "half"))]
                nodes += [helper.make_node("Div", [source, "root2"], [f"{out}_d"]),
                          helper.make_node("Erf", [f"{out}_d"], [f"{out}_e"]),
                          helper.make_node("Add", [f"{out}_e", "one"], [f"{out}_a"]),
                          helper.make_node("Mul", [f"{out}_a", "half"], [f"{out}_g"])]
            nodes.append(helper.make_node("Mul", [source, f"{out}_g"], [out]))
        elif op == "hardsigmoid":
            nodes.append(helper.make_node("HardSigmoid", [source], [out], alpha=1 / 6, beta=0.5))
        else:
            nodes.append(helper.make_node({"relu": "Relu", "hardswish": "HardSwish", "sigmoid": "Sigmoid"}[op],
                                          [source], [out]))
        source = out
    return nodes, initializers


def key_shape(layer: TimedLayer) -> tuple[int, ...]:
    """An attention's k and v: [N, heads, keys, dim] (as many tokens as q where the layer names no other count)."""
    batch, heads, tokens, dim = layer.input_shape
    return batch, heads, layer.keys or tokens, dim


def _score_terms(layer: TimedLayer) -> list[np.ndarray]:
    """What an attention adds to its scores (a relative-position bias, a shift mask, a mask): one random
    [heads, tokens, keys] tensor per term, broadcast over the batch (its values do not change the time)."""
    rng = np.random.default_rng(2)
    _, heads, tokens, _ = layer.input_shape
    keys = key_shape(layer)[2]
    return [(0.1 * rng.standard_normal((heads, tokens, keys))).astype(np.float32) for _ in range(layer.score_terms)]


def _input_shapes(layer: TimedLayer) -> dict[str, tuple[int, ...]]:
    """The inputs of a one-layer model: `x`, and an attention's `kv` where its k and v hold fewer tokens."""
    return {"x": tuple(layer.input_shape), **({"kv": key_shape(layer)} if layer.keys else {})}


def _key_values(layer: TimedLayer) -> np.ndarray:
    """Random k and v of an attention over fewer tokens (the module's buffer, the ONNX model's `kv` input)."""
    return np.random.default_rng(3).standard_normal(key_shape(layer)).astype(np.float32)


def layer_feed(layer: TimedLayer) -> dict[str, np.ndarray]:
    """Random inputs of a one-layer model (_input_shapes)."""
    feed = {"x": np.random.default_rng(1).standard_normal(layer.input_shape).astype(np.float32)}
    return {**feed, "kv": _key_values(layer)} if layer.keys else feed


def _onnx_attention(layer: TimedLayer, result: str) -> tuple[list, list]:
    """softmax(q kᵀ / sqrt(dim)) v with x as q, and x (or kv, where fewer tokens) as k and v, as the exporter writes
    it: fused, q and kᵀ each scaled by dim^-1/4 (which ONNX Runtime fuses into the product); spelled out, q scaled
    by dim^-1/2. Then the scores' additive terms (a mask, a bias) and the two products around a softmax."""
    dim, fused = layer.input_shape[-1], layer.kind == "attention"
    initializers = [numpy_helper.from_array(np.array(dim ** (-0.25 if fused else -0.5), np.float32), "scale")]
    source = "kv" if layer.keys else "x"
    nodes = [helper.make_node("Mul", ["x", "scale"], ["q"]),
             helper.make_node("Transpose", [source], ["kt" if fused else "keys"], perm=[0, 1, 3, 2])]
    if fused:
        nodes.append(helper.make_node("Mul", ["kt", "scale"], ["keys"]))
    nodes.append(helper.make_node("MatMul", ["q", "keys"], ["s0"]))
    for index, term in enumerate(_score_terms(layer)):
        initializers.append(numpy_helper.from_array(term, f"term{index}"))
        nodes.append(helper.make_node("Add", [f"s{index}", f"term{index}"], [f"s{index + 1}"]))
    nodes += [helper.make_node("Softmax", [f"s{layer.score_terms}"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", source], [result])]
    return nodes, initializers


def _onnx_convolution(layer: TimedLayer, result: str, lead_in: bool) -> tuple[list, list]:
    weight, bias = _weights(layer)
    initializers, inputs, lead = [numpy_helper.from_array(weight, "w")], ["x", "w"], []
    if lead_in:
        channels = layer.in_channels
        initializers.append(numpy_helper.from_array(np.ones((channels, 1, 1, 1), np.float32), "lead_w"))
        lead = [helper.make_node("Conv", ["x", "lead_w"], ["lead"], kernel_shape=[1, 1], group=channels)]
        inputs[0] = "lead"
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias, "b"))
        inputs.append("b")
    return lead + [helper.make_node("Conv", inputs, [result], kernel_shape=list(layer.kernel),
                                    strides=list(layer.stride), pads=list(layer.padding),
                                    dilations=list(layer.dilation), group=layer.groups)], initializers


def _onnx_linear(layer: TimedLayer, result: str) -> tuple[list, list]:
    weight, bias = _weights(layer)
    initializers = [numpy_helper.from_array(np.ascontiguousarray(weight.T), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], [result if bias is None else "m"])]
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias, "b"))
        nodes.append(helper.make_node("Add", ["m", "b"], [result]))
    return nodes, initializers


def _onnx_layer_norm(layer: TimedLayer, result: str) -> tuple[list, list]:
    weight, bias = _weights(layer)
    initializers = [numpy_helper.from_array(weight, "w")] + ([numpy_helper.from_array(bias, "b")] if layer.bias else [])
    return [helper.make_node("LayerNormalization", ["x", "w", *(["b"] if layer.bias else [])], [result], axis=-1,
                             epsilon=NORM_EPS)], initializers


def layer_model(layer: TimedLayer, *, lead_in: bool = False) -> onnx.ModelProto:
    """A one-layer ONNX model computing `layer`, and its epilogue, on an input `x` of its input shape. `lead_in`:
    a convolution reads its input from a depthwise 1x1 convolution of weight one (the same values), as it reads
    a previous convolution's output inside a model: ONNX Runtime's CPU provider then hands it its blocked layout,
    where straight after the input's reorder a convolution of 16 input channels ran twice as long."""
    result = "t" if layer.epilogue else "y"
    if layer.kind in ATTENTION_KINDS:
        nodes, initializers = _onnx_attention(layer, result)
    elif layer.kind == "conv2d":
        nodes, initializers = _onnx_convolution(layer, result, lead_in)
    elif layer.kind == "layer_norm":
        nodes, initializers = _onnx_layer_norm(layer, result)
    else:
        nodes, initializers = _onnx_linear(layer, result)
    tail, extra = _onnx_epilogue(layer, result)
    nodes, initializers = nodes + tail, initializers + extra
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
              for name, shape in _input_shapes(layer).items()]
    graph = helper.make_graph(nodes, "layer", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


_TORCH_ACTIVATIONS = {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "gelu": F.gelu,
                      "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "sigmoid": torch.sigmoid}


class LayerModule(torch.nn.Module):
    """The layer as a module: a convolution (with its own asymmetric padding), a linear layer, a layer norm or an
    attention on its input as q, k and v, then its epilogue (an inference batch norm, an activation)."""

    def __init__(self, layer: TimedLayer):
        super().__init__()
        self.layer = layer
        self.weight = self.bias = None
        for index, term in enumerate(_score_terms(layer) if layer.kind in ATTENTION_KINDS else ()):
            self.register_buffer(f"score_term{index}", torch.from_numpy(term))
        if layer.keys:  # k and v 3-D: a device that makes 4-D tensors channels_last leaves it as fused kernels read it
            batch, heads, keys, dim = key_shape(layer)
            self.register_buffer("kv", torch.from_numpy(_key_values(layer)).reshape(batch * heads, keys, dim))
        if layer.kind not in ATTENTION_KINDS:
            weight, bias = _weights(layer)
            self.weight = torch.nn.Parameter(torch.from_numpy(weight), requires_grad=False)
            self.bias = torch.nn.Parameter(torch.from_numpy(bias), requires_grad=False) if bias is not None else None
        if "batch_norm" in layer.epilogue:
            for name, array in zip(("norm_scale", "norm_shift", "norm_mean", "norm_var"), _norm(layer)):
                self.register_buffer(name, torch.from_numpy(array))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._layer(x)
        for op in self.layer.epilogue:
            if op == "batch_norm":  # after a convolution only (graph/channels/timed_layers.epilogue)
                y = F.batch_norm(y, self.norm_mean, self.norm_var, self.norm_scale, self.norm_shift, False, 0.0,
                                 NORM_EPS)
            else:
                y = _TORCH_ACTIVATIONS[op](y)
        return y

    def _layer(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if layer.kind == "linear":
            return F.linear(x, self.weight, self.bias)
        if layer.kind == "layer_norm":
            return F.layer_norm(x, (layer.in_channels,), self.weight, self.bias, NORM_EPS)
        if layer.kind in ATTENTION_KINDS:  # a view of an input laid out flat (runtime/cuda/layer_timer.probe_shape)
            return self._attention(x.reshape(layer.input_shape))
        top, left, bottom, right = layer.padding
        if (top, left) != (bottom, right):
            return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, layer.stride, 0,
                            layer.dilation, layer.groups)
        return F.conv2d(x, self.weight, self.bias, layer.stride, (top, left), layer.dilation, layer.groups)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """Fused where the model runs it fused (a GPU's flash kernels), else its products as the model spells them."""
        kv = self.kv.reshape(key_shape(self.layer)) if self.layer.keys else x
        if self.layer.kind == "attention":  # with its mask, an additive term, where it has one
            return F.scaled_dot_product_attention(x, kv, kv, attn_mask=getattr(self, "score_term0", None))
        scores = (x * x.shape[-1] ** -0.5) @ kv.transpose(-2, -1)
        for index in range(self.layer.score_terms):
            scores = scores + getattr(self, f"score_term{index}")
        return torch.softmax(scores, dim=-1) @ kv
