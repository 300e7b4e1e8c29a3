"""Fixed channel ranges (`y[:, :8]`, `y[:, 0:1]`, chunks, overlapping slices): every exact group is
removed exactly (zeroed channels out, same outputs), the slice bounds follow, and no channel range can
become empty: a single sliced channel broadcast over others (`y[:, 0:1] + y[:, 8:]`) stays, since removing
it would leave an empty dim and an internal error after removal."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from prunefx.cli import main
from prunefx.graph import capture, verify
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.passes import remove_channels

SLICES = {
    "head": lambda y: y[:, :8],
    "tail": lambda y: y[:, 8:],
    "middle": lambda y: y[:, 4:12],
    "negative": lambda y: y[:, -8:],
    "end past the size": lambda y: y[:, 8:1000],
    "gated halves": lambda y: y[:, :8] * torch.sigmoid(y[:, 8:]),
    "overlapping": lambda y: y[:, :8] + y[:, 4:12],
    "two ranges": lambda y: torch.cat([y[:, :2], y[:, 10:16]], 1),
    "one channel broadcast": lambda y: y[:, 0:1] + y[:, 8:],
    "one channel expanded": lambda y: y[:, 3:4].expand(-1, 8, -1, -1) * y[:, 8:],
}


class Sliced(nn.Module):
    def __init__(self, take):
        super().__init__()
        self.take = take
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.b(self.take(y)) + self.c(y)


@pytest.mark.parametrize("case", list(SLICES))
def test_zeroed_channels_behind_slices_are_removed_exactly(case, removal_is_exact):
    torch.manual_seed(0)
    model, x = Sliced(SLICES[case]).eval(), torch.randn(1, 3, 16, 16)
    groups = find_channel_groups(capture(model, x).eval().module).groups
    exact = [index for index, group in enumerate(groups) if group.exact and group.size >= 2]
    assert exact, f"{case}: no exact group"
    for index in exact:
        for position in (0, -1):
            program = capture(model, x).eval()
            combing = find_channel_groups(program.module)
            removal_is_exact(program, combing, {int(combing.groups[index].classes[position])}, x)


@pytest.mark.parametrize("case", list(SLICES))
def test_deep_pruning_never_empties_a_slice(case):
    torch.manual_seed(0)
    program = capture(Sliced(SLICES[case]).eval(), torch.randn(1, 3, 16, 16)).eval()
    for kept in (0.5, 0.2):
        result = remove_channels(program.clone(), config={"channels": kept, "round_to": 1, "strict": False,
                                                          "max_ratio": 0.95})
        verify(result.program)
        assert tuple(result.program.run_example().shape) == (1, 8, 16, 16)


def test_prune_on_a_broadcast_channel_exits_cleanly(tmp_path, capsys):
    factory = tmp_path / "sliced.py"
    factory.write_text(
        "import torch\nimport torch.nn as nn\n\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a = nn.Conv2d(3, 16, 3, padding=1)\n"
        "        self.b = nn.Conv2d(8, 8, 3, padding=1)\n\n"
        "    def forward(self, x):\n"
        "        y = torch.relu(self.a(x))\n"
        "        return self.b(y[:, 0:1] + y[:, 8:])\n\n"
        "def factory():\n    return M()\n")
    status = main(["prune", f"{factory}:factory", "--input-shape", "1x3x16x16", "--channels", "0.6",
                   "--round-to", "1", "-o", str(tmp_path / "out")])
    assert status == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "model.onnx").is_file()
