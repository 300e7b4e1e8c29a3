"""`prunefx bench A --vs B`: one block of runs per side leaves no spread to judge, so no interval
is printed as one (null in --json); `--rounds` is refused where nothing reads it, and keeps its default of 4
where ONNX Runtime does (prunefx/cli/commands/bench.py, prunefx/bench_models.py)."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from prunefx.cli import EXIT_USER_ERROR, main
from prunefx.graph import capture

# compare_latency and compare_rounds time blocks of at most 10 runs: 4 runs in one round are one block a side
ONE_BLOCK = ["--runs", "4", "--warmup", "0", "--threads", "1"]


@pytest.fixture
def tiny_onnx(tmp_path) -> str:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "relu.onnx")
    return str(tmp_path / "relu.onnx")


@pytest.fixture
def tiny_program(tmp_path) -> str:
    return str(capture(nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval(), torch.randn(1, 8)).save(tmp_path / "m.pt2"))


def _bench(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["bench", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("backend", [["--rounds", "1"], ["--backend", "torch"]])
def test_one_block_a_side_prints_no_interval(capsys, tiny_onnx, tiny_program, backend):
    model = tiny_program if "torch" in backend else tiny_onnx
    code, out, err = _bench(capsys, model, "--vs", model, *backend, *ONE_BLOCK)
    assert code == 0, err
    line = out.splitlines()[2]
    assert "no interval" in line and "% interval" not in line, line
    code, out, err = _bench(capsys, model, "--vs", model, *backend, *ONE_BLOCK, "--json")
    report = json.loads(out)
    assert report["speedup"] > 0 and report["speedup_low"] is None and report["speedup_high"] is None


def test_the_cpu_and_the_runtime_version_are_named(capsys, tiny_onnx):
    import onnxruntime

    # the oracle: /proc/cpuinfo's first model name, read here (a CPU timing means little without its CPU)
    names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    code, out, err = _bench(capsys, tiny_onnx, *ONE_BLOCK, "--json")
    report = json.loads(out)
    assert code == 0 and report["onnxruntime"] == onnxruntime.__version__ and report["cpu"] == names[0]
    code, out, err = _bench(capsys, tiny_onnx, *ONE_BLOCK)
    assert f"on {names[0]} (ONNX Runtime {onnxruntime.__version__})" in out


def test_several_blocks_still_print_their_interval(capsys, tiny_onnx):
    code, out, err = _bench(capsys, tiny_onnx, "--vs", tiny_onnx, "--rounds", "1", "--runs", "40", "--warmup", "0",
                            "--threads", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["speedup_low"] < report["speedup_high"] and report["confidence"] == 0.9


@pytest.mark.parametrize("argv, says", [(["--backend", "torch", "--vs", "{m}"], "--rounds applies to --backend ort"),
                                        ([], "--rounds applies to --vs")])
def test_rounds_is_refused_where_nothing_reads_it(capsys, tiny_program, argv, says):
    code, out, err = _bench(capsys, tiny_program, *[a.format(m=tiny_program) for a in argv], "--rounds", "2",
                            *ONE_BLOCK)
    assert code == EXIT_USER_ERROR and out == "" and len(err.strip().splitlines()) == 1, err
    assert says in err


@pytest.mark.parametrize("rounds, expected", [([], 4), (["--rounds", "2"], 2)])
def test_rounds_on_onnx_runtime_keeps_its_default_of_four(capsys, tiny_onnx, rounds, expected):
    code, out, err = _bench(capsys, tiny_onnx, "--vs", tiny_onnx, *rounds, "--runs", "8", "--warmup", "0",
                            "--threads", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["rounds"] == expected
