"""Repetitions, sizes and paths a user (or a file) can ask for are bounded and checked before work starts;
files that are not regular files are said to be what they are."""

from __future__ import annotations

import os
import time

import pytest
import torch

from prunefx.cli import main
from prunefx.graph import PrunefxError, capture
from prunefx.passes import Pipeline, fold_batchnorm
from prunefx.passes.core.recipe import MAX_RECIPE_STEPS, RecipeError, pipeline_from_spec, read_recipe

RESNET20 = ["prunefx:resnet20", "--input-shape", "1x1x28x28"]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv, words", [
    (["bench", *RESNET20, "--runs", str(10 ** 9)], "--runs"),
    (["bench", *RESNET20, "--warmup", str(10 ** 9)], "--warmup"),
    (["prune", *RESNET20, "--macs", "0.5", "--calibrate", "fashion-mnist", "--calibration-images", str(10 ** 9),
      "-o", "out"], "--calibration-images"),
])
def test_repetition_counts_are_bounded_before_any_work(tmp_path, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    assert main(argv) == 2
    assert words in _one_line(capsys.readouterr().err)
    assert time.perf_counter() - started < 30 and list(tmp_path.iterdir()) == []  # imports, no model built


def test_recipe_integers_and_step_counts_are_bounded():
    with pytest.raises(PrunefxError, match="round_to.*over the limit"):
        pipeline_from_spec({"passes": [{"remove_channels": {"round_to": 10 ** 400}}]})
    # inside a mapping's values too: they were not looked at
    with pytest.raises(PrunefxError, match="min_widths.*over the limit"):
        pipeline_from_spec({"passes": [{"remove_channels": {"macs": 0.5, "min_widths": {"conv1:0": 10 ** 30}}}]})
    with pytest.raises(PrunefxError, match="width.*over the limit"):
        pipeline_from_spec({"passes": [{"choose_for_budget": {"speedup": 2, "width": {"min_widths": {"c:0": 10 ** 30}}}}]})
    started = time.perf_counter()
    with pytest.raises(RecipeError, match="over the limit"):
        pipeline_from_spec({"passes": ["fold_batchnorm"] * 40_000})
    assert time.perf_counter() - started < 2
    assert len(pipeline_from_spec({"passes": ["fold_batchnorm"] * MAX_RECIPE_STEPS}).steps) == MAX_RECIPE_STEPS


def test_a_pass_name_with_terminal_escapes_is_shown_escaped():
    with pytest.raises(RecipeError) as caught:
        pipeline_from_spec({"passes": ["fold\x1b[31m_batchnorm\nrm -rf"]})
    message = str(caught.value)
    assert "\x1b" not in message and "\n" not in message and "\\x1b" in message


def test_a_pipeline_step_of_three_items_is_a_prunefx_error():
    with pytest.raises(PrunefxError, match="step 1"):
        Pipeline([(fold_batchnorm, {}, "extra")])


def test_a_long_output_path_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    long = "/".join(["d" * 200] * 25) + "/m.onnx"  # 5000 characters
    assert main(["export", *RESNET20, "-o", long]) == 2
    assert "limit" in _one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_export_onto_its_own_input_is_refused(tmp_path, capsys):
    path = tmp_path / "net.pt2"
    capture(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3)).eval(), torch.randn(1, 1, 8, 8)).save(path)
    before = path.read_bytes()
    assert main(["export", str(path), "-o", str(path)]) == 2
    assert "replace the input" in _one_line(capsys.readouterr().err)
    assert path.read_bytes() == before


def _special_files(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"FIFO": fifo, "folder": folder, "device": "/dev/zero"}


def test_special_files_are_not_regular_files_everywhere(tmp_path, capsys):
    from prunefx import load
    from prunefx.runtime.errors import OnnxSessionError
    from prunefx.runtime.ort.session import OnnxRuntimeSession

    for kind, path in _special_files(tmp_path).items():
        started = time.perf_counter()
        assert main(["inspect", *RESNET20, "--weights", str(path)]) == 2, kind
        assert "not a regular file" in _one_line(capsys.readouterr().err), kind
        with pytest.raises(RecipeError, match="not a regular file"):
            read_recipe(path)
        with pytest.raises(OnnxSessionError, match="not a regular file"):
            OnnxRuntimeSession(path)
        with pytest.raises(PrunefxError, match="not a regular file"):
            load(path)
        assert time.perf_counter() - started < 30, kind
