"""Half-precision Programs on the CPU runtimes (runtime/model_precision.py): ONNX Runtime cannot run bfloat16, and
ONNX Runtime and torch eager time float32 models. Refused in one line, before any work and with nothing written;
what they can do (a float16 file checked against torch) still runs."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
from torch import nn

from prunefx.cli import EXIT_USER_ERROR, main
from prunefx.graph import capture
from prunefx.runtime.errors import OnnxSessionError
from prunefx.runtime.onnx.export import export_onnx
from prunefx.runtime.onnx.parity import check_parity


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small CNN saved in float16 and in bfloat16: {dtype name: path of its .pt2}."""
    folder = tmp_path_factory.mktemp("precision")
    paths = {}
    for dtype in (torch.float16, torch.bfloat16):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval().to(dtype)
        name = str(dtype).removeprefix("torch.")
        paths[name] = capture(model, torch.randn(1, 3, 16, 16, dtype=dtype), name=name).save(folder / f"{name}.pt2")
    return paths


def refused(capsys, tmp_path, argv) -> str:
    output = [] if argv[0] == "bench" else ["-o", str(tmp_path / "out")]  # bench writes nothing
    code = main([*map(str, argv), *output])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(lines) == 1, err
    assert not (tmp_path / "out").exists()
    return lines[0]


@pytest.mark.parametrize("command", [["export"], ["prune", "--macs", "0.5"]])
def test_a_model_file_built_in_bfloat16_is_refused_before_any_work(capsys, tmp_path, command):
    """Only a saved .pt2 was checked first: a model file's bfloat16 model was pruned and exported, and refused
    only when its file was to be checked."""
    source = tmp_path / "m.py"
    source.write_text("import torch\nfrom torch import nn\n\n\nclass M(nn.Module):\n    def __init__(self):\n"
                      "        super().__init__()\n        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), "
                      "nn.Conv2d(8, 8, 3)).to(torch.bfloat16)\n\n    def forward(self, x):\n"
                      "        return self.body(x.to(torch.bfloat16)).float().mean((2, 3))\n\n\n"
                      "def make():\n    return M()\n")
    line = refused(capsys, tmp_path, [command[0], f"{source}:make", "--input-shape", "1x3x16x16", *command[1:]])
    assert "bfloat16, which ONNX Runtime cannot run on the CPU" in line


@pytest.mark.parametrize("command", [["export"], ["prune", "--macs", "0.5"], ["depth", "--blocks", "1"]])
def test_a_bfloat16_program_is_refused_where_onnx_runtime_must_check_its_file(saved, capsys, tmp_path, command):
    line = refused(capsys, tmp_path, [command[0], saved["bfloat16"], *command[1:]])
    assert "bfloat16, which ONNX Runtime cannot run on the CPU" in line


def test_the_parity_check_names_bfloat16_instead_of_failing_inside_numpy(saved, tmp_path):
    from prunefx.graph import Program

    program = Program.load(saved["bfloat16"])
    with pytest.raises(OnnxSessionError, match="bfloat16, which ONNX Runtime cannot run"):
        check_parity(program, export_onnx(program, tmp_path / "m.onnx").path)


@pytest.mark.parametrize("argv", [["bench", "{float16}", "--runs", "2"],
                                  ["bench", "{float16}", "--backend", "torch", "--runs", "2"],
                                  ["prune", "{float16}", "--speedup", "1.2", "--runs", "2", "--max-candidates", "1"]])
def test_a_float16_program_is_not_timed_as_float32_on_the_cpu_runtimes(saved, capsys, tmp_path, argv):
    line = refused(capsys, tmp_path, [arg.format(**saved) for arg in argv])
    assert "times float32 models, and float16 holds float16 tensors" in line


def test_a_float16_program_is_pruned_and_its_float16_file_checked(saved, capsys, tmp_path):
    assert main(["prune", str(saved["float16"]), "--macs", "0.6", "-o", str(tmp_path / "out")]) == 0
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert "parity torch vs ONNX Runtime" in capsys.readouterr().out


def test_calibration_batches_reach_a_half_precision_program_in_its_dtype():
    """Recipes and API callers hand calibration passes float32 images (the oracle: the same batches cast by hand)."""
    from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm

    def recalibrated(batches):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval().half()
        program = capture(model, torch.randn(2, 3, 8, 8, dtype=torch.float16))
        recalibrate_batchnorm(program, config={"data": batches})
        return program.module.state_dict()["1.running_mean"]

    batches = [(torch.randn(2, 3, 8, 8),) for _ in range(3)]
    assert torch.equal(recalibrated(batches), recalibrated([(x.half(),) for (x,) in batches]))


class _Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3))

    def forward(self, x):
        return self.body(x).mean((2, 3))


class _Mixed(_Plain):
    """Float32 layers and a float64 table: a mix of precisions."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.ones(8, dtype=torch.float64))

    def forward(self, x):
        return super().forward(x) * self.table.to(x.dtype)


def test_a_half_precision_program_is_written_back_into_a_float32_model_in_its_own_precision():
    from prunefx.interop.write_back import WriteBackError, to_module
    from prunefx.passes.remove_channels import remove_channels

    torch.manual_seed(0)
    model = _Plain().eval()
    dense = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    program = capture(copy.deepcopy(model).to(torch.bfloat16), torch.randn(1, 3, 16, 16, dtype=torch.bfloat16))
    remove_channels(program, config={"macs": 0.5, "round_to": 1})
    written = to_module(program, model)
    assert {p.dtype for p in written.parameters()} == {torch.bfloat16} and written.body[0].out_channels < 16
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    with torch.no_grad():  # the oracle: the Program, an image at a time
        assert torch.equal(written(x), torch.cat([program(x[i:i + 1]) for i in range(2)]))
    assert all(torch.equal(tensor, dense[name]) and tensor.dtype == torch.float32  # the user's model as found
               for name, tensor in model.state_dict().items())

    mixed = _Mixed().eval()  # float32 and float64 against a bfloat16 program: nothing to match them by
    half = copy.deepcopy(mixed)
    half.body.to(torch.bfloat16)
    program = capture(half, torch.randn(1, 3, 16, 16, dtype=torch.bfloat16))
    remove_channels(program, config={"macs": 0.5, "round_to": 1})
    with pytest.raises(WriteBackError, match="holds bfloat16 and float64 tensors and the model float32 and float64: pass the "
                                             "model in the program's precision"):
        to_module(program, mixed)


class _Shifted(_Plain):
    """A plain tensor attribute (not a buffer) on the pruned channels: cut like a buffer, cast like one."""

    def __init__(self):
        super().__init__()
        self.shift = torch.full((1, 16, 1, 1), 0.1)

    def forward(self, x):
        return self.body[2](torch.relu(self.body[0](x) + self.shift)).mean((2, 3))


def test_a_plain_tensor_attribute_is_written_back_in_the_program_s_precision():
    """`module.to(dtype)` leaves plain tensor attributes as they are: the float32 shift beside bfloat16 weights
    refused the write-back ('Input type (float) and bias type (c10::BFloat16) should be the same')."""
    from prunefx.interop.write_back import to_module
    from prunefx.passes.remove_channels import remove_channels

    torch.manual_seed(0)
    model = _Shifted().eval()
    half = copy.deepcopy(model).to(torch.bfloat16)
    half.shift = half.shift.to(torch.bfloat16)
    program = capture(half, torch.randn(1, 3, 16, 16, dtype=torch.bfloat16))
    remove_channels(program, config={"macs": 0.5, "round_to": 1})
    written = to_module(program, model)
    assert written.shift.dtype == torch.bfloat16 and written.shift.shape[1] == written.body[0].out_channels < 16
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    with torch.no_grad():  # the oracle: the Program, an image at a time
        assert torch.equal(written(x), torch.cat([program(x[i:i + 1]) for i in range(2)]))
    assert model.shift.dtype == torch.float32 and model.shift.shape[1] == 16  # the user's model as found
