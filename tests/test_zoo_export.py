"""Model zoo: capture + ONNX export + ONNX Runtime parity on real architectures (small inputs)."""

import pytest
import torch

from prunefx.graph import capture, verify
from prunefx.graph.safety.functional_ops import refused_nodes
from prunefx.models import build_model
from prunefx.runtime import check_parity, export_onnx

ZOO = [
    "torchvision:resnet18", "torchvision:resnet50", "torchvision:mobilenet_v2", "torchvision:mobilenet_v3_large",
    "torchvision:efficientnet_b0", "torchvision:densenet121", "torchvision:convnext_tiny", "torchvision:swin_t",
    "torchvision:vit_b_16", "torchvision:deeplabv3_mobilenet_v3_large",
    "timm:vit_small_patch16_224", "timm:deit_tiny_patch16_224", "timm:convnext_atto", "timm:efficientnet_b0",
]
IMAGE_SIZE = 64
PARITY_TOLERANCE = 1e-4  # max abs error relative to the largest output magnitude


# Every model here is also captured, pruned, exported and checked for ONNX parity by test_prune_zoo.py; `make test`
# keeps the ViT and the residual CNN through deit_tiny_patch16_224 and resnet18 there, and a segmenter compressed
# and exported in test_dense_tasks.py.
ZOO_LANE = {'torchvision:resnet50', 'torchvision:densenet121', 'torchvision:convnext_tiny', 'torchvision:swin_t',
            'torchvision:vit_b_16', 'torchvision:efficientnet_b0', 'torchvision:mobilenet_v3_large', 'timm:efficientnet_b0',
            'timm:deit_tiny_patch16_224', 'timm:vit_small_patch16_224', 'torchvision:deeplabv3_mobilenet_v3_large',
            'torchvision:mobilenet_v2', 'torchvision:resnet18'}


@pytest.mark.slow
@pytest.mark.parametrize("reference", ZOO)
def test_capture_export_and_onnxruntime_parity(reference, tmp_path):
    torch.manual_seed(0)
    spec = build_model(reference, image_size=IMAGE_SIZE)
    x = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    program = capture(spec.module, x, name=reference).eval()
    verify(program)
    assert refused_nodes(program.graph) == []  # a saved copy must load (graph/safety/functional_ops.py)
    with torch.no_grad():
        eager = spec.module(x)
    eager = eager["out"] if isinstance(eager, dict) else eager
    captured = program(x)
    captured = captured["out"] if isinstance(captured, dict) else captured
    assert torch.allclose(captured, eager, atol=1e-5, rtol=1e-4)

    exported = export_onnx(program, tmp_path / "model.onnx")
    parity = check_parity(program, exported.path)
    assert parity.relative <= PARITY_TOLERANCE, f"{reference}: {parity}"
    assert len(parity.outputs) == len(program.output_shapes)
