"""`prunefx prune ... --module`: module.pt beside model.pt2, the user's own class holding the pruned model,
written only when the write-back is proven; refused in one line where there is no module to write into."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.utils._pytree as pytree

from prunefx.cli import main
from prunefx.graph import Program, capture

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _prune_with_module(capsys, tmp_path, file_name: str, source: str):
    """`prunefx prune FILE:build --macs 0.5 --module` on a 16 x 16 model written to `file_name`, into tmp_path/out."""
    (tmp_path / file_name).write_text(source)
    return _run(capsys, "prune", f"{tmp_path / file_name}:build", "--input-shape", "1x3x16x16", "--macs", "0.5",
                "--round-to", "4", "--module", "-o", tmp_path / "out")


_USER_MODEL = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(torch.relu(self.body(self.stem(x))).mean((2, 3)))


def build():
    torch.manual_seed(0)
    return Tiny()
"""


@pytest.mark.slow
def test_prune_writes_the_module_beside_the_program(capsys, tmp_path, monkeypatch):
    """module.pt loads as the user loads it: with the model file importable by its own name (`import tiny`), not
    by the name prunefx imported it under."""
    code, out, err = _prune_with_module(capsys, tmp_path, "tiny.py", _USER_MODEL)
    assert code == 0, err
    monkeypatch.syspath_prepend(str(tmp_path))
    try:  # imported afresh by the load, and forgotten after it
        module = torch.load(tmp_path / "out" / "module.pt", weights_only=False)  # our own file: trusted
        assert type(module).__module__ == "tiny" and sys.modules["tiny"].__file__ == str(tmp_path / "tiny.py")
    finally:
        sys.modules.pop("tiny", None)
    assert type(module).__name__ == "Tiny" and not module.training
    assert module.body.groups == module.body.out_channels == module.stem[0].out_channels < 16
    program = Program.load(tmp_path / "out" / "model.pt2")
    x = torch.randn(3, 3, 16, 16)  # another batch size: the module is no static graph
    with torch.no_grad():
        expected = pytree.tree_leaves(program(x[:1]))[0]
        actual = module(x)[:1]
    assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert all(module.state_dict()[k].shape == v.shape for k, v in program.state_dict().items())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["module"]["written"] and report["module"]["class"] == "tiny.Tiny" and "module.pt" in out


_USER_LENET = """
import torch
from torch import nn


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.view(-1, 16 * 5 * 5))))


def build():
    torch.manual_seed(0)
    return LeNet()
"""


def test_a_model_whose_forward_spells_a_width_is_written_as_its_stand_in_with_a_note(capsys, tmp_path):
    """LeNet's `view(-1, 16 * 5 * 5)` at the top: module.pt holds the model made from its subgraph, and says so."""
    (tmp_path / "lenet.py").write_text(_USER_LENET)
    code, _, err = _run(capsys, "prune", f"{tmp_path / 'lenet.py'}:build", "--input-shape", "1x3x32x32",
                        "--macs", "0.5", "--round-to", "2", "--module", "-o", tmp_path / "out")
    assert code == 0, err
    assert "note: module.pt holds a stand-in for LeNet" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["module"]["written"] and report["module"]["stands_in_for"].endswith(".LeNet")
    module = torch.load(tmp_path / "out" / "module.pt", weights_only=False)  # our own file: trusted
    assert type(module).__name__ == "SubgraphModule" and module.conv2.out_channels < 16
    program = Program.load(tmp_path / "out" / "model.pt2")
    x = torch.randn(3, 3, 32, 32)  # another batch size than the capture's
    with torch.no_grad():
        expected = torch.cat([pytree.tree_leaves(program(x[i:i + 1]))[0] for i in range(3)])
        torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-6)


def test_module_from_a_saved_program_is_refused_in_one_line(capsys, tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    capture(model, torch.randn(1, 3, 4, 4)).save(tmp_path / "small.pt2")
    code, _, err = _run(capsys, "prune", tmp_path / "small.pt2", "--macs", "0.5", "--module", "-o", tmp_path / "o")
    assert code == 2 and "Python code" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_module_with_part_is_refused_in_one_line(capsys, tmp_path):
    code, _, err = _run(capsys, "prune", "prunefx:resnet20", "--macs", "0.5", "--module", "--part", "auto",
                        "-o", tmp_path / "o")
    assert code == 2 and "--part" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


_USER_VIT = """
import torch
from timm.models.vision_transformer import VisionTransformer


def build():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, num_classes=5)
    for block in model.blocks:
        block.attn.fused_attn = True
    return model
"""


@pytest.mark.slow
def test_prune_with_head_dims_writes_a_module_that_keeps_fused_attention(capsys, tmp_path):
    (tmp_path / "vit.py").write_text(_USER_VIT)
    code, _, err = _run(capsys, "prune", f"{tmp_path / 'vit.py'}:build", "--input-shape", "1x3x32x32",
                        "--macs", "0.5", "--heads", "dims", "--module", "-o", tmp_path / "out")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["heads"] == "dims" and report["module"]["written"]
    module = torch.load(tmp_path / "out" / "module.pt", weights_only=False)  # our own file: trusted
    attention = [block.attn for block in module.blocks]
    assert all(a.fused_attn for a in attention) and min(a.head_dim for a in attention) < 64
    program = Program.load(tmp_path / "out" / "model.pt2")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected, actual = pytree.tree_leaves(program(x))[0], module(x)
    assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()


_USER_MASKED = """
import torch
from torch import nn


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)
        self.mask_token = nn.Parameter(torch.randn(1, 16, 1, 1))  # read only when a mask is passed

    def forward(self, x, mask=None):
        hidden = self.embed(x)
        if mask is not None:
            hidden = torch.where(mask, self.mask_token, hidden)
        return self.head(torch.relu(hidden).mean((2, 3)))


def build():
    torch.manual_seed(0)
    return Masked()
"""


@pytest.mark.slow
def test_a_tensor_the_captured_call_never_reads_is_named_in_a_note_and_the_report(capsys, tmp_path):
    code, out, err = _prune_with_module(capsys, tmp_path, "masked.py", _USER_MASKED)
    assert code == 0, err
    assert "note: module.pt: masked:build written back: 1 tensor(s) the captured call never reads" in err
    assert "'mask_token' (1, 16, 1, 1)" in err
    notes = json.loads((tmp_path / "out" / "report.json").read_text())["module"]["notes"]
    assert len(notes) == 1 and "mask_token" in notes[0]
