"""Values read out of a graph as their nodes computed them, whatever an in-place operator (ResNet's relu_ and
`out += identity`, an add_) writes into them later (graph/in_place_writes.py): calibration taps, staged runs,
distillation features and INT8 calibration. The oracle: forward hooks on the eager torchvision model, which
copy each module's output when it is computed."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from prunefx.graph import capture
from prunefx.graph.activations import run_tapped, tap_nodes
from prunefx.graph.in_place_writes import overwritten_later
from prunefx.graph.staged_run import StagedRun
from prunefx.passes import quantize_int8
from prunefx.passes.training.losses import run_tapped as run_with_features
from prunefx.passes.training.losses import tap_outputs

pytestmark = pytest.mark.usefixtures("one_thread")
# node of the captured ResNet-18 -> the module whose output it is
NODES = {"batch_norm": "bn1", "batch_norm_1": "layer1.0.bn1", "batch_norm_2": "layer1.0.bn2",
         "max_pool2d": "maxpool"}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    program = capture(model, torch.randn(2, 3, 32, 32), name="resnet18")
    batches = [(torch.randn(2, 3, 32, 32),) for _ in range(2)]
    return model, program, batches


def _hooked(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    """Each NODES module's output, copied when computed (the hook returns None: the output is not replaced)."""
    found, handles = {}, []
    for name, module in model.named_modules():
        if name in NODES.values():
            handles.append(module.register_forward_hook(
                lambda module, inputs, output, name=name: found.__setitem__(name, output.detach().clone())))
    with torch.no_grad():
        model(*batch)
    for handle in handles:
        handle.remove()
    return found


def test_the_values_relu_and_add_write_into_later_are_found():
    graph = capture(torchvision.models.resnet18(num_classes=10).eval(), torch.randn(1, 3, 32, 32)).module.graph
    names = {node.name for node in overwritten_later(graph)}
    assert {"batch_norm", "batch_norm_1", "batch_norm_2"} <= names and "max_pool2d" not in names


def test_tapped_nodes_are_what_their_modules_computed(resnet):
    model, program, batches = resnet
    tapped = tap_nodes(program.module, list(NODES))
    for batch in batches:
        expected = _hooked(model, batch)
        for node, value in zip(NODES, run_tapped(tapped, batch)):
            torch.testing.assert_close(value, expected[NODES[node]], msg=node)


def test_a_staged_run_yields_what_the_modules_computed(resnet):
    model, program, batches = resnet
    staged = StagedRun(program.module, batches)
    order = sorted(NODES, key=staged.position)
    for batch, values in zip(batches, staged.advance(order)):
        expected = _hooked(model, batch)
        for node in NODES:
            torch.testing.assert_close(values[node], expected[NODES[node]], msg=node)


def test_distillation_features_are_what_their_modules_computed(resnet):
    model, program, batches = resnet
    tapped = tap_outputs(program.module, list(NODES))
    with torch.no_grad():
        _, features = run_with_features(tapped, tapped.out_spec, batches[0])
    expected = _hooked(model, batches[0])
    for node, value in zip(NODES, features):
        torch.testing.assert_close(value, expected[NODES[node]], msg=node)


def test_int8_calibration_reads_a_residual_add_s_input_before_the_add(resnet):
    """The first residual add of layer1: add_(bn2 output, block input). Its quantizers' ranges (method max) are
    the largest magnitudes of those two tensors, and its quantization error is an 8-bit one."""
    model, program, batches = resnet
    stats = quantize_int8(program.clone(), config={"calibration": batches, "method": "max"}).stats
    add = next(row for row in stats["quantized"] if row["operator"] == "add_")
    seen = [_hooked(model, batch) for batch in batches]
    expected = [max(float(values[module].abs().max()) for values in seen) for module in ("layer1.0.bn2", "maxpool")]
    assert add["input_amax"] == pytest.approx(expected, rel=1e-4)
    assert add["error"] < 1e-3
