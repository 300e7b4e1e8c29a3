"""`bench A --vs B` compares two models only on the same inputs: models whose inputs differ are refused in
one line naming both (prunefx/cli/commands/bench.py), before anything is timed."""

from __future__ import annotations

import time

import torch
from torch import nn

from prunefx.cli import main
from prunefx.graph import capture
from prunefx.runtime import export_onnx


def test_bench_vs_refuses_models_of_different_input_shapes(tmp_path, capsys):
    files = []
    for side in (64, 32):
        program = capture(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval(), torch.randn(1, 3, side, side))
        files.append(export_onnx(program, tmp_path / f"side{side}.onnx").path)
    started = time.perf_counter()
    assert main(["bench", str(files[0]), "--vs", str(files[1]), "--runs", "1000", "--warmup", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunefx bench: error: ")
    assert "1x3x64x64 float32" in lines[0] and "1x3x32x32 float32" in lines[0] and "different work" in lines[0]
    assert time.perf_counter() - started < 10  # refused before 2 x 1000 timed runs


def test_bench_feeds_a_half_precision_file_the_type_its_inputs_declare(tmp_path, capsys):
    """An ONNX file prunefx exported from a float16 Program reads float16: fed float32, ONNX Runtime refused it."""
    program = capture(nn.Sequential(nn.Linear(16, 8), nn.ReLU()).half().eval(), torch.randn(2, 16).half())
    path = export_onnx(program, tmp_path / "half.onnx").path
    assert main(["bench", str(path), "--runs", "3", "--warmup", "1"]) == 0
    assert "median" in capsys.readouterr().out
