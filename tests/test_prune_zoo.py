"""Pruning the model zoo to 0.3 of its MACs: the target is met within 3 %, the cost was predicted exactly,
the result verifies (re-exports, keeps its output shapes) and its ONNX file matches it.

One target per model keeps `make test` within its time: 0.3 cuts deepest, so it meets the most width
limits and blocked groups. benchmarks/prune_zoo.py runs the full matrix (0.5 and 0.3) with ONNX parity
at both and records it.
"""

import functools

import pytest
import torch

from prunefx.graph import capture, verify
from prunefx.models import build_model
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime import check_parity, export_onnx

ZOO = [
    # the foundation list
    "torchvision:resnet18", "torchvision:resnet50", "torchvision:mobilenet_v2", "torchvision:mobilenet_v3_large",
    "torchvision:efficientnet_b0", "torchvision:densenet121", "torchvision:convnext_tiny", "torchvision:swin_t",
    "torchvision:vit_b_16", "torchvision:deeplabv3_mobilenet_v3_large",
    "timm:vit_small_patch16_224", "timm:deit_tiny_patch16_224", "timm:convnext_atto", "timm:efficientnet_b0",
    # the channel-removal list
    "torchvision:resnext50_32x4d", "torchvision:regnet_y_400mf", "torchvision:shufflenet_v2_x1_0",
    "torchvision:googlenet", "torchvision:efficientnet_v2_s", "torchvision:mnasnet1_0", "torchvision:squeezenet1_1",
    "torchvision:maxvit_t", "torchvision:fcn_resnet50", "torchvision:lraspp_mobilenet_v3_large",
    "timm:swin_tiny_patch4_window7_224", "timm:deit3_small_patch16_224", "timm:mobilevit_xs", "timm:levit_128s",
    "timm:poolformer_s12", "timm:efficientformer_l1", "timm:ghostnet_100",
]
# Models whose architecture fixes a larger input (window partitions, fixed attention biases).
IMAGE_SIZES = {"torchvision:maxvit_t": 224, "timm:efficientformer_l1": 224}
PARITY_TOLERANCE = 1e-4


def zoo_program(reference: str):
    """Captured once per model (the tests prune clones). Zero-initialised layers (torchvision's ViT
    head) get small random weights, and a model whose random activations vanish before its head (GoogLeNet's
    0.01-scaled initialisation) He-initialised weights, so that outputs, and so parity, mean something."""
    return _captured(reference).clone()


@functools.lru_cache(maxsize=1)
def _captured(reference: str):
    torch.manual_seed(0)
    size = IMAGE_SIZES.get(reference, 64)
    module = build_model(reference, image_size=size).module.eval()
    example = torch.randn(1, 3, size, size)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.dim() > 1 and not parameter.any():
                parameter.normal_(std=0.02)
    redraw_if_constant(module, example)
    return capture(module, example, name=reference).eval()


def redraw_if_constant(module: torch.nn.Module, example: torch.Tensor) -> None:
    """He-initialise `module`'s weights where its outputs are the same on `example` and on another input (random
    activations that vanish before the head): any comparison of such outputs would hold whatever the body does.
    Where that is not enough (layer scales of 1e-5, last batch norms of a block initialised to zero), its vectors
    too, drawn in [0.5, 1.5]."""
    with torch.no_grad():
        if _outputs_constant(module, example):
            for parameter in module.parameters():
                if parameter.dim() > 1:
                    torch.nn.init.kaiming_normal_(parameter)
        if _outputs_constant(module, example):
            for parameter in module.parameters():
                if parameter.dim() == 1:
                    parameter.uniform_(0.5, 1.5)
        assert not _outputs_constant(module, example), "outputs still constant after redrawing the weights"


def _outputs_constant(module: torch.nn.Module, example: torch.Tensor) -> bool:
    """Moved by less than 1e-2 of their magnitude by another input: close to what check_parity calls constant
    (1e-4), where a pruned model may land. On the model itself, as a user's evaluation would run it (timm's LeViT
    then caches its attention biases, which its capture must not read: graph/mode_caches.py)."""
    first, second = (torch.utils._pytree.tree_leaves(module(x)) for x in (example, -2 * example))
    return all((a - b).abs().max() <= 1e-2 * a.abs().max() for a, b in zip(first, second))


# The slowest to prune (224 px, deep dense connectivity, large ViTs and segmenters) run in `make test-zoo`;
# `make test` keeps one or two of each family (residual, inverted residual, concat/split, ConvNeXt, ViT,
# hybrid, MetaFormer, segmentation head) so it stays within 20 minutes.
ZOO_LANE = {
    'torchvision:maxvit_t', 'torchvision:efficientnet_v2_s', 'torchvision:densenet121', 'timm:swin_tiny_patch4_window7_224',
    'torchvision:swin_t', 'timm:levit_128s', 'timm:ghostnet_100', 'torchvision:vit_b_16', 'timm:efficientnet_b0',
    'timm:vit_small_patch16_224', 'torchvision:fcn_resnet50', 'timm:deit3_small_patch16_224', 'torchvision:resnet50',
    'torchvision:googlenet', 'torchvision:deeplabv3_mobilenet_v3_large', 'torchvision:resnext50_32x4d',
    'timm:efficientformer_l1', 'torchvision:mnasnet1_0', 'torchvision:mobilenet_v3_large', 'torchvision:convnext_tiny',
    # inverted residuals stay through lraspp_mobilenet_v3_large (with squeeze-excitation) and their exact removal
    # through test_channel_removal.py's mobilenet_v2 and both efficientnet_b0
    'torchvision:efficientnet_b0', 'torchvision:mobilenet_v2',
    # grouped convs with squeeze-excitation, and channel shuffles: exact removal in test_channel_removal.py
    'torchvision:regnet_y_400mf', 'torchvision:shufflenet_v2_x1_0',
    'timm:poolformer_s12',  # MetaFormer pooling mixers: exact removal in test_channel_removal.py
    'timm:mobilevit_xs',  # conv-attention hybrid: exact removal in test_channel_removal.py (and coatnet there)
    'timm:convnext_atto',  # exact removal in test_channel_removal.py, ONNX parity in test_zoo_export.py
    # segmentation heads: exact removal in test_channel_removal.py, a segmenter compressed in test_dense_tasks.py
    'torchvision:lraspp_mobilenet_v3_large',
}


@pytest.mark.slow
@pytest.mark.parametrize("reference", ZOO)
def test_prune_zoo_to_a_macs_target(reference, tmp_path):
    fraction = 0.3
    program = zoo_program(reference)
    result = remove_channels(program, config={"macs": fraction, "round_to": 8})
    stats = result.stats
    assert stats["macs_after"] == pytest.approx(fraction * stats["macs_before"], rel=0.03)
    assert (stats["macs_predicted"], stats["params_predicted"]) == (stats["macs_after"], stats["params_after"])
    verify(result.program)  # lint, shapes, finite outputs, re-export
    assert result.program.output_shapes == _captured(reference).output_shapes
    exported = export_onnx(result.program, tmp_path / "pruned.onnx")
    parity = check_parity(result.program, exported.path)
    assert not parity.outputs_constant and parity.relative <= PARITY_TOLERANCE, f"{reference}: {parity}"
