"""LSTM and GRU (aten.lstm.input / aten.gru.input): the layer feeding them is prunable, the recurrent
layer's input weights of both directions are sliced with it, exactly; the hidden size stays."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from prunefx.cli import main
from prunefx.graph import capture
from prunefx.graph.channels.groups import find_channel_groups


class Recurrent(nn.Module):
    def __init__(self, kind: str, bidirectional: bool, batch_first: bool):
        super().__init__()
        self.batch_first = batch_first
        self.conv = nn.Conv1d(4, 16, 3, padding=1)
        layer = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = layer(16, 12, num_layers=2, batch_first=batch_first, bidirectional=bidirectional)
        self.fc = nn.Linear(12 * (2 if bidirectional else 1), 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = y.transpose(1, 2) if self.batch_first else y.permute(2, 0, 1)
        out = self.rnn(y)[0]
        return self.fc(out[:, -1] if self.batch_first else out[-1])


CASES = [(kind, bidirectional, batch_first) for kind in ("lstm", "gru") for bidirectional in (False, True)
         for batch_first in (True, False)]


@pytest.mark.parametrize("kind, bidirectional, batch_first", CASES)
def test_the_layer_feeding_a_recurrence_is_pruned_exactly(kind, bidirectional, batch_first, removal_is_exact):
    torch.manual_seed(0)
    model, x = Recurrent(kind, bidirectional, batch_first).eval(), torch.randn(2, 4, 10)
    program = capture(model, x).eval()
    combing = find_channel_groups(program.module)
    assert len(combing.groups) == 1 and combing.groups[0].size == 16 and combing.groups[0].exact
    directions = ["rnn.weight_ih_l0"] + (["rnn.weight_ih_l0_reverse"] if bidirectional else [])
    assert {(name, 1) for name in directions} <= set(combing.groups[0].members)
    removal_is_exact(program, combing, {int(c) for c in combing.groups[0].classes[:3]}, x)
    for name in directions:
        assert program.module.get_parameter(name).shape[1] == 13
    assert program.module.rnn.weight_hh_l0.shape == model.rnn.weight_hh_l0.shape  # the hidden size stays


def test_prune_a_recurrent_model_through_the_cli(tmp_path, capsys):
    factory = tmp_path / "recurrent.py"
    factory.write_text(
        "import torch\nimport torch.nn as nn\n\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv1d(4, 32, 3, padding=1)\n"
        "        self.rnn = nn.GRU(32, 16, batch_first=True)\n"
        "        self.fc = nn.Linear(16, 5)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.rnn(torch.relu(self.conv(x)).transpose(1, 2))[0][:, -1])\n\n"
        "def factory():\n    return M()\n")
    status = main(["prune", f"{factory}:factory", "--input-shape", "1x4x10", "--channels", "0.5", "--round-to", "1",
                   "-o", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "groups 1 of 1 narrowed" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["parity"]["relative"] < 1e-4
    assert report["groups"][0]["width_after"] < report["groups"][0]["width_before"] == 32
