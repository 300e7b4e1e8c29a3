"""benchmarks/gpu_speedup.py in its --smoke mode: the whole script on a CPU stand-in for the GPU (one small
model), checked for what it writes and where; its timings mean nothing here and are not judged."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from prunefx.runtime.backends import cuda as cuda_backend

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_speedup.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_speedup", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smoke_run_writes_every_row_outside_the_results_folder(tmp_path):
    script = _script()
    device = cuda_backend.BACKEND.device
    assert script.main(["--smoke", "--runs", "3", "--out", str(tmp_path)]) == 0
    assert cuda_backend.BACKEND.device is device  # the stand-in is gone after the run
    report = json.loads((tmp_path / "gpu_speedup.json").read_text())
    assert [row["batch"] for row in report["equal_macs"]] == list(script.SMOKE_BATCHES)
    for row in report["equal_macs"]:
        assert row["prunefx"]["macs_kept"] == pytest.approx(script.MACS, abs=0.02)
        for name in ("torch-pruning", "torch-pruning r8"):  # at prunefx's MACs, or the reason it failed
            assert "error" in row[name] or row[name]["macs_kept"] == pytest.approx(script.MACS, abs=0.05)
    (budget,) = report["budgets"]
    assert ("refused" in budget and len(budget["refused"].splitlines()) == 1) or budget["remeasured"] > 0
    assert report["machine"]["gpu"].startswith("none") and "gpu_speedup.md" in {p.name for p in tmp_path.iterdir()}


def test_smoke_results_are_never_published_and_a_real_run_needs_a_gpu(capsys):
    script = _script()
    assert script.main(["--smoke", "--out", str(script.RESULTS)]) == 2
    assert "not published" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert script.main([]) == 2 and "needs an NVIDIA GPU" in capsys.readouterr().err
