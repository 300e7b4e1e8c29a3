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
        for name in ("torch-pruning", "torch-pruning r8"):  # every variant measured: an error row fails
            assert "error" not in row[name] and row[name]["macs_kept"] == pytest.approx(script.MACS, abs=0.05)
    (budget,) = report["budgets"]
    assert ("refused" in budget and len(budget["refused"].splitlines()) == 1) or (
        budget["remeasured"] > 0 and budget["independent"]["speedup"] > 0
        and budget["independent"]["timer"].startswith("torch.utils.benchmark"))
    assert report["machine"]["gpu"].startswith("none") and "gpu_speedup.md" in {p.name for p in tmp_path.iterdir()}


def test_smoke_results_are_never_published_and_a_real_run_needs_a_gpu(capsys):
    script = _script()
    assert script.main(["--smoke", "--out", str(script.RESULTS)]) == 2
    assert "not published" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert script.main([]) == 2 and "needs an NVIDIA GPU" in capsys.readouterr().err


def test_torch_pruning_keeps_attention_heads_whole_on_a_vit():
    """The baseline on a timm ViT: heads keyed by their qkv projection, each head narrowed alike, the module's
    reshape following (it failed with "shape '[1, 197, 3, 3, 64]' is invalid" before)."""
    timm = pytest.importorskip("timm")
    script = _script()
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=10).eval()
    example = torch.randn(1, 3, 32, 32)
    pruned = script.torch_pruning(model, example, 0.5, 8)
    attention = script._attention_modules(pruned)
    assert attention and all(m.num_heads == 3 for m in attention)  # vit_tiny's heads, all kept
    assert all(m.qkv.out_features == 3 * m.num_heads * m.head_dim and m.head_dim < 64 for m in attention)
    assert pruned(example).shape == (1, 10)
