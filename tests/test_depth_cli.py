"""`prunefx depth`: one-shot depth pruning from the command line, and the depth-kd recipe."""

import importlib
import json

import pytest
import torch
import yaml

from prunefx.cli import EXIT_USER_ERROR, main
from prunefx.data import fashion_mnist
from prunefx.graph import Program
from prunefx.passes.core.contract import graph_pass

pytestmark = pytest.mark.usefixtures("one_thread")
needs_fashion_mnist = pytest.mark.skipif(not fashion_mnist.DEFAULT_ROOT.is_dir(),
                                         reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist")


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_shows_the_candidate_blocks(capsys):
    code, out, err = run_cli(capsys, "depth", "prunefx:mobilenetv2_small", "--list")
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.startswith("blocks.2 ") and "residual" in line and "2 activation(s)" in line for line in lines)
    assert sum("residual" in line for line in lines) == 7


@pytest.mark.slow
def test_named_blocks_are_merged_and_written_with_a_report(capsys, tmp_path, schema_errors):
    # --no-measure: merges wherever the MACs go down, so the outcome does not hang on the timing of a
    # loaded machine (a merge measured slower is refused, by design; tests/test_merge_blocks.py covers that)
    code, out, err = run_cli(capsys, "depth", "prunefx:mobilenetv2_small", "--block", "blocks.2",
                             "--block", "blocks.4", "--no-measure", "-o", tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert not schema_errors(report) and report["route"] is None and report["importance"] is None
    assert report["linearize_blocks"]["chosen"] == ["blocks.2", "blocks.4"]
    assert report["macs_after"] < report["macs_before"]
    assert any(merge["kind"] == "residual" for merge in report["merge_blocks"]["merges"])
    assert report["parity"]["relative"] < 1e-4
    saved = Program.load(tmp_path / "model.pt2")
    assert not [n for n in saved.graph.nodes if n.target is torch.ops.aten.batch_norm.default
                and n.meta.get("nn_module_stack") and "blocks.2" in str(n.meta["nn_module_stack"])]
    assert (tmp_path / "model.onnx").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.zoo  # heavy end-to-end: `make test-zoo` (keeps `make test` within 20 minutes)
@needs_fashion_mnist
def test_blocks_by_count_read_calibration_data_and_recalibrate(capsys, tmp_path):
    # --no-measure: a merge measured slower on a loaded machine is refused by design, and two must be chosen
    code, out, err = run_cli(capsys, "depth", "prunefx:mobilenetv2_small", "--input-shape", "32x1x28x28",
                             "--blocks", "2", "--calibrate", "fashion-mnist", "--calibration-images", "64",
                             "--recalibrate", "--no-measure", "-o", tmp_path)
    assert code == 0, err
    stats = json.loads((tmp_path / "report.json").read_text())["linearize_blocks"]
    assert len(stats["chosen"]) == 2 and stats["batch_norms_recalibrated"] >= 4
    assert all(c["macs_saved"] > 0 for c in stats["candidates"] if c["name"] in stats["chosen"])


@pytest.mark.parametrize("argv, message", [
    (["--blocks", "2"], "give --calibrate"),
    (["--block", "nope"], "no block named"),
    (["--block", "blocks.2", "--recalibrate"], "--recalibrate needs --calibrate"),
    (["--block", "blocks.2", "--batch", "4"], "--batch 4: what is timed is cut from the batch prunefx:mobilenetv2_small "
                                             "is captured at (1)"),
    (["--blocks", "0", "--calibrate", "fashion-mnist"], "--blocks"),  # counts are >= 1 (errors.md)
])
def test_bad_requests_are_one_line_errors(capsys, tmp_path, argv, message):
    code, out, err = run_cli(capsys, "depth", "prunefx:mobilenetv2_small", *argv, "-o", tmp_path)
    assert code == EXIT_USER_ERROR and message in err and "Traceback" not in err


def test_a_named_block_whose_merge_saves_no_macs_is_refused_and_list_says_so(capsys, tmp_path):
    """ResNet-20's residual blocks hold two 3x3 convolutions of 16 channels: merged, one 5x5, 25 C^2 MACs a pixel
    against their 18 C^2, so linearising one loses its activations for nothing; MobileNetV2's pointwise blocks merge
    into fewer."""
    code, out, err = run_cli(capsys, "depth", "prunefx:resnet20", "--block", "stages.0.0", "--no-measure",
                             "-o", tmp_path / "out")
    assert code == EXIT_USER_ERROR and "--block stages.0.0 would merge into no fewer MACs" in err
    assert not (tmp_path / "out").exists()
    code, out, _ = run_cli(capsys, "depth", "prunefx:resnet20", "--list")
    line = next(line for line in out.splitlines() if line.startswith("stages.0.0 "))
    assert code == 0 and "(merges into no fewer MACs at --max-kernel-growth 1)" in line
    code, out, _ = run_cli(capsys, "depth", "prunefx:mobilenetv2_small", "--list")
    assert "no fewer MACs" not in next(line for line in out.splitlines() if line.startswith("blocks.2 "))


def test_a_named_block_that_cannot_merge_is_refused_with_its_reason_and_nothing_written(capsys, tmp_path):
    # mobilenet_v3's features.1 is gated by squeeze-excitation: linearised, it would lose its activations and
    # merge into nothing (`--list` says so; the oracle is find_blocks' own verdict, checked by the pass tests)
    code, out, err = run_cli(capsys, "depth", "torchvision:mobilenet_v3_small", "--input-shape", "1x3x64x64",
                             "--block", "features.1", "--no-measure", "-o", tmp_path / "out")
    assert code == EXIT_USER_ERROR and "--block features.1 cannot be merged once linearised" in err
    assert "mul.Tensor" in err and not (tmp_path / "out").exists()


def test_a_named_block_with_layer_norms_needs_data_for_the_batch_norms_they_become(capsys, tmp_path):
    """Without --calibrate the batch norms made of ConvNeXt's layer norms kept mean 0 and variance 1, said only in
    report.json; the oracle is the block's own layer norms as find_blocks lists them."""
    code, out, err = run_cli(capsys, "depth", "timm:convnext_atto", "--input-shape", "1x3x64x64",
                             "--block", "stages.0.blocks.0", "--no-measure", "-o", tmp_path / "out")
    assert code == EXIT_USER_ERROR and "turns 1 layer norm(s) into batch norms" in err and "--calibrate" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.zoo  # heavy end-to-end: `make test-zoo` (keeps `make test` within 20 minutes)
@needs_fashion_mnist
def test_compress_with_progressive_depth_pruning_ends_merged(capsys, tmp_path):
    """linearize_blocks (blends) -> distill (raises them to 1) -> merge_blocks (strips and folds)."""
    recipe = tmp_path / "depth.yaml"
    recipe.write_text(yaml.safe_dump({"name": "depth", "passes": [
        {"linearize_blocks": {"count": 2, "ramp": 0.5}}, {"distill": {"steps": 4, "lr": 0.01}},
        # Every merge is kept whatever its timing: on a loaded machine a merge can time slower by noise.
        {"merge_blocks": {"min_speedup": 0.01}}]}))
    code, out, err = run_cli(capsys, "compress", "prunefx:mobilenetv2_small", "--recipe", recipe, "--data",
                             "fashion-mnist", "-o", tmp_path / "out", "--batch-size", 16, "--eval-batches", 1,
                             "--runs", 3, "--threads", 1)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    linearize, _, merge = (step["stats"] for step in report["passes"])
    assert report["passes"][0]["injected"] == ["calibration"] and len(linearize["chosen"]) == 2
    assert len(merge["blends_stripped"]) == 2 and merge["merges"]
    assert report["macs_after"] < report["macs_before"] and report["parity"]["relative"] < 1e-4
    saved = Program.load(tmp_path / "out" / "model.pt2")
    assert torch.ops.aten.lerp.Tensor not in [node.target for node in saved.graph.nodes]


def test_depth_and_prune_report_a_pass_that_breaks_exactness_by_name(tmp_path, capsys, monkeypatch):
    """Both commands run a verified Pipeline: a merge that is not exact (simulated by perturbing the
    merged weights) is caught and named, and nothing is written."""
    import importlib

    merge_module = importlib.import_module("prunefx.passes.merge_blocks")
    real = merge_module.merge_blocks

    @graph_pass(config=None, in_place=True, exact=True, writes=("linearize",))
    def inexact_merge(program, /, *, config=None):
        result = real(program, config=config)
        with torch.no_grad():
            next(result.program.module.parameters()).add_(1.0)
        return result

    monkeypatch.setattr(importlib.import_module("prunefx.cli.commands.depth"), "merge_blocks", inexact_merge)
    status = main(["depth", "torchvision:mobilenet_v2", "--input-shape", "1x3x64x64", "--block", "features.2",
                   "--no-measure", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and "pass 'inexact_merge' failed: promised an exact rewrite" in err
    assert "passes that ran before it: linearize_blocks" in err
    assert not (tmp_path / "out").exists()


def test_prune_reports_a_pass_that_breaks_the_program_by_name(tmp_path, capsys, monkeypatch):
    import importlib

    prune_command = importlib.import_module("prunefx.cli.commands.prune")

    def shrinking_remove_channels(program, /, *, config=None):
        output = next(n for n in program.graph.nodes if n.op == "output")
        with program.graph.inserting_before(output):
            narrowed = program.graph.call_function(torch.ops.aten.slice.Tensor, (output.args[0][0], 1, 0, 5))
        output.args = ((narrowed,),)
        program.recompile()
        from prunefx.passes import Result
        return Result(program, modified=True, stats={})

    monkeypatch.setattr(prune_command, "remove_channels", shrinking_remove_channels)
    status = main(["prune", "prunefx:resnet20", "--input-shape", "1x1x28x28", "--macs", "0.5",
                   "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and "pass 'shrinking_remove_channels' failed" in err and "output shapes" in err
    assert not (tmp_path / "out").exists()


def test_blocks_whose_merge_measures_slower_are_refused_not_written_linearised(capsys, tmp_path, monkeypatch):
    """Without a merge, a linearised block is only less accurate: refused, naming the blocks and what to do."""
    options = importlib.import_module("prunefx.cli.options")
    monkeypatch.setattr(options, "pass_measure", lambda args: lambda before, after: 0.97)  # every merge slower
    code, out, err = run_cli(capsys, "depth", "prunefx:mobilenetv2_small", "--block", "blocks.2", "-o", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "merging block(s) blocks.2 measured no faster on ort" in err and "--no-measure" in err
    assert not (tmp_path / "o").exists()


_CHAIN = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    # a 3x3 conv, its batch norm, a ReLU, an unpadded 3x3 conv: linearised, the two merge into one 5x5 (growth 5/3)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.Conv2d(64, 16, 3, padding=0, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
"""


@needs_fashion_mnist
def test_blocks_by_count_choose_among_the_merges_max_kernel_growth_allows(capsys, tmp_path):
    """--blocks K ranked its blocks at growth 1 whatever --max-kernel-growth said: the one block that merges only
    with growth 5/3 was refused, where naming it merged it."""
    (tmp_path / "chain.py").write_text(_CHAIN)
    code, out, err = run_cli(capsys, "depth", f"{tmp_path / 'chain.py'}:build", "--input-shape", "1x1x28x28",
                             "--blocks", "1", "--max-kernel-growth", "2", "--calibrate", "fashion-mnist",
                             "--calibration-images", "8", "--no-measure", "-o", tmp_path / "out")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["linearize_blocks"]["chosen"]) == 1 and report["macs_after"] < report["macs_before"]
