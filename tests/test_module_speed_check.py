"""benchmarks/module_speed.py, the check that a written-back module runs as fast as the pruned Program:
its structure check, its verdict and one end-to-end run on a CPU (no timing is judged here)."""

from __future__ import annotations

import json

import pytest
import torch

from prunefx.graph import capture
from prunefx.interop.write_back import to_module
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime.measure.latency import LatencyComparison, LatencyStats

pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPT = "benchmarks/module_speed.py"


def _vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, num_classes=10)
    for block in model.blocks:
        block.attn.fused_attn = True
    return model.eval()


def test_the_structure_check_sees_a_fused_path_switched_off(load_script):
    check = load_script(SCRIPT)
    dense = _vit()
    program = capture(dense, torch.randn(1, 3, 32, 32), name="vit").eval()
    remove_channels(program, config={"macs": 0.5, "heads": "dims", "strict": False})
    module = to_module(program, dense)
    assert check.structure(program, dense, module) == {
        "program_attention_ops": 2, "module_attention_ops": 2, "fused_attn_switched_off": [],
        "operators_only_in_program": {}, "operators_only_in_module": {}, "ok": True}
    module.blocks[1].attn.fused_attn = False  # the slower eager path, which the check must report
    report = check.structure(program, dense, module)
    assert report["fused_attn_switched_off"] == ["blocks.1.attn"] and report["module_attention_ops"] == 1
    assert report["operators_only_in_program"] == {"aten.scaled_dot_product_attention.default": 1}
    assert "aten.softmax.int" in report["operators_only_in_module"] and not report["ok"]


def _comparison(program_ms: float, module_ms: float) -> LatencyComparison:
    def stats(ms):
        return LatencyStats(median_ms=ms, p90_ms=ms, p99_ms=ms, mean_ms=ms, min_ms=ms, runs=1, threads=None)
    return LatencyComparison(a=stats(program_ms), b=stats(module_ms), speedup=program_ms / module_ms)


@pytest.mark.parametrize(("module_ms", "ok"), [(1.02, True), (0.9, True), (1.05, False)])
def test_the_verdict_allows_three_percent(load_script, module_ms, ok):
    verdict = load_script(SCRIPT).verdict(_comparison(1.0, module_ms), 0.03)
    assert verdict["ok"] is ok and verdict["module_slower_by"] == pytest.approx(module_ms - 1.0)


def test_a_cpu_run_reports_structure_and_leaves_its_timing_unjudged(load_script, tmp_path, capsys):
    out = tmp_path / "report.json"
    status = load_script(SCRIPT).main(["--model", "timm:deit_tiny_patch16_224", "--image-size", "32", "--batch", "2",
                                       "--device", "cpu", "--runs", "2", "--heads", "dims", "--out", str(out)])
    report = json.loads(out.read_text())
    assert status == 0 and report["ok"] and json.loads(capsys.readouterr().out) == report
    assert report["structure"]["program_attention_ops"] == report["structure"]["module_attention_ops"] == 12
    assert report["speed"]["judged"] is False and report["macs_kept"] < 0.6


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")


@pytest.mark.gpu
@pytest.mark.timing
@requires_cuda
@pytest.mark.parametrize("heads", ["whole", "dims"])
def test_on_a_gpu_the_written_back_deit_runs_as_fast_as_its_program(load_script, heads, tmp_path):
    """DeiT-S at batch 8, fp16, CUDA-graph replays: the module within 3 % of model.pt2's graph."""
    out = tmp_path / "report.json"
    status = load_script(SCRIPT).main(["--model", "timm:deit_small_patch16_224", "--batch", "8", "--device", "cuda",
                                       "--heads", heads, "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["structure"]["ok"], report["structure"]
    assert status == 0, report["speed"]


def test_when_one_side_cannot_be_captured_both_are_timed_eagerly(load_script, monkeypatch):
    """A CUDA graph against eager calls is not like with like: the pair is sampled as the cuda backend samples
    one then, both eagerly (a stand-in device on the CPU whose capture fails for the module's side)."""
    check = load_script(SCRIPT)
    gpu_speedup = load_script("benchmarks/gpu_speedup.py")
    captured = []

    class RefusesOneCapture(gpu_speedup.CpuStandIn):
        def capture(self, run, iterations=1):
            module = getattr(run, "args", (None,))[0]
            captured.append(module)
            if getattr(module, "refuses_capture", False):  # the module's side holds a host synchronisation, say
                raise RuntimeError("operation not permitted when stream is capturing")
            return run

    from prunefx.runtime.cuda.graph import GpuModel

    eager, switch = [], GpuModel.sample_eagerly
    monkeypatch.setattr(GpuModel, "sample_eagerly", lambda model, reason: (eager.append(model), switch(model, reason)))
    refusing = torch.nn.Linear(8, 8).eval()
    refusing.refuses_capture = True
    comparison = check.gpu_comparison(torch.nn.Linear(8, 8).eval(), refusing, (torch.randn(2, 8),), runs=4,
                                      precision="fp32", device=RefusesOneCapture())
    assert comparison.a.runs == comparison.b.runs == 4 and any(getattr(m, "refuses_capture", 0) for m in captured)
    assert len({id(model) for model in eager}) == 2 and all(model.mode == "eager" for model in eager)
