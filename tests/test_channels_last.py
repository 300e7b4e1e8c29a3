"""A captured module placed channels_last as the cuda backend places it (graph/channels_last.py,
runtime/cuda/graph.py `placed`), here on the CPU, where the layouts behave the same: a network that views
a convolution's output flat still computes what the model computes (the oracle: the module before placing);
a view written through in place stays a view."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunefx.graph import capture
from prunefx.graph.channels_last import views_as_reshapes
from prunefx.runtime.cuda.graph import CudaDevice, GpuModel, placed

pytestmark = pytest.mark.usefixtures("one_thread")
VIEW = torch.ops.aten.view.default


class ViewsFlat(nn.Module):
    """LeNet's head: the feature map viewed flat across channels and space."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 16, 3), nn.Linear(16 * 5 * 5, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(-1, 16 * 5 * 5))


class WritesThroughAView(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        flat = y.view(y.shape[0], -1)
        flat.add_(1.0)  # through the view into y
        return y


def _views(module) -> int:
    return sum(node.target is VIEW for node in module.graph.nodes)


def test_a_flat_view_of_a_channels_last_feature_map_computes_the_model():
    torch.manual_seed(0)
    program = capture(ViewsFlat().eval(), torch.randn(2, 3, 7, 7), name="views_flat")
    expected = program(*program.example_inputs)
    assert _views(program.module) == 1
    module, inputs = placed(program.clone().module, program.example_inputs, torch.float32, "cpu")
    assert _views(module) == 0 and inputs[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(module(*inputs), expected)


def test_a_view_written_through_in_place_stays_a_view_and_its_module_runs_placed():
    """A flat view of a channels_last tensor cannot be taken, and only a view keeps the write aliased: such a
    module is placed in the contiguous layout, and computes the model (at fp16 too, as the cuda backend runs)."""
    torch.manual_seed(0)
    program = capture(WritesThroughAView().eval(), torch.randn(1, 3, 4, 4), name="writes")
    views = _views(program.module)
    assert views >= 1 and views_as_reshapes(program.module.graph) == 0 and _views(program.module) == views
    expected = program(*program.example_inputs)
    for dtype in (torch.float32, torch.float16):
        module, inputs = placed(program.clone().module, program.example_inputs, dtype, "cpu")
        assert _views(module) == views and inputs[0].is_contiguous()
        with torch.inference_mode():
            torch.testing.assert_close(module(*inputs).float(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_a_flat_view_model_is_timed_on_the_gpu_and_computes_the_model():
    program = capture(ViewsFlat().eval(), torch.randn(8, 3, 7, 7), name="views_flat")
    model = GpuModel(program, precision="fp16", device=CudaDevice())
    assert model.time_once() > 0
    output = model._call().float().cpu()
    torch.testing.assert_close(output, program(*program.example_inputs), atol=5e-2, rtol=5e-2)


class VideoStem(nn.Module):
    """A clip's frames convolved in 3-D, then averaged over time for a 2-D head: 5-D weights beside 4-D ones."""

    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Conv3d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.register_buffer("clip_scale", torch.rand(1, 8, 1, 1, 1) + 0.5)

    def forward(self, clip):
        return self.head(torch.relu(self.stem(clip) * self.clip_scale).mean(2))


def test_a_model_with_5d_weights_is_placed_with_its_4d_weights_channels_last_and_computes_the_model():
    """channels_last is a layout of four dimensions: `Module.to(memory_format=...)` refuses a Conv3d's weight, and
    the cuda backend ended such a model with a traceback. 5-D tensors keep their layout."""
    torch.manual_seed(0)
    program = capture(VideoStem().eval(), torch.randn(1, 3, 4, 8, 8), name="video")
    expected = program(*program.example_inputs)
    module, inputs = placed(program.clone().module, program.example_inputs, torch.float32, "cpu")
    weights = {name: tensor for name, tensor in module.state_dict().items() if tensor.dim() >= 4}
    assert weights["head.weight"].is_contiguous(memory_format=torch.channels_last)
    assert weights["stem.weight"].is_contiguous() and weights["clip_scale"].is_contiguous()
    with torch.inference_mode():
        torch.testing.assert_close(module(*inputs), expected)
