"""Attention with a mask (relative position bias, Swin's windows) exports to ONNX with the dynamo exporter, dense
and pruned, and the TorchScript fallback takes a Program loaded from model.pt2.

Before, the dynamo exporter stopped on "Cannot view a tensor with shape [1, 16, 4, 16] ..." (its two fake runs
disagree on the layout of scaled_dot_product_attention's output: runtime/onnx/reshape_layout.py), and the
TorchScript exporter on "Calling train() is not supported yet" (it called train() on torch.export's module)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
import torch.nn as nn

from prunefx.graph import Program, capture, count
from prunefx.passes import remove_channels
from prunefx.runtime import export_onnx
from prunefx.runtime.onnx.reshape_layout import contiguous_before_reshapes


def tiny_relpos_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_relpos_small_patch16_224", pretrained=False, embed_dim=64, depth=2,
                             num_heads=4, img_size=64).eval()


def onnx_outputs(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def assert_close(onnx_output: np.ndarray, expected: torch.Tensor) -> None:
    expected = expected.detach().numpy()
    assert onnx_output.shape == expected.shape
    assert np.abs(onnx_output - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_a_dense_relative_position_vit_exports_with_dynamo_and_matches_timm(tmp_path):
    model, x = tiny_relpos_vit(), torch.randn(1, 3, 64, 64)
    written = export_onnx(capture(model, x, name="relpos"), tmp_path / "dense.onnx")
    assert (written.exporter, written.fallback_reason) == ("dynamo", None)
    x2 = torch.randn(1, 3, 64, 64)  # not the example input: the file computes, it does not replay
    with torch.no_grad():
        assert_close(onnx_outputs(written.path, x2), model(x2))


def test_a_pruned_relative_position_vit_exports_with_both_exporters(tmp_path):
    x = torch.randn(1, 3, 64, 64)
    program = capture(tiny_relpos_vit(), x, name="relpos").eval()
    dense_macs = count(program).macs  # before: the pass rewrites the Program it is handed
    pruned = remove_channels(program, config={"macs": 0.5}).program
    assert count(pruned).macs <= 0.55 * dense_macs
    pruned.save(tmp_path / "model.pt2")
    loaded = Program.load(tmp_path / "model.pt2")  # what `prunefx prune` leaves: torch.export's module
    x2 = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = pruned.module(x2)
    for exporter in ("dynamo", "torchscript"):
        written = export_onnx(loaded, tmp_path / f"{exporter}.onnx", exporter=exporter)
        assert (written.exporter, written.fallback_reason) == (exporter, None)
        assert_close(onnx_outputs(written.path, x2), expected)
    assert not loaded.module.training


class TransposedReshape(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2).reshape(x.shape[0], -1) + x.reshape(x.shape[0], -1)


def reshape_inputs(graph: torch.fx.Graph) -> list[str]:
    return [str(node.args[0].target) for node in graph.nodes if node.target == torch.ops.aten.reshape.default]


def test_only_reshapes_of_non_contiguous_tensors_get_a_contiguous_copy_and_the_original_is_kept():
    x = torch.randn(2, 3, 4)
    exported = torch.export.export(TransposedReshape(), (x,))
    rewritten = contiguous_before_reshapes(exported)
    assert reshape_inputs(exported.graph) == ["aten.transpose.int", "x"]
    assert reshape_inputs(rewritten.graph) == ["aten.clone.default", "x"]
    torch.testing.assert_close(rewritten.module()(x), TransposedReshape()(x))
    contiguous_only = torch.export.export(nn.Flatten(), (x,))
    assert contiguous_before_reshapes(contiguous_only) is contiguous_only


@pytest.mark.slow
@pytest.mark.zoo  # full-size timm models: `make test-zoo`
@pytest.mark.parametrize("name", ["beit_base_patch16_224", "vit_relpos_small_patch16_224",
                                  "swin_tiny_patch4_window7_224"])
def test_full_size_masked_attention_models_export_with_dynamo_after_pruning(name, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    program = capture(timm.create_model(name, pretrained=False).eval(), x, name=name).eval()
    pruned = remove_channels(program, config={"macs": 0.5}).program
    written = export_onnx(pruned, tmp_path / "model.onnx")
    assert (written.exporter, written.fallback_reason) == ("dynamo", None)
    with torch.no_grad():
        assert_close(onnx_outputs(written.path, x), pruned.module(x))


class WindowBias(nn.Module):
    """One attention layer over a 16 x 16 window, its relative position bias gathered from a table (Swin, BEiT):
    the bias the export folds is 8 x 256 x 256 floats, 2 MiB."""

    def __init__(self, dim=64, heads=8, window=16):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("index", relative[..., 0] * (2 * window - 1) + relative[..., 1], persistent=False)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.table[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def test_folding_a_large_bias_prints_nothing(tmp_path, capfd):
    torch.manual_seed(0)
    x = torch.randn(1, 256, 64)
    model = WindowBias().eval()
    written = export_onnx(capture(model, x, name="window"), tmp_path / "window.onnx")
    captured = capfd.readouterr()
    assert "[W]" not in captured.out + captured.err  # graph-surgeon's warnings: "large outputs", "colored"
    assert (written.exporter, written.fallback_reason) == ("dynamo", None)
    with torch.no_grad():
        assert_close(onnx_outputs(written.path, x), model(x))


def test_a_quantized_relative_position_vit_with_its_attention_in_float_exports(tmp_path):
    from prunefx.passes import quantize_int8
    from prunefx.runtime import export_quantized_onnx

    x = torch.randn(1, 3, 64, 64)
    program = capture(tiny_relpos_vit(), x, name="relpos").eval()
    calibration = [(torch.randn(1, 3, 64, 64),) for _ in range(2)]
    quantized = quantize_int8(program, config={"calibration": calibration, "attention": False}).program
    written = export_quantized_onnx(quantized, tmp_path / "int8.onnx")  # stopped on "Cannot view a tensor"
    with torch.no_grad():  # the file computes what the fake-quantized Program computes
        assert_close(onnx_outputs(written.path, x), quantized.module(x))
