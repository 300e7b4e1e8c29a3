"""Branches the model calls and ignores (an auxiliary head in eval mode), which pruning drops as dead code, are cut
on write-back as the live tensors sharing their channels were; the record of the channels each tensor kept.

Oracles: the dense layers themselves (a pruned stem keeps dense rows, found by value; a dense head fed features
whose removed channels are zero computes what the cut head computes on the pruned features), and the dense
batch norm's statistics indexed by the kept rows."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunefx.graph import Program, capture
from prunefx.graph.analysis_record import Analysis, AnalysisRecordError
from prunefx.graph.channels.kept_channels import kept_masks
from prunefx.interop.write_back import WriteBackError, to_module
from prunefx.passes.remove_channels import remove_channels

L2 = {"importance": "l2", "round_to": 1, "strict": False}


class AuxiliaryHead(nn.Module):
    """A segmentation-style model: its head reads the stem's features; an auxiliary head reads them too, but its
    result is dropped (as Hugging Face's UperNet does in eval mode)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Conv2d(16, 4, 1)
        self.aux = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))

    def forward(self, x):
        features = self.stem(x)
        self.aux(features)
        return self.head(features)


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    return model.eval()


def _kept_rows(dense: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """The dense rows a pruned tensor kept, found by value (the oracle of which channels went)."""
    return [int((dense - row).flatten(1).abs().amax(1).argmin()) for row in pruned]


def test_an_auxiliary_head_the_model_ignores_is_cut_as_the_features_it_reads():
    model = _randomised(AuxiliaryHead())
    program = capture(model, torch.randn(1, 3, 8, 8)).eval()
    remove_channels(program, config={"macs": 0.5, **L2})
    written = to_module(program, model)
    kept = _kept_rows(model.stem[0].weight, written.stem[0].weight)
    assert written.aux[0].in_channels == len(kept) < 16 and written.aux[3].out_channels == 2
    x = torch.randn(1, 3, 8, 8)  # the Program's batch
    with torch.no_grad():
        torch.testing.assert_close(written(x), program(x), rtol=1e-5, atol=1e-6)
        zeroed = torch.zeros_like(model.stem(x))
        zeroed[:, kept] = model.stem(x)[:, kept]
        torch.testing.assert_close(written.aux(written.stem(x)), model.aux(zeroed), rtol=1e-5, atol=1e-6)
    assert model.aux[0].in_channels == 16  # the user's model as it was


def test_the_kept_channels_compose_over_two_removals_and_save_with_the_program(tmp_path):
    model = _randomised(AuxiliaryHead())
    program = capture(model, torch.randn(1, 3, 8, 8)).eval()
    remove_channels(program, config={"macs": 0.7, **L2})
    remove_channels(program, config={"macs": 0.6, **L2})
    program.save(tmp_path / "pruned.pt2")
    loaded = Program.load(tmp_path / "pruned.pt2")
    mask = kept_masks(loaded.analysis.kept_channels)["stem.1.running_mean"][0]
    rows = _kept_rows(model.stem[0].weight, loaded.module.get_parameter("stem.0.weight"))
    assert mask.size == 16 and sorted(rows) == mask.nonzero()[0].tolist()
    torch.testing.assert_close(loaded.module.get_buffer("stem.1.running_mean"), model.stem[1].running_mean[mask])
    assert to_module(loaded, model).aux[0].weight.shape[1] == int(mask.sum())


class TiesTwoStems(nn.Module):
    """Two stems whose channels go to two heads apart; an ignored branch adds them channel by channel."""

    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.heads = nn.ModuleList([nn.Conv2d(8, 2, 1), nn.Conv2d(8, 2, 1)])
        self.aux = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a, b = torch.relu(self.left(x)), torch.relu(self.right(x))
        self.aux(a + b)
        return self.heads[0](a) + self.heads[1](b)


def test_an_ignored_branch_tying_a_removed_channel_to_a_kept_one_is_refused():
    model = TiesTwoStems().eval()
    with torch.no_grad():  # the left stem's first half weak, the right stem's second half: each keeps other ones
        model.left.weight[:4] *= 0.01
        model.right.weight[4:] *= 0.01
    program = capture(model, torch.randn(1, 3, 4, 4)).eval()
    remove_channels(program, config={"macs": 0.6, **L2})
    with pytest.raises(WriteBackError, match="'aux.weight' is read only by code whose result the model does not use"
                       ) as refused:
        to_module(program, model)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("record, message", [
    ({"masks": ["16:zz"], "tensors": {}}, "not 'width:hex'"),
    ({"masks": ["16:ff"], "tensors": {}}, "does not match its digits"),
    ({"masks": ["2:c0"], "tensors": {"w": {"0": 3}}}, "names to {dim: mask index}"),
    ({"masks": [7], "tensors": {}}, "list of strings"),
    ({"masks": ["2:c0"], "tensors": {"w": {"x": 0}}}, "names to {dim: mask index}"),
])
def test_a_malformed_kept_channels_record_is_refused_in_one_line(record, message):
    with pytest.raises(AnalysisRecordError, match=message):
        kept_masks(Analysis.from_json(json.loads(json.dumps({"kept_channels": record}))).kept_channels)


class ScalesItsHeadsAside(nn.Module):
    """An attention whose ignored branch reads a per-head tensor: the dense analysis then ties every head's
    channels together, where pruning removed whole heads."""

    def __init__(self, heads: int = 4, dim: int = 8, width: int = 32):
        super().__init__()
        self.qkv, self.proj = nn.Linear(width, 3 * heads * dim), nn.Linear(heads * dim, width)
        self.aux_scale = nn.Parameter(torch.ones(heads))
        self.heads, self.dim = heads, dim

    def forward(self, x):
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, self.dim).permute(2, 0, 3, 1, 4).unbind(0)
        attention = (q @ k.transpose(-1, -2)).softmax(-1)
        (attention * self.aux_scale.view(1, self.heads, 1, 1)).sum()
        return self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, self.heads * self.dim))


def test_an_ignored_branch_reading_whole_heads_of_a_pruned_attention_is_refused():
    torch.manual_seed(0)
    model = ScalesItsHeadsAside().eval()
    with torch.no_grad():
        model.qkv.weight.view(3, 4, 8, 32)[:, 1] *= 0.01
    program = capture(model, torch.randn(1, 5, 32)).eval()
    remove_channels(program, config={"channels": 0.5, **L2, "heads": "whole"})
    with pytest.raises(WriteBackError, match="'aux_scale' is read only by code whose result the model does not use"):
        to_module(program, model)


def test_an_ignored_branch_tying_a_pruned_tensor_to_one_kept_whole_is_refused():
    """The right stem is kept whole (`keep`), so it has no record; the left one is pruned; the ignored branch adds
    them: no cut of it is consistent."""
    model = TiesTwoStems().eval()
    with torch.no_grad():
        model.left.weight[:4] *= 0.001
    program = capture(model, torch.randn(1, 3, 4, 4)).eval()
    right = next(node.name for node in program.graph.nodes if node.op == "call_function"
                 and any(arg.op == "get_attr" and arg.target == "right.weight" for arg in node.args
                         if isinstance(arg, torch.fx.Node)))
    remove_channels(program, config={"keep": [right], "channels": 0.75, **L2})
    assert "right.weight" not in kept_masks(program.analysis.kept_channels)
    with pytest.raises(WriteBackError, match="'aux.weight' is read only by code whose result the model does not use"):
        to_module(program, model)
