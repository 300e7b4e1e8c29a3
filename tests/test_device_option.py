"""`--device` on prune, depth and compress, and prunefx.device / graph/placement.py underneath.

Without a GPU the device is checked three ways: the names resolve as torch would see them (torch.cuda's answers
monkeypatched, nothing else); the CPU path gives exactly the tensors of the run that never heard of devices;
and the plumbing (the module a pass sees, the Program written, the dense Program after a pass raised) through a
fake device whose mark is float64: a real change in the tensors every pass computes with, undone on the way
back. The GPU tests compare a calibrated prune on CUDA with the CPU run, and time ResNet-50.
"""

from __future__ import annotations

import contextlib
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunefx.budget.meet as meet_module
import prunefx.data.calibration as calibration_module
import prunefx.device as device_module
from prunefx.budget import meet_budget
from prunefx.cli import EXIT_USER_ERROR, main
from prunefx.data.calibration import noise_batches
from prunefx.device import on_device, resolve_device
from prunefx.graph import Program, capture, count
from prunefx.graph.errors import PrunefxError
from prunefx.graph.placement import move_module
from prunefx.passes.core.pipeline import Pipeline, PipelineError
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import remove_channels

pytestmark = pytest.mark.usefixtures("one_thread")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
FACTORY = """import torch


def net():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))
"""


def _net() -> torch.nn.Module:
    namespace: dict = {}
    exec(FACTORY, namespace)
    torch.manual_seed(0)
    return namespace["net"]().eval()


def _program() -> Program:
    return capture(_net(), torch.randn(2, 3, 12, 12), name="net").eval()


@pytest.fixture
def gpus(monkeypatch):
    """`gpus(n)`: torch.cuda says it sees n GPUs (current device 0); only the resolution reads it."""
    def see(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return see


# --- naming a device ---------------------------------------------------------------------------------------

def test_auto_is_the_cpu_without_a_gpu_and_the_current_gpu_with_one(gpus):
    gpus(0)
    assert resolve_device("auto") == resolve_device(None) == resolve_device("cpu") == torch.device("cpu")
    gpus(2)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cpu") == torch.device("cpu")


def test_under_torchrun_a_gpu_without_an_index_is_the_process_s_own(gpus, monkeypatch):
    """torchrun's processes all start with GPU 0 current: 'auto' and 'cuda' mean LOCAL_RANK's GPU, as the trainer and
    NCCL take it; a GPU named by its index stays that one."""
    gpus(4)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_device("cuda") == torch.device("cuda", 0)


@pytest.mark.parametrize("seen, name, said", [
    (0, "cuda", "'cuda' asked, but torch sees no CUDA GPU"),
    (0, "cuda:0", "'cuda:0' asked, but torch sees no CUDA GPU"),
    (2, "cuda:2", "cuda:2 asked, but torch sees 2 CUDA GPU(s) (cuda:0 to cuda:1)"),
    (1, "tpu", "unknown device 'tpu'"),
    (1, "meta", "device 'meta' is not supported"),
])
def test_a_device_torch_cannot_use_is_one_line(gpus, seen, name, said):
    gpus(seen)
    with pytest.raises(PrunefxError) as caught:
        resolve_device(name)
    assert said in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("argv", [
    ["prune", "prunefx:resnet20", "--macs", "0.5"],
    ["depth", "prunefx:resnet20", "--blocks", "1", "--calibrate", "fashion-mnist"],
    ["quantize", "prunefx:resnet20", "--calibrate", "fashion-mnist"],
    ["compress", "prunefx:resnet20", "--data", "fashion-mnist", "--recipe", "finetune"],
])
def test_cuda_without_a_gpu_is_refused_in_one_line_and_nothing_is_written(gpus, capsys, tmp_path, argv):
    gpus(0)
    code = main([*argv, "--device", "cuda", "-o", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == EXIT_USER_ERROR and out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"prunefx {argv[0]}: error: device 'cuda' asked, but torch sees no CUDA GPU")
    assert not (tmp_path / "out").exists()


def test_a_misspelt_device_is_refused_while_parsing(capsys, tmp_path):
    assert main(["prune", "prunefx:resnet20", "--macs", "0.5", "--device", "gpu", "-o", str(tmp_path)]) == 2
    assert "--device: 'gpu' is not auto, cpu, cuda or cuda:N" in capsys.readouterr().err


# --- the CPU path is the path without devices --------------------------------------------------------------

def _calibrated_steps(batches) -> list:
    return [(remove_channels, {"macs": 0.6, "round_to": 1, "calibration": batches}),  # obs + compensation
            (recalibrate_batchnorm, {"data": batches})]


def _tensors(program: Program) -> dict[str, torch.Tensor]:
    return dict(program.module.state_dict())


def _assert_same_tensors(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[name], expected[name]) for name in expected)


@pytest.mark.parametrize("name", ["cpu", "auto"])
def test_on_device_on_the_cpu_gives_exactly_the_tensors_of_the_run_without_it(gpus, name):
    gpus(0)  # auto resolves to the CPU
    program = _program()
    batches = noise_batches(program.example_inputs[0], 3)
    expected = Pipeline(_calibrated_steps(batches)).run(program).program  # the oracle: no device code at all
    assert expected.module.get_parameter("0.weight").shape[0] < 16  # it pruned
    with on_device(program, name) as placed:
        got = placed.home(Pipeline(_calibrated_steps(device_module.batches_on(batches, placed.device))).run(program)
                          .program)
    _assert_same_tensors(_tensors(got), _tensors(expected))


class MacsLatency:
    """A Measurer whose latency is the MACs (ms per 1e6); it records the dtype of every candidate it is given."""

    round_to = None

    def __init__(self):
        self.dtypes: list[torch.dtype] = []

    def __call__(self, dense, candidate):
        self.dtypes.append(next(candidate.module.parameters()).dtype)
        return count(dense).macs / 1e6, count(candidate).macs / 1e6, 0.0

    def confirm(self, dense, candidate):
        from prunefx.passes.budget.measurement import Timing

        return Timing(*self(dense, candidate))


def test_meet_budget_on_the_cpu_chooses_the_same_program_as_without_a_device():
    program = _program()
    batches = noise_batches(program.example_inputs[0], 2)
    width = {"importance": "l2", "compensate": False, "round_to": 1}
    expected, _ = meet_budget(program, speedup=1.5, measurer=MacsLatency(), calibration=batches, width=width)
    got, _ = meet_budget(program, speedup=1.5, measurer=MacsLatency(), calibration=batches, width=width,
                         device="cpu")
    _assert_same_tensors(_tensors(got), _tensors(expected))


# --- the plumbing, through a fake device -------------------------------------------------------------------

@pytest.fixture
def fake_gpu(monkeypatch):
    """'cuda' resolves to cuda:0, and moving there casts every floating tensor of the Program (and calibration
    batches) to float64, back to float32 on the way home; `moves` records each move's target."""
    moves: list[str] = []

    def name(text):
        return torch.device("cuda", 0) if str(text).startswith("cuda") else torch.device("cpu")

    def cast(value, device):
        dtype = torch.float64 if torch.device(device).type == "cuda" else torch.float32
        return value.to(dtype) if value.is_floating_point() else value

    def move(program, device):
        moves.append(torch.device(device).type)
        program.module.to(torch.float64 if torch.device(device).type == "cuda" else torch.float32)
        program.example_inputs = tuple(cast(x, device) for x in program.example_inputs)
        return program

    def batches(data, device):
        return None if data is None else [tuple(cast(x, device) for x in batch) for batch in data]

    monkeypatch.setattr(device_module, "device_named", name)
    monkeypatch.setattr(device_module, "move_program", move)
    monkeypatch.setattr(device_module, "batches_on", batches)
    monkeypatch.setattr(calibration_module, "batches_on", batches)
    monkeypatch.setattr(meet_module, "batches_on", batches)
    return moves


def test_a_pass_sees_the_module_on_the_device_and_the_program_comes_home_when_it_raises(fake_gpu):
    program = _program()
    seen = []

    def fails(given, /, *, config=None):
        seen.append(next(given.module.parameters()).dtype)
        raise RuntimeError("the pass failed")

    with pytest.raises(PipelineError, match="the pass failed"):
        with on_device(program, "cuda"):
            Pipeline([fails]).run(program)
    assert seen == [torch.float64] and fake_gpu == ["cuda", "cpu"]
    assert all(t.dtype == torch.float32 for t in program.module.parameters())
    assert program.example_inputs[0].dtype == torch.float32


def test_a_move_to_the_device_cut_short_leaves_no_tensor_on_the_device(fake_gpu, monkeypatch):
    """Out of GPU memory (or Ctrl-C) half-way through the move: the tensors already moved come back."""
    program = _program()
    move = device_module.move_program

    def runs_out_half_way(given, device):
        if torch.device(device).type == "cpu":
            return move(given, device)
        first = next(given.module.parameters())
        first.data = first.data.to(torch.float64)  # the fake GPU's tensors are float64
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(device_module, "move_program", runs_out_half_way)
    with pytest.raises(torch.OutOfMemoryError), on_device(program, "cuda"):
        pass
    assert {t.dtype for t in program.module.parameters()} == {torch.float32}


def test_meet_budget_runs_the_search_on_the_device_and_returns_both_programs_home(fake_gpu):
    program = _program()
    measurer = MacsLatency()
    chosen, _ = meet_budget(program, speedup=1.5, measurer=measurer, calibration=noise_batches(
        program.example_inputs[0], 2), width={"importance": "taylor", "round_to": 1}, device="cuda")
    assert measurer.dtypes and set(measurer.dtypes) == {torch.float64}  # every candidate was on the device
    assert fake_gpu == ["cuda", "cpu", "cpu"]  # there; the chosen Program home; the dense Program home
    assert all(t.dtype == torch.float32 for p in (program, chosen) for t in p.module.parameters())


def _tiny_prune(tmp_path, name: str, *extra: str) -> list[str]:
    """`prunefx prune` of the tiny net (taylor on noise: a data criterion without --calibrate) into tmp_path/name."""
    if not (tmp_path / "tiny.py").exists():
        (tmp_path / "tiny.py").write_text(FACTORY)
        torch.save(_net().state_dict(), tmp_path / "tiny.pth")
    return ["prune", f"{tmp_path / 'tiny.py'}:net", "--weights", str(tmp_path / "tiny.pth"), "--input-shape",
            "2x3x12x12", "--macs", "0.6", "--round-to", "1", "--importance", "taylor", *extra,
            "-o", str(tmp_path / name)]


@pytest.mark.slow
def test_prune_on_the_cpu_writes_the_tensors_of_the_pass_run_without_devices(gpus, capsys, tmp_path):
    gpus(0)
    program = _program()  # the same net, weights and input shape as the command's
    oracle = remove_channels(program.clone(), config={"macs": 0.6, "round_to": 1, "importance": "taylor",
                                                      "calibration": noise_batches(program.example_inputs[0], 4)})
    expected = list(_tensors(oracle.program).values())
    for name, extra in (("plain", ()), ("cpu", ("--device", "cpu")), ("auto", ("--device", "auto"))):
        assert main(_tiny_prune(tmp_path, name, *extra)) == 0, capsys.readouterr().err
        written = list(_tensors(Program.load(tmp_path / name / "model.pt2")).values())
        assert len(written) == len(expected) and all(torch.equal(a, b) for a, b in zip(written, expected)), name


@pytest.mark.slow
def test_prune_runs_the_pass_on_the_device_and_writes_from_the_cpu(fake_gpu, monkeypatch, capsys, tmp_path):
    import prunefx.cli.commands.prune as prune_command

    seen = []
    real_step = prune_command._pruning_step

    def recording_step(config):
        function, options = real_step(config)

        def recorded(program, /, *, config=None):
            seen.append((next(program.module.parameters()).dtype, config["calibration"][0][0].dtype))
            return function(program, config=config)
        recorded.__name__ = function.__name__  # the step keeps its name: the command reads its facts by it
        return recorded, options

    monkeypatch.setattr(prune_command, "_pruning_step", recording_step)
    code = main(_tiny_prune(tmp_path, "out", "--device", "cuda"))
    assert code == 0, capsys.readouterr().err
    assert seen == [(torch.float64, torch.float64)]  # the module and the noise batches, both on the device
    assert fake_gpu == ["cuda", "cpu", "cpu"]
    saved = Program.load(tmp_path / "out" / "model.pt2")
    assert all(t.dtype == torch.float32 for t in saved.module.parameters())


# --- moving a captured graph --------------------------------------------------------------------------------

class _MakesTensors(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y + torch.arange(y.shape[-1], dtype=y.dtype) + torch.zeros(y.shape[-1]) + torch.tensor([1.0]).sum()


def _named_devices(module: torch.fx.GraphModule) -> list[torch.device]:
    return [node.kwargs["device"] for node in module.graph.nodes if node.kwargs.get("device") is not None]


def test_moving_renames_the_devices_the_graph_names_and_moves_every_tensor_it_reads():
    program = capture(_MakesTensors().eval(), torch.randn(1, 3, 6, 6), name="makes")
    assert _named_devices(program.module) == [torch.device("cpu")] * 2  # arange and zeros
    expected = program.run_example()
    move_module(program.module, "cpu")  # to where it is: nothing changes, and it still computes the same
    assert _named_devices(program.module) == [torch.device("cpu")] * 2
    assert torch.equal(program.run_example(), expected)
    # the renaming itself, where no computation is run: the graph's text and its tensors' device only
    move_module(program.module, "meta")
    assert _named_devices(program.module) == [torch.device("meta")] * 2
    assert "device = device(type='meta')" in program.module.code
    assert {t.device.type for t in (*program.module.parameters(), *program.module.buffers())} == {"meta"}


def test_moving_with_a_dtype_casts_every_floating_tensor_the_graph_reads_and_nothing_else():
    """What the cuda backend asks for (fp16/bf16 copies), checked here with float64 on the CPU: parameters,
    buffers and the constants torch.export lifted as plain attributes are cast; integer tensors are not."""
    program = capture(_MakesTensors().eval(), torch.randn(1, 3, 6, 6), name="makes")
    expected = program.run_example()
    module = program.module
    # the lifted torch.tensor([1.0]) as a plain attribute, as some torch versions leave it
    lifted = module._buffers.pop("lifted_tensor_0")
    module.lifted_tensor_0 = lifted
    move_module(module, "cpu", torch.float64)
    assert module.lifted_tensor_0.dtype == torch.float64
    assert all(t.dtype == torch.float64 for t in (*module.parameters(), *module.buffers()))
    got = module(program.example_inputs[0].double())
    assert got.dtype == torch.float64
    torch.testing.assert_close(got.float(), expected, rtol=1e-5, atol=1e-5)


class _MakesDefaultFloats(nn.Module):
    """Floats made without naming a dtype, which the exported graph records as none: a factory, the division
    of integers, a choice between two numbers; an integer index stays an integer."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x) + torch.zeros(4, 1, 1) + (torch.arange(4) / 4).reshape(4, 1, 1)
        y = y * torch.linspace(0.5, 1.5, 4).reshape(4, 1, 1) + torch.where(torch.arange(4) > 1, 0.25, -0.25)[:, None, None]
        return self.head(y).index_select(1, torch.arange(3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_floats_made_in_the_default_dtype_follow_a_half_precision_move(dtype):
    torch.manual_seed(0)
    program = capture(_MakesDefaultFloats().eval(), torch.randn(2, 3, 8, 8), name="defaults")
    expected = program.run_example()
    module = move_module(copy.deepcopy(program.module), "cpu", dtype)
    got = module(program.example_inputs[0].to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2)
    graph = str(module.graph)
    move_module(module, "cpu", dtype)  # moved again: nothing is cast twice
    assert str(module.graph) == graph


class _CastsToFloat32(nn.Module):
    """The casts an exported graph asserts: `.float()`, `.to(float32)`, a float32 factory and softmax dtype."""

    def __init__(self):
        super().__init__()
        self.conv, self.linear = nn.Conv2d(3, 8, 3), nn.Linear(8, 4)

    def forward(self, x):
        y = self.conv(x).float().mean((2, 3)).to(torch.float32) + torch.zeros(8, dtype=torch.float32)
        return self.linear(y).softmax(-1, dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_graph_with_float32_casts_runs_at_half_precision_and_matches_float32(dtype):
    torch.manual_seed(0)
    program = capture(_CastsToFloat32().eval(), torch.randn(2, 3, 8, 8), name="casts")
    expected = program.run_example()
    named = [n for n in program.module.graph.nodes if torch.float32 in (*n.args, *n.kwargs.values())]
    assert any(n.target is torch.ops.aten._assert_tensor_metadata.default for n in named)
    module = move_module(copy.deepcopy(program.module), "cpu", dtype)
    got = module(program.example_inputs[0].to(dtype))
    assert got.dtype == dtype  # no cast went back to float32 on the way
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2)
    assert torch.equal(program.run_example(), expected)  # the Program itself is untouched


class _ColumnsReversedByAFloatIndex(nn.Module):
    """Indices computed in float32 (exact), as some models compute positions, then cast to int64: 2100 columns,
    past what bf16 (256) and fp16 (2048) hold exactly; and a float mask from the same arithmetic, compared."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        positions = torch.arange(y.shape[-1], dtype=torch.float32)
        reversed_columns = (y.shape[-1] - 1 - positions).long()
        return y[..., reversed_columns] * (positions > 2049).to(y.dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_index_arithmetic_in_float32_keeps_its_precision_when_the_module_is_cast(dtype):
    """The oracle is the eager module cast with Module.to, whose float32 arange stays float32."""
    torch.manual_seed(0)
    model = _ColumnsReversedByAFloatIndex().eval()
    program = capture(model, torch.randn(1, 3, 1, 2100), name="float_index")
    module = move_module(copy.deepcopy(program.module), "cpu", dtype)
    x = program.example_inputs[0].to(dtype)
    got = module(x)
    assert got.dtype == dtype
    torch.testing.assert_close(got, copy.deepcopy(model).to(dtype)(x), rtol=0, atol=0)


class _MaskedAttention(nn.Module):
    """The attention mask's fill as models write it, float32's lowest number baked into the graph at capture, and
    a clamp bound and padding value beyond half precision's range; a division by a large number, which is not
    a value the tensor stores."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, x, mask):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = (q @ k.transpose(-2, -1)).masked_fill(~mask, torch.finfo(torch.float32).min)
        out = scores.softmax(-1) @ v
        return F.pad(out.clamp(min=-1e9), (0, 1), value=-1e30)[..., :-1] + out / 1e5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fill_values_beyond_half_precision_become_its_largest_and_the_model_runs(dtype):
    torch.manual_seed(0)
    mask = torch.ones(2, 8, 8, dtype=torch.bool).tril()
    program = capture(_MaskedAttention().eval(), (torch.randn(2, 8, 16), mask), name="masked")
    expected = program.run_example()
    module = move_module(copy.deepcopy(program.module), "cpu", dtype)
    got = module(program.example_inputs[0].to(dtype), mask)
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2)
    divisions = [node.args[1] for node in module.graph.nodes if node.target is torch.ops.aten.div.Tensor]
    assert divisions == [1e5]  # arithmetic keeps its number


def test_a_move_to_cuda_names_its_index_so_that_traced_device_checks_pass(monkeypatch):
    """Fake tensors, which torch.compile and torch.export trace with, compare devices strictly: a graph moved to a
    bare 'cuda' asserted `cuda` against its tensors' `cuda:0`. Emulated without a GPU: FakeTensorMode makes cuda:0
    tensors, and the parameters are plain attributes, which move_module moves itself."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    module = copy.deepcopy(capture(_CastsToFloat32().eval(), torch.randn(2, 3, 8, 8), name="casts").module)
    for owner in module.modules():
        for name, value in list(owner._parameters.items()):
            del owner._parameters[name]
            setattr(owner, name, value.detach())
    with FakeTensorMode(allow_non_fake_inputs=True):
        moved = move_module(module, "cuda", torch.float16)
        asserted = {str(node.kwargs["device"]) for node in moved.graph.nodes
                    if node.target is torch.ops.aten._assert_tensor_metadata.default}
        assert asserted == {"cuda:0"}
        assert moved(torch.empty(2, 3, 8, 8, device="cuda", dtype=torch.float16)).device == torch.device("cuda", 0)


@pytest.mark.slow
def test_efficientvit_with_its_asserted_casts_runs_in_bfloat16():
    """timm's efficientvit_b1 names float32 in its graph (a `.float()` in its attention): moved to bf16, it
    ran into "Tensor dtype mismatch! Expected: Float" before the graph's dtypes were renamed along."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("efficientvit_b1", pretrained=False).eval()
    program = capture(model, torch.randn(1, 3, 224, 224), name="efficientvit_b1")
    expected = program.run_example()
    module = move_module(copy.deepcopy(program.module), "cpu", torch.bfloat16)
    got = module(program.example_inputs[0].bfloat16())
    assert got.dtype == torch.bfloat16 and got.shape == expected.shape
    assert torch.corrcoef(torch.stack([got.float().flatten(), expected.flatten()]))[0, 1] > 0.99


# --- on a GPU ------------------------------------------------------------------------------------------------

def _half_precision_cases():
    torch.manual_seed(0)
    mask = torch.ones(2, 8, 8, dtype=torch.bool).tril()
    return {"casts": capture(_CastsToFloat32().eval(), torch.randn(2, 3, 8, 8), name="casts"),
            "masked": capture(_MaskedAttention().eval(), (torch.randn(2, 8, 16), mask), name="masked")}


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("case", ["casts", "masked"])
@pytest.mark.parametrize("precision, compiled", [("fp16", False), ("bf16", False), ("fp16", True)])
def test_the_cuda_backend_runs_float32_casts_and_fills_at_half_precision_as_a_graph(case, precision, compiled):
    """The graphs the CPU tests above move to half precision, prepared as the cuda backend times them: on the GPU,
    at `precision`, warmed, captured as a CUDA graph, and compiled by inductor first (whose fake tensors check the
    graph's asserted dtypes and devices strictly)."""
    from prunefx.runtime.cuda.graph import DTYPES, CudaDevice, GpuModel

    if compiled:
        pytest.importorskip("triton")
    program = _half_precision_cases()[case]
    expected = program.run_example()
    model = GpuModel(program, precision=precision, device=CudaDevice(), compile=compiled)
    assert model.mode == "graph", model.reason
    assert model.time_once() > 0
    got = model._call()
    assert got.dtype == DTYPES[precision]  # no cast went back to float32 on the way
    torch.testing.assert_close(got.float().cpu(), expected, rtol=3e-2, atol=3e-2)


@pytest.mark.gpu
@requires_cuda
def test_bench_compile_on_the_cuda_backend_times_a_graph_that_casts_to_float32(tmp_path, capsys):
    """`prunefx bench MODEL.pt2 --backend cuda --compile` as a user types it, on a graph asserting float32."""
    import json

    pytest.importorskip("triton")
    saved = _half_precision_cases()["casts"].save(tmp_path / "casts.pt2")
    code = main(["bench", str(saved), "--backend", "cuda", "--compile", "--runs", "10", "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "cuda" and report["gpu"] == torch.cuda.get_device_name()
    assert report["cuda_graph"] and report["latency"]["median_ms"] > 0


@pytest.mark.gpu
@requires_cuda
def test_compress_on_the_gpu_prunes_as_the_cpu_run_and_trains_there(tmp_path, monkeypatch):
    """A recipe of second-order pruning with compensation, then distillation, compressed on cuda and on the CPU
    (TF32 off): the same widths (local ranking: no near-ties between groups), the trained model written float32 on
    the CPU, losses and scores that agree to rounding (cuDNN adds gradients in another order)."""
    import json

    import prunefx.compression as compression
    from prunefx.compress_options import Options
    from prunefx.data.splits import DataSplits, tensor_batches
    from prunefx.named_recipes import Recipe
    from prunefx.passes.core.recipe import pipeline_from_spec

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    images, labels = torch.randn(32, 3, 12, 12), torch.arange(32) % 4
    splits = DataSplits(train=tensor_batches(images, labels, 8, shuffle=True), val=None,
                        test=tensor_batches(images, labels, 8, shuffle=False), classes=tuple("abcd"),
                        input_shape=(3, 12, 12))
    spec = {"name": "obs-kd", "passes": [
        {"remove_channels": {"macs": 0.6, "importance": "obs", "compensate": True, "round_to": 1, "ranking": "local"}},
        {"distill": {"steps": 4, "lr": 0.01}}]}
    recipe = Recipe(name="obs-kd", path=None, spec=spec, pipeline=pipeline_from_spec(spec))
    dense = capture(_net(), torch.randn(8, 3, 12, 12), name="net").eval()
    for device in ("cpu", "cuda"):  # each stage timed on ONNX Runtime too, as the command does by default
        options = Options(threads=1, runs=2, warmup=1, stage_reports=device == "cuda", device=device)
        compression.compress(dense.clone(), recipe, splits, tmp_path / device, data="random", options=options,
                             log=lambda line: None)
    cpu, cuda = (json.loads((tmp_path / device / "report.json").read_text()) for device in ("cpu", "cuda"))
    # a stage's measurement that fails is an error in its row, not a failed run: none may fail from the GPU
    assert [sorted(row["latency"]) for row in cuda["stages"]] == [["dense_ms", "ms", "speedup", "spread"]] * 2
    widths = [[group["width_after"] for group in report["passes"][0]["stats"]["groups"]] for report in (cpu, cuda)]
    assert widths[0] == widths[1]
    losses = [report["passes"][1]["stats"]["train_loss"] for report in (cpu, cuda)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    after = [report["accuracy"]["after"]["test"]["loss"] for report in (cpu, cuda)]
    assert after[1] == pytest.approx(after[0], rel=1e-3)
    written = Program.load(tmp_path / "cuda" / "model.pt2")
    assert {(p.device.type, p.dtype) for p in written.module.parameters()} == {("cpu", torch.float32)}


def _prune_args(tmp_path, weights, device: str, name: str) -> list[str]:
    return ["prune", "torchvision:resnet18", "--weights", str(weights), "--input-shape", "4x3x64x64",
            "--macs", "0.5", "--local", "--calibrate", "imagenet-sample", "--device", device,
            "-o", str(tmp_path / name)]


@pytest.mark.gpu
@pytest.mark.slow
@requires_cuda
def test_a_calibrated_prune_on_the_gpu_matches_the_cpu_run(tmp_path, capsys, monkeypatch):
    """Tolerance: the same width for every group, and every tensor of model.pt2 within 1e-3 of its largest
    magnitude of the CPU run's (TF32 off: float32 on both, Hessians and OBS in float64). Local ranking: every
    group keeps the same fraction, so the widths do not hang on near-ties between the random net's groups."""
    import json

    import torchvision

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    for device in ("cpu", "cuda"):
        assert main(_prune_args(tmp_path, tmp_path / "r18.pth", device, device)) == 0, capsys.readouterr().err
    reports = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("cpu", "cuda")]
    assert [g["width_after"] for g in reports[0]["groups"]] == [g["width_after"] for g in reports[1]["groups"]]
    assert reports[1]["importance"] == "obs" and reports[1]["compensated"]
    cpu, cuda = (_tensors(Program.load(tmp_path / d / "model.pt2")) for d in ("cpu", "cuda"))
    assert cpu.keys() == cuda.keys() and all(t.device.type == "cpu" for t in cuda.values())
    for name, tensor in cpu.items():
        if tensor.is_floating_point():
            scale = float(tensor.abs().max()) or 1.0
            assert float((cuda[name] - tensor).abs().max()) <= 1e-3 * scale, name


@pytest.mark.gpu
@pytest.mark.slow
@requires_cuda
def test_quantize_calibrated_on_the_gpu_matches_the_cpu_run(tmp_path, capsys, monkeypatch):
    """The activation ranges read on the GPU (TF32 off inside the block) are those of the CPU run to rounding: the
    same layers quantized, every scale within 1 % of the CPU run's, the files written from the CPU. Calibrated on the
    offline ImageNet images, which the GPU machine has (it has no Fashion-MNIST)."""
    import json

    import torchvision

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    for device in ("cpu", "cuda"):
        argv = ["quantize", "torchvision:resnet18", "--weights", str(tmp_path / "r18.pth"), "--input-shape",
                "4x3x64x64", "--calibrate", "imagenet-sample", "--method", "percentile", "--device", device,
                "--runs", "3", "-o", str(tmp_path / device)]
        assert main(argv) == 0, capsys.readouterr().err
    reports = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("cpu", "cuda")]
    layers = [[row["layer"] for row in report["quantize_int8"]["quantized"]] for report in reports]
    assert layers[0] and layers[0] == layers[1]
    cpu, cuda = (_tensors(Program.load(tmp_path / d / "model.pt2")) for d in ("cpu", "cuda"))
    assert cpu.keys() == cuda.keys() and all(t.device.type == "cpu" for t in cuda.values())
    scales = [name for name in cpu if name.endswith("scale")]
    assert scales and all(torch.allclose(cuda[name], cpu[name], rtol=1e-2) for name in scales)


_TF32_SETTINGS = """
import os
import sys
import torch
from prunefx.device import on_device
from prunefx.graph import capture
from prunefx.graph.full_float32 import float32_as_found

B = torch.backends
# torch's own keys: its module attributes do not always name the string they set (mkldnn's sets the process's)
STRINGS = [("generic", "all"), ("mkldnn", "all"), ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn"),
           ("cuda", "all"), ("cuda", "matmul"), ("cuda", "conv"), ("cuda", "rnn")]

def read(getter):
    try:
        return getter()
    except RuntimeError:  # the legacy and new APIs mixed: what a user's own read would meet
        return "raises"

def settings():
    legacy = [torch.get_float32_matmul_precision, lambda: B.cuda.matmul.allow_tf32, lambda: B.cudnn.allow_tf32]
    return [read(getter) for getter in legacy] + [read(lambda: torch._C._get_fp32_precision_getter(*key))
                                                  for key in STRINGS]

def after_the_parents_change():
    # what the user's next setting of a whole backend does: reaches each string that followed it
    B.mkldnn.fp32_precision = "bf16"
    B.cudnn.fp32_precision = "tf32"
    return settings()

def without_the_block():
    child = os.fork()
    if child == 0:
        print(after_the_parents_change(), flush=True)
        os._exit(0)
    os.waitpid(child, 0)

program = capture(torch.nn.Linear(4, 2).eval(), torch.randn(1, 4)).eval()
for setting in sys.argv[1:]:
    child = os.fork()  # a process of its own per setting: which of torch's two APIs a process used stays with it
    if child == 0:
        exec(setting)  # the user's own setting, in one of torch's ways (some make torch.export itself refuse)
        before = settings()
        without_the_block()
        with on_device(program, "cpu"):
            inside = settings()
            with float32_as_found():  # a training step's: the user's own settings, full float32 again after
                as_found = settings()
            training_steps = as_found == before and settings() == inside
            try:  # what compress and meet_budget run inside: torch.export saves and sets oneDNN's string itself
                torch.export.export(program.module, program.example_inputs)
            except RuntimeError:  # a setting that makes torch.export refuse
                pass
        full = inside[0] == "highest" and inside[1:3] == [False, False] and set(inside[4:]) - {"ieee"} <= {"none"}
        print(setting, "|", full, settings() == before, training_steps, inside, before, flush=True)
        print(after_the_parents_change(), flush=True)
        os._exit(0)
    os.waitpid(child, 0)
"""
SETTINGS = ["pass", "torch.set_float32_matmul_precision('medium')", "torch.backends.cuda.matmul.allow_tf32 = True",
            "torch.backends.cuda.matmul.fp32_precision = 'tf32'", "torch.backends.cudnn.conv.fp32_precision = 'ieee'",
            "torch.backends.fp32_precision = 'tf32'", "torch.backends.mkldnn.fp32_precision = 'bf16'",
            "torch.backends.mkldnn.matmul.fp32_precision = 'bf16'"]


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch before 2.9")
def test_tf32_is_off_inside_the_block_in_both_of_torch_s_apis_and_every_setting_reads_as_before_after():
    """After a block, torch's reads of either API answer as before it, for each way a user may have set them, and
    a string that followed its parent (the whole process, oneDNN, CUDA) before follows it still. A training step
    inside the block reads the user's settings, and full float32 is back after it."""
    done = subprocess.run([sys.executable, "-c", _TF32_SETTINGS, *SETTINGS], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    without, outcome, with_block = lines[0::3], lines[1::3], lines[2::3]
    assert [line.split(" | ")[0] for line in outcome] == SETTINGS, done.stdout + done.stderr[-2000:]
    assert all(line.split(" | ")[1].startswith("True True True") for line in outcome), done.stdout
    assert with_block == without, done.stdout  # every string that followed its parent follows it still


def _compress_l2_on(device: str, folder: Path) -> dict:
    """compress a small net with an L2 recipe on `device`, scored on random images, no stage rows."""
    import prunefx.compression as compression
    from prunefx.compress_options import Options
    from prunefx.data.splits import DataSplits, tensor_batches
    from prunefx.named_recipes import Recipe
    from prunefx.passes.core.recipe import pipeline_from_spec

    images, labels = torch.randn(8, 3, 12, 12), torch.arange(8) % 4
    splits = DataSplits(train=None, val=None, test=tensor_batches(images, labels, 2, shuffle=False),
                        classes=tuple("abcd"), input_shape=(3, 12, 12))
    spec = {"name": "l2", "passes": [{"remove_channels": {"macs": 0.6, "importance": "l2", "round_to": 1}}]}
    recipe = Recipe(name="l2", path=None, spec=spec, pipeline=pipeline_from_spec(spec))
    options = Options(threads=1, runs=2, warmup=1, stage_reports=False, device=device)
    return compression.compress(_program(), recipe, splits, folder, data="random", options=options,
                                log=lambda line: None)


def test_compress_refuses_torchrun_in_one_line_before_anything_loads(monkeypatch, capsys, tmp_path):
    """Under torchrun its model, captured at the whole batch, met a share of it in each process (the distill pass
    failed after pruning), and every process would have scored, timed and written the output side by side."""
    import prunefx.cli.commands.compress as compress_command

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(compress_command, "load_model_and_data", lambda *a, **k: pytest.fail("data loaded"))
    code = main(["compress", "prunefx:resnet20", "--recipe", "finetune", "--data", "fashion-mnist",
                 "-o", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(lines) == 1 and not (tmp_path / "out").exists()
    assert "compress does not run under torchrun (2 processes)" in lines[0]
    with pytest.raises(PrunefxError, match="does not run under torchrun"):  # from Python too
        _compress_l2_on("cpu", tmp_path / "out")


def test_compress_scores_the_dense_and_the_compressed_model_on_the_device(fake_gpu, monkeypatch, tmp_path):
    """The scores before and after are computed where the recipe's passes run, not on the CPU the model came from."""
    import prunefx.compression as compression

    scored = []

    def score(program, loader, splits):
        scored.append(next(program.module.parameters()).dtype)  # float64: on the fake device
        return {"accuracy": 0.5, "count": 4}

    monkeypatch.setattr(compression, "_score", score)
    _compress_l2_on("cuda", tmp_path / "out")
    assert scored == [torch.float64, torch.float64]  # dense, then compressed
    assert next(Program.load(tmp_path / "out" / "model.pt2").module.parameters()).dtype == torch.float32


def test_compress_on_cuda_n_times_its_result_on_that_gpu(fake_gpu, monkeypatch, tmp_path):
    """The final latency is timed after the passes' block has closed: on --device cuda:1 it must still be GPU 1
    that is current (the cuda backend and TensorRT time on the current device), not GPU 0."""
    import prunefx.compression as compression

    current: list[int] = []

    @contextlib.contextmanager
    def device(index):
        current.append(index)
        try:
            yield
        finally:
            current.pop()

    timed_on, delivered_latency = [], compression.delivered_latency

    def timed(*args):
        timed_on.append(list(current))
        return delivered_latency(*args)

    monkeypatch.setattr(device_module, "device_named", lambda name: torch.device("cuda", 1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(compression, "_score", lambda program, loader, splits: {"accuracy": 0.5, "count": 4})
    monkeypatch.setattr(compression, "delivered_latency", timed)
    _compress_l2_on("cuda:1", tmp_path / "out")
    assert timed_on == [[1]] and current == []


def test_cuda_n_is_torch_s_current_device_inside_the_block(fake_gpu, monkeypatch):
    """What measures inside (the cuda backend, TensorRT, latency tables) uses the current device: with
    --device cuda:1 it must be GPU 1, where the passes run, not GPU 0."""
    entered = []

    @contextlib.contextmanager
    def current(index):
        entered.append(index)
        yield

    monkeypatch.setattr(device_module, "device_named", lambda name: torch.device("cuda", 1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", current)
    with on_device(_program(), "cuda:1"):
        assert entered == [1]
