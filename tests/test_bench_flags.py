"""`prunefx bench` and `profile` refuse, in one line and before any timing, what they would otherwise ignore or crash
on: a flag the backend does not read, --rounds beyond --runs, --weights with an .onnx file, an input type numpy
cannot make; a model reference is captured at --batch; a missing GPU is not answered with a backend profile lacks."""

from __future__ import annotations

import json

import pytest
import torch
from onnx import TensorProto, helper

from prunefx.cli import EXIT_USER_ERROR, main

FAST = ["--runs", "2", "--warmup", "0"]


@pytest.fixture
def relu_onnx(tmp_path) -> str:
    return _identity_file(tmp_path, TensorProto.FLOAT)


def _identity_file(tmp_path, elem_type) -> str:
    graph = helper.make_graph([helper.make_node("Relu" if elem_type == TensorProto.FLOAT else "Identity", ["x"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", elem_type, [1, 8])],
                              [helper.make_tensor_value_info("y", elem_type, [1, 8])])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
                     .SerializeToString())
    return str(path)


def _refused(capsys, argv, says):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == EXIT_USER_ERROR and captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured
    assert says in captured.err, captured.err


@pytest.mark.parametrize("argv, says", [
    (["--backend", "cuda", "--threads", "4"], "--threads applies to --backend ort, torch"),
    (["--backend", "trt", "--threads", "4"], "--threads applies to --backend ort, torch"),
    (["--backend", "trtexec", "--warmup", "0"], "--warmup does not apply to --backend trtexec"),
    (["--vs", "{m}", "--rounds", "8"], "--rounds 8 spreads --runs 2"),
    (["--weights", "nothing.pth"], "--weights loads a state dict into a model; an .onnx file holds its own"),
])
def test_what_the_run_would_ignore_is_refused(capsys, relu_onnx, argv, says):
    _refused(capsys, ["bench", relu_onnx, *[a.format(m=relu_onnx) for a in argv], *FAST[:2]], says)


def test_a_bfloat16_input_is_refused_not_an_internal_error(capsys, tmp_path):
    _refused(capsys, ["bench", _identity_file(tmp_path, TensorProto.BFLOAT16), *FAST],
             "tensor(bfloat16), a type bench cannot make random inputs of")


def test_a_model_reference_is_captured_at_the_batch_asked(capsys, tmp_path):
    factory = tmp_path / "net.py"
    factory.write_text("import torch\n\ndef net():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())\n")
    assert main(["bench", f"{factory}:net", "--input-shape", "1x3x16x16", "--batch", "4", *FAST, "--json"]) == 2
    assert "cannot rebatch" in capsys.readouterr().err  # a shape given is kept: growing it is the user's to say
    assert main(["bench", f"{factory}:net", "--batch", "4", *FAST, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batch"] == 4 and report["inputs"][0].startswith("4x3x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there: the cuda backend is not refused")
def test_a_missing_gpu_points_to_the_cpu_backend_only_where_the_command_has_it(capsys, relu_onnx):
    _refused(capsys, ["bench", relu_onnx, "--backend", "cuda", *FAST], "--backend ort measures on this machine's CPU")
    code = main(["profile", relu_onnx, "--backend", "cuda", *FAST])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "torch sees none" in err and "--backend ort" not in err
