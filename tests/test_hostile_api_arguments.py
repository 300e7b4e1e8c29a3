"""The Python API given plausible mistakes: a module where a Program is wanted, a model on the meta device or with
no weights, text where a flag, a number or a mapping is wanted, labels a model cannot score. Each is refused in
one line naming what was given, never an AttributeError or IndexError from deep inside, never taken as meant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunefx
from prunefx.graph import Program
from prunefx.graph.errors import PrunefxError
from prunefx.graph.rebatch import rebatch
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime.onnx.export import export_onnx
from prunefx.runtime.onnx.parity import check_parity


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.conv(x).relu().mean((2, 3)))


class NoWeights(nn.Module):
    def forward(self, x):
        return torch.relu(x).mean((2, 3))


def _one_line(error: pytest.ExceptionInfo, *words: str) -> None:
    text = str(error.value)
    assert "\n" not in text and all(word in text for word in words), text


@pytest.fixture(scope="module")
def program():
    torch.manual_seed(0)
    return prunefx.capture(Net().eval(), torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("taker", [export_onnx, check_parity])
@pytest.mark.parametrize("given", [Net(), "model.pt2"])
def test_the_onnx_functions_refuse_what_is_not_a_program(taker, given, tmp_path):
    with pytest.raises(PrunefxError) as caught:
        taker(given, tmp_path / "model.onnx")
    _one_line(caught, taker.__name__, type(given).__name__)


def test_parity_refuses_inputs_of_another_shape_or_a_bare_tensor(program, tmp_path):
    path = export_onnx(program, tmp_path / "model.onnx").path
    with pytest.raises(PrunefxError) as caught:
        check_parity(program, path, inputs=[torch.randn(2, 5, 8, 8)])
    _one_line(caught, "(2, 5, 8, 8)", "(2, 3, 8, 8)")
    with pytest.raises(PrunefxError) as caught:
        check_parity(program, path, inputs=torch.randn(2, 3, 8, 8))
    _one_line(caught, "(x,)")
    assert check_parity(program, path, inputs=[torch.randn(2, 3, 8, 8)]).relative < 1e-4  # the right shape runs


def test_a_model_on_the_meta_device_is_refused_at_capture():
    with pytest.raises(PrunefxError) as caught:
        prunefx.capture(Net().to("meta"), torch.randn(2, 3, 8, 8, device="meta"))
    _one_line(caught, "conv.weight", "meta device")
    with pytest.raises(PrunefxError) as caught:
        prunefx.capture(Net(), torch.randn(2, 3, 8, 8, device="meta"))
    _one_line(caught, "inputs", "meta device")


def test_a_model_without_macs_is_refused_by_remove_channels_not_divided_by():
    program = prunefx.capture(NoWeights(), torch.randn(1, 3, 8, 8))
    with pytest.raises(PrunefxError) as caught:
        remove_channels(program, config={"macs": 0.5})
    _one_line(caught, "no MACs")


def test_a_program_wraps_a_graph_module_and_the_detector_part_pruner_a_module():
    with pytest.raises(PrunefxError) as caught:
        Program(Net(), (torch.randn(1, 3, 8, 8),))
    _one_line(caught, "GraphModule", "Net")
    with pytest.raises(PrunefxError) as caught:
        prunefx.prune_part("resnet18", (torch.randn(1, 3, 8, 8),), [])
    _one_line(caught, "prune_part", "str")


def test_text_is_not_taken_for_a_flag_or_a_batch(program):
    with pytest.raises(PrunefxError) as caught:
        program.clone().train("no")
    _one_line(caught, "'no'")
    with pytest.raises(PrunefxError) as caught:
        prunefx.capture(Net(), torch.randn(1, 3, 8, 8), copy_weights="no")
    _one_line(caught, "copy_weights")
    with pytest.raises(PrunefxError) as caught:
        prunefx.verify(program, reexport="no")
    _one_line(caught, "reexport")
    for batch in (True, 1.5, "1"):
        with pytest.raises(PrunefxError) as caught:
            rebatch(program, batch)
        _one_line(caught, "rebatch")


def test_a_config_that_is_not_a_mapping_names_the_pass(program):
    with pytest.raises(PrunefxError) as caught:
        remove_channels(program.clone(), config="macs=0.5")
    _one_line(caught, "remove_channels", "mapping", "macs=0.5")


def test_a_pass_declaration_with_a_wrong_contract_is_refused():
    def my_pass(program, *, config=None):
        return program

    with pytest.raises(TypeError, match="PassConfig subclass"):
        graph_pass(config=dict, in_place=False)(my_pass)
    with pytest.raises(TypeError, match="True or False"):
        graph_pass(config=None, in_place="yes")
    with pytest.raises(TypeError, match="not a text"):
        graph_pass(config=None, in_place=False, reads="graph")


def test_removing_a_rule_never_registered_is_refused():
    with pytest.raises(PrunefxError) as caught:
        prunefx.remove_channel_rule("aten.cumsum.default")
    _one_line(caught, "aten.cumsum.default", "no rule")


def test_distillation_labels_the_logits_cannot_score_are_refused(program):
    loss = prunefx.DistillationLoss(program)
    inputs = program.example_inputs
    with pytest.raises(PrunefxError) as caught:
        loss(torch.randn(2, 4), inputs, torch.tensor([0, 9]))
    _one_line(caught, "[0, 3]", "9")
    assert loss(torch.randn(2, 4), inputs, torch.tensor([0, 3])).isfinite()  # labels in range are scored


def test_a_budget_route_option_that_is_not_a_mapping_is_refused(program):
    with pytest.raises(PrunefxError) as caught:
        prunefx.meet_budget(program.clone(), speedup=2, width="l2")
    _one_line(caught, "meet_budget", "'width'", "l2")
