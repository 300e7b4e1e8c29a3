"""A graph whose sizes depend on tensor values is refused at capture, naming the module that made it so."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunefx.graph import CaptureError, capture


class Boxes(nn.Module):
    """Keeps the rows above a threshold: `nonzero`, as a detector's post-processing does."""

    def forward(self, x):
        return x[(x[:, 0] > 0).nonzero().squeeze(1)]


class Scale(nn.Module):
    """Reads a scale out of a tensor with `.item()`."""

    def forward(self, x):
        return x * x.amax().item()


class Detector(nn.Module):
    def __init__(self, post: nn.Module):
        super().__init__()
        self.body, self.post = nn.Linear(4, 4), post

    def forward(self, x):
        return self.post(self.body(x))


@pytest.mark.parametrize("post, operator", [(Boxes(), "nonzero"), (Scale(), "item")])
def test_the_module_and_what_to_do_are_named(post, operator):
    with pytest.raises(CaptureError) as error:
        capture(Detector(post).eval(), torch.randn(8, 4))
    message = str(error.value)
    assert "\n" not in message
    assert f"module 'post' ({type(post).__name__})" in message and operator in message
    assert "export (deploy) mode" in message and "part=" in message
    # the user's line, from a stack trace that a capture records only to refuse the model
    assert "(test_capture_data_dependent.py:" in message and f".{operator}()" in message


def test_a_capture_and_a_re_export_keep_no_stack_traces():
    program = capture(Detector(nn.Identity()).eval(), torch.randn(8, 4))
    for graph in (program.graph, program.export().graph):
        assert not [node.name for node in graph.nodes if node.meta.get("stack_trace")]


def test_a_static_model_still_captures():
    program = capture(Detector(nn.Identity()).eval(), torch.randn(8, 4))
    assert program.module(torch.randn(8, 4)).shape == (8, 4)


class BranchOnCount(nn.Module):
    """A branch on how many values pass a threshold, as a detector's post-processing takes: torch.export stops."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y * 2 if (y > 0).sum() > 10 else y


def test_a_branch_on_tensor_values_points_to_the_part_that_exports():
    with pytest.raises(CaptureError, match="data-dependent") as raised:
        capture(BranchOnCount().eval(), torch.randn(1, 3, 8, 8))
    assert "`prunefx prune --part auto`" in str(raised.value) and "\n" not in str(raised.value)
