"""A user's own Ultralytics model through the Python API: refused in one line that says what to call, then
pruned to the widths the CLI's loader gives (yaml models, random weights, nothing downloaded)."""

from __future__ import annotations

import pytest
import torch

import prunefx
from prunefx.models import build_model, prepare_ultralytics
from prunefx.passes.core.pipeline import Pipeline
from prunefx.passes.remove_channels import remove_channels

ultralytics = pytest.importorskip("ultralytics")
pytestmark = pytest.mark.slow  # seconds per capture of a YOLO


def _user_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return ultralytics.YOLO(name).model.eval()


def _widths(program) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in program.module.state_dict().items()}


def _pruned(model: torch.nn.Module):
    program = prunefx.capture(model, torch.rand(1, 3, 64, 64))
    return Pipeline([(remove_channels, {"macs": 0.5})]).run(program.eval()).program


def test_a_raw_model_is_refused_naming_its_head_and_what_to_call():
    with pytest.raises(prunefx.CaptureError) as error:
        prunefx.capture(_user_model("yolo26n.yaml"), torch.rand(1, 3, 64, 64))
    message = str(error.value)
    assert "\n" not in message
    assert "module 'model.23' (Detect)" in message and "prunefx.models.prepare_ultralytics(model)" in message


@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolo26n.yaml"])
def test_the_python_api_prunes_as_the_cli_loader_does(name):
    api = _pruned(prepare_ultralytics(_user_model(name)))
    torch.manual_seed(0)  # the same random weights, built by the CLI's loader
    cli = _pruned(build_model(f"ultralytics:{name}", image_size=64).module)
    assert _widths(api) == _widths(cli)
    assert _widths(api) != _widths(prunefx.capture(prepare_ultralytics(_user_model(name)), torch.rand(1, 3, 64, 64)))


def test_prepare_refuses_other_models_in_one_line():
    with pytest.raises(prunefx.PrunefxError, match="not an Ultralytics model"):
        prepare_ultralytics(torch.nn.Conv2d(3, 3, 1))


def test_the_prune_while_training_trainer_leaves_the_teacher_as_found_and_distils_from_a_frozen_copy():
    """The teacher a user hands in stays in training mode with its gradients as they were; the trainer distils from an
    eval-mode copy without gradients (read from the criterion it installs, as Ultralytics would call it)."""
    from prunefx.interop.ultralytics_bridge import prune_while_training_trainer, training_mode
    teacher = training_mode(_user_model("yolov8n.yaml")).train()
    before = {name: tensor.detach().clone() for name, tensor in teacher.state_dict().items()}
    trainable = {name: parameter.requires_grad for name, parameter in teacher.named_parameters()}
    assert any(trainable.values())
    trainer_class = prune_while_training_trainer(None, teacher=teacher)
    assert teacher.training and trainable == {name: p.requires_grad for name, p in teacher.named_parameters()}

    trainer = trainer_class.__new__(trainer_class)  # distil() reads only the model and the device
    trainer.model, trainer.device = training_mode(_user_model("yolov8n.yaml")).train(), torch.device("cpu")
    trainer.model.args = ultralytics.cfg.get_cfg()
    trainer.distil()
    frozen = trainer.model.criterion.teacher
    assert frozen is not teacher and not frozen.training
    assert not any(parameter.requires_grad for parameter in frozen.parameters())
    assert teacher.training and trainable == {name: p.requires_grad for name, p in teacher.named_parameters()}
    assert all(torch.equal(before[name], tensor) for name, tensor in teacher.state_dict().items())
