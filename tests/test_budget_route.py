"""prunefx prune --speedup: width, then depth (prunefx.meet_budget's routes, prunefx/budget/). The budget is measured by a
stand-in runtime whose latency is the MACs plus a fixed cost per operator: channel pruning lowers the first
only, merging blocks both, so width alone tops out near 1.4x on this model while depth reaches about 3x
(an oracle the commands do not see)."""

import importlib
import json

import pytest
import torch

from prunefx.cli import EXIT_USER_ERROR, main
from prunefx.data import fashion_mnist
from prunefx.graph import Program, capture, count
from prunefx.graph.depth.blocks import find_blocks
from prunefx.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
needs_fashion_mnist = pytest.mark.skipif(not fashion_mnist.DEFAULT_ROOT.is_dir(), reason="Fashion-MNIST missing")
MODEL = ["prunefx:mobilenetv2_small", "--input-shape", "2x1x28x28"]


def stand_in_ms(program) -> float:
    operators = sum(node.op == "call_function" for node in program.graph.nodes)
    return count(program).macs / 1e7 + 0.05 * operators


class PerOperator:
    """A Measurer (passes/budget/measurement.py): stand_in_ms for both models; confirmed the same, as a point."""

    round_to = None

    def __call__(self, dense, candidate):
        return stand_in_ms(dense), stand_in_ms(candidate), 0.0

    def confirm(self, dense, candidate):
        return self(dense, candidate)


@pytest.fixture
def stand_in(monkeypatch):
    """The stand-in runtime, and the mergeable blocks in graph order in place of their damage ranking (which
    costs a minute here and is tested in test_linearize_blocks.py)."""
    monkeypatch.setattr(importlib.import_module("prunefx.cli.options"), "budget_latency", lambda args: PerOperator())
    torch.manual_seed(0)
    program = capture(build_model("prunefx:mobilenetv2_small").module.eval(), torch.randn(2, 1, 28, 28))
    blocks = [block for block in find_blocks(program.module) if block.affine]
    for module in ("prunefx.passes.depth_to_budget", "prunefx.passes.budget.candidates"):  # the joint route's too
        monkeypatch.setattr(importlib.import_module(module), "ranked_blocks", lambda *args, **kwargs: (blocks, {}))


def prune(capsys, *arguments):
    code = main(["prune", *MODEL, "--calibrate", "fashion-mnist", "--calibration-images", "4", "--importance", "l2",
                 "--no-compensate", "--max-candidates", "1", *map(str, arguments)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


@pytest.mark.slow
@needs_fashion_mnist
def test_width_alone_out_of_reach_names_the_depth_route_in_one_line(stand_in, capsys, tmp_path):
    code, out, err = prune(capsys, "--speedup", 2, "-o", tmp_path / "never")
    assert code == EXIT_USER_ERROR and len(err) == 1, err
    line = err[0]
    assert "cannot reach a 2x speed-up by width: the best measured was 1." in line
    assert "--allow-depth" in line and "prunefx depth prunefx:mobilenetv2_small --speedup 2" in line
    assert "prunefx compress prunefx:mobilenetv2_small --speedup 2" in line
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
@needs_fashion_mnist
def test_a_budget_width_meets_is_written_from_the_outcome_with_no_refusal(stand_in, capsys, tmp_path, schema_errors):
    code, out, err = prune(capsys, "--speedup", 1.2, "--tolerance", 0.5, "--max-candidates", 4, "-o", tmp_path / "out")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert not schema_errors(report)  # the published shape (tests/test_report_schema.py, the other routes)
    budget = report["budget"]
    assert report["route"] == {"taken": "width"} and budget["met"] and budget["trace"] and "remove_channels" not in budget
    assert (budget["backend"], budget["precision"], budget["budget"]) == ("ort", "fp32", "a 1.2x speed-up")
    # the oracle, on what was written: the stand-in runtime's own ratio is the one reported
    dense = capture(build_model("prunefx:mobilenetv2_small").module.eval(), torch.randn(2, 1, 28, 28))
    delivered = stand_in_ms(dense) / stand_in_ms(Program.load(tmp_path / "out" / "model.pt2"))
    assert delivered >= 1.2 and budget["speedup"] == pytest.approx(delivered)
    assert "budget a 1.2x speed-up met" in out and "taking" not in out


@pytest.mark.slow
@pytest.mark.zoo  # heavy end-to-end: `make test-zoo` (keeps `make test` within 20 minutes)
@needs_fashion_mnist
def test_allow_depth_meets_the_budget_by_merging_blocks(stand_in, capsys, tmp_path):
    code, out, err = prune(capsys, "--speedup", 2, "--allow-depth", "-o", tmp_path / "out")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["route"]["taken"] == "depth" and report["route"]["width"]["speedup"] < 2
    assert report["budget"]["met"] and report["budget"]["blocks"]
    # the oracle, on what was written: the delivered model runs 2x faster on the stand-in runtime
    dense = capture(build_model("prunefx:mobilenetv2_small").module.eval(), torch.randn(2, 1, 28, 28))
    assert stand_in_ms(dense) / stand_in_ms(Program.load(tmp_path / "out" / "model.pt2")) >= 2
    assert "taking the depth route" in out and "budget a 2x speed-up met" in out


@pytest.mark.slow
@needs_fashion_mnist
def test_a_budget_neither_dimension_reaches_gives_both_best_in_one_line(stand_in, capsys, tmp_path):
    code, out, err = prune(capsys, "--speedup", 8, "--allow-depth", "-o", tmp_path / "never")
    assert code == EXIT_USER_ERROR and len(err) == 1, err
    assert "cannot reach a 8x speed-up: width's best was 1." in err[0] and "depth's best 3." in err[0]
    assert "and together (depth aiming at its share of the budget, width at the rest): cannot reach a 8x speed-up with any mix of width, depth" in err[0]
    assert "prunefx compress" in err[0] and not (tmp_path / "never").exists()


@pytest.mark.slow
@needs_fashion_mnist
def test_allow_depth_lands_between_whole_block_steps_with_width_on_top(stand_in, capsys, tmp_path):
    """With a 2 % window, depth's fewest blocks that meet 2.5x overshoot it (a whole block is a coarse
    step); the joint route merges blocks up to just under the budget and width closes the rest, landing
    between the block steps. Not necessarily inside the window: on this model width moves in steps of 8
    channels, and none lands between the window's floor (2.525x) and 2.55x; the search then delivers the
    least pruned candidate that met."""
    code, out, err = prune(capsys, "--speedup", 2.5, "--tolerance", 0.02, "--allow-depth", "--max-candidates", 4,
                           "-o", tmp_path / "out")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    route = report["route"]
    assert route["taken"] == "width+depth" and "overshoot" not in route["width"]["refusal"]
    assert route["depth"]["speedup"] > 2.5 * 1.02, route["depth"]  # depth alone: past the window
    budget = report["budget"]
    assert budget["met"] and budget["blocks"] and budget["macs_fraction"] < 1 and budget["trace"]
    # the oracle, on what was written: the stand-in runtime's own ratio, met and below depth's overshoot
    dense = capture(build_model("prunefx:mobilenetv2_small").module.eval(), torch.randn(2, 1, 28, 28))
    delivered = stand_in_ms(dense) / stand_in_ms(Program.load(tmp_path / "out" / "model.pt2"))
    assert 2.5 <= delivered < route["depth"]["speedup"]
    assert budget["depth_speedup"] < 2.5 and budget["speedup"] == pytest.approx(delivered)
    assert "taking width and depth together" in out and "budget a 2.5x speed-up met" in out


def test_allow_depth_without_data_or_budget_is_refused_before_loading(capsys, tmp_path):
    code = main(["prune", "no-such:model", "--speedup", "2", "--allow-depth", "-o", str(tmp_path / "never")])
    assert code == EXIT_USER_ERROR and "--allow-depth needs --calibrate DATA" in capsys.readouterr().err
    code = main(["prune", "no-such:model", "--macs", "0.5", "--allow-depth", "-o", str(tmp_path / "never")])
    assert code == EXIT_USER_ERROR and "--allow-depth applies to a budget" in capsys.readouterr().err
    code = main(["prune", "no-such:model", "--speedup", "2", "--allow-depth", "--module", "--calibrate", "fashion-mnist",
                 "-o", str(tmp_path / "never")])
    assert code == EXIT_USER_ERROR and "give one of --module and --allow-depth" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_the_refusal_names_depth_only_where_a_block_merges():
    """A block with a ReLU between two convolutions merges once linearised; a GRN-like gate (the input times
    its own norm) never becomes affine, so depth is not offered there."""
    import argparse

    from torch import nn

    from prunefx.cli.prune_budget import width_refusal
    from prunefx.passes.budget.search import BudgetUnreachable, Measured

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            y = self.conv(x)
            return y * torch.linalg.vector_norm(y, dim=1, keepdim=True)

    args = argparse.Namespace(model="m", speedup=2.0, latency_ms=None, calibrate=None)
    width = BudgetUnreachable("cannot reach a 2x speed-up by width: the best measured was 1.50x", dimension="width",
                              best=Measured.of((1.5, 1.0, 0.0)))
    relu = capture(nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1)).eval(), torch.randn(1, 8, 4, 4),
                   name="relu_net")
    gated = capture(Gated().eval(), torch.randn(1, 8, 4, 4), name="gated_net")
    offered = str(width_refusal(width, args, relu))
    assert offered.startswith("cannot reach a 2x speed-up by width: the best measured was 1.50x; width alone cannot")
    assert "depth can merge up to 1 block of relu_net: add --allow-depth" in offered
    assert "prunefx depth m --speedup 2 --calibrate DATA" in offered and "\n" not in offered
    refused = str(width_refusal(width, args, gated))
    assert "no block of gated_net merges or drops (no depth route)" in refused and "--allow-depth" not in refused
    # data the user gave is named back; a timing too noisy to decide did not show that width cannot
    args.calibrate = "imagenet-sample"
    noisy = BudgetUnreachable("...", dimension="width", best=Measured.of((1.5, 1.0, 0.0)), noisy=True)
    offered = str(width_refusal(noisy, args, relu))
    assert "; if a quieter run confirms that width alone cannot, depth can merge up to 1 block of" in offered
    assert "add --allow-depth, or run `prunefx depth m --speedup 2 --calibrate imagenet-sample`" in offered


def test_the_depth_route_offered_counts_the_blocks_whose_merge_saves_macs():
    """ResNet-20's blocks become affine once linearised, but merging none of them saves MACs (a residual around a
    3x3 pair merges into no smaller layer): the depth route drops its residual branches, and says so (it offered to
    merge 10 blocks that linearize_blocks ranks none of)."""
    import argparse

    from prunefx.cli.prune_budget import width_refusal
    from prunefx.graph.depth.branch_drop import droppable_blocks
    from prunefx.models import build_model
    from prunefx.passes.budget.search import BudgetUnreachable, Measured
    from prunefx.passes.linearize_blocks import mergeable_blocks

    program = capture(build_model("prunefx:resnet20").module.eval(), torch.randn(1, 1, 28, 28), name="resnet20")
    args = argparse.Namespace(model="m", speedup=100.0, latency_ms=None, calibrate=None)
    width = BudgetUnreachable("cannot reach a 100x speed-up by width: the best measured was 1.50x", dimension="width",
                              best=Measured.of((1.5, 1.0, 0.0)))
    assert mergeable_blocks(program) == []
    dropped = len(droppable_blocks(program))
    offered = str(width_refusal(width, args, program))
    assert dropped > 0 and f"depth can drop up to {dropped} blocks of resnet20" in offered
