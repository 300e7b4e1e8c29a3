"""Training and gradient importance compute their gradients inside a caller's torch.no_grad() (graph/grad_mode.py),
with the same result as outside it, and refuse torch.inference_mode() in one line."""

import pytest
import torch
from torch import nn

from prunefx.graph import PrunefxError, capture
from prunefx.passes import distill, remove_channels


def _program():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5)).eval()
    return capture(model, torch.randn(4, 3, 8, 8), name="tiny")


def _data():
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 8, 8, generator=generator), torch.randint(0, 5, (4,), generator=generator))
            for _ in range(3)]


def _weights(program) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in program.module.state_dict().items()}


def test_distill_under_no_grad_trains_as_outside_it():
    config = {"data": _data(), "steps": 3, "lr": 0.05, "progress": False}
    outside = _weights(distill(_program(), config=config).program)
    with torch.no_grad():
        inside = _weights(distill(_program(), config=config).program)
        assert not torch.is_grad_enabled()  # the caller's mode, as it was
    assert outside.keys() == inside.keys()
    assert all(torch.equal(outside[name], inside[name]) for name in outside)
    assert not all(torch.equal(outside[name], _weights(_program())[name]) for name in outside)  # it trained


@pytest.mark.parametrize("importance", ["taylor", "fisher"])
def test_gradient_importance_under_no_grad_keeps_the_channels_it_keeps_outside_it(importance):
    config = {"macs": 0.5, "importance": importance, "calibration": _data(), "round_to": 1}
    outside = remove_channels(_program(), config=config).program
    with torch.no_grad():
        inside = remove_channels(_program(), config=config).program
    shapes = {name: tuple(tensor.shape) for name, tensor in _weights(outside).items()}
    assert shapes == {name: tuple(tensor.shape) for name, tensor in _weights(inside).items()}
    assert shapes != {name: tuple(tensor.shape) for name, tensor in _weights(_program()).items()}
    assert all(torch.equal(tensor, _weights(inside)[name]) for name, tensor in _weights(outside).items())


def test_inference_mode_is_refused_in_one_line():
    with torch.inference_mode(), pytest.raises(PrunefxError, match="inference_mode"):
        distill(_program(), config={"data": _data(), "steps": 1, "progress": False})
