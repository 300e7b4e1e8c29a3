"""Every command that writes report.json writes the shape published in docs/reference/report.schema.json
(built by prunefx/reports/report_json.py): prune by a budget met by depth and by width and depth together, and
compress with a budget pass, each on a tiny model; prune's MACs target and budget met by width, compress without
a budget, depth's, quantize's and the demo's reports are checked where their own tests run them (the
`schema_errors` fixture). Budgets are measured by a stand-in runtime (the MACs plus a fixed cost per operator),
as in test_budget_route.py, so the route each takes is known and no test waits on real timing."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from jsonschema import Draft202012Validator

from prunefx.cli import main
from prunefx.data import fashion_mnist
from prunefx.graph import capture, count
from prunefx.graph.depth.blocks import find_blocks
from prunefx.models import build_model
from prunefx.reports.report_facts import COMMANDS, Costs, ReportFacts
from prunefx.reports.report_json import SCHEMA_VERSION, report_json

pytestmark = pytest.mark.usefixtures("one_thread")
needs_fashion_mnist = pytest.mark.skipif(not fashion_mnist.DEFAULT_ROOT.is_dir(), reason="Fashion-MNIST missing")
SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "reference" / "report.schema.json").read_text())
SMALL = ["prunefx:mobilenetv2_small", "--input-shape", "2x1x28x28"]
CALIBRATE = ["--calibrate", "fashion-mnist", "--calibration-images", "4"]


class PerOperator:
    """A Measurer whose latency is the MACs plus a fixed cost per operator: width alone tops out near 1.4x
    on the small MobileNetV2, merging blocks reaches about 3x (test_budget_route.py)."""

    round_to = None

    def __call__(self, dense, candidate):
        return self.ms(dense), self.ms(candidate), 0.0

    def confirm(self, dense, candidate):
        return self(dense, candidate)

    @staticmethod
    def ms(program) -> float:
        return count(program).macs / 1e7 + 0.05 * sum(node.op == "call_function" for node in program.graph.nodes)


@pytest.fixture
def stand_in(monkeypatch):
    """The stand-in runtime for every budget (prune's, depth's and a compress recipe's), and the mergeable
    blocks in graph order in place of their damage ranking (tested in test_linearize_blocks.py)."""
    monkeypatch.setattr(importlib.import_module("prunefx.cli.options"), "budget_latency", lambda args: PerOperator())
    monkeypatch.setattr(importlib.import_module("prunefx.runtime.measure.pairs").Measurement, "pair",
                        lambda self: PerOperator())
    torch.manual_seed(0)
    program = capture(build_model("prunefx:mobilenetv2_small").module.eval(), torch.randn(2, 1, 28, 28))
    blocks = [block for block in find_blocks(program.module) if block.affine]
    for module in ("prunefx.passes.depth_to_budget", "prunefx.passes.budget.candidates"):
        monkeypatch.setattr(importlib.import_module(module), "ranked_blocks", lambda *args, **kwargs: (blocks, {}))


def written(capsys, folder: Path, *argv) -> dict:
    """Run one command; its report.json, checked against the published schema."""
    code = main([str(arg) for arg in (*argv, "-o", folder)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((folder / "report.json").read_text())
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
              for error in Draft202012Validator(SCHEMA).iter_errors(report)]
    assert not errors, errors
    assert report["schema_version"] == SCHEMA_VERSION and report["command"] == argv[0]
    assert all(Path(path).is_file() for path in report["files"].values()), report["files"]
    return report


def prune_argv(*budget) -> list:
    return ["prune", *SMALL, *CALIBRATE, "--importance", "l2", "--no-compensate", "--max-candidates", "1", *budget]


@pytest.mark.slow
@needs_fashion_mnist
def test_prune_writes_one_shape_whichever_route_met_the_budget(stand_in, capsys, tmp_path):
    """The width route's report is checked in test_budget_route.py's run of it, the MACs target's in test_cli.py's."""
    routes = {"depth": ["--speedup", "2", "--allow-depth"],
              "width+depth": ["--speedup", "2.5", "--tolerance", "0.02", "--allow-depth", "--max-candidates", "4"]}
    reports = {route: written(capsys, tmp_path / route.replace("+", "_"), *prune_argv(*argv))
               for route, argv in routes.items()}
    for route in ("depth", "width+depth"):
        assert reports[route]["route"]["taken"] == route and reports[route]["budget"]["met"]
    assert reports["depth"]["groups"] is None and reports["depth"]["merge_blocks"]
    assert set(reports["width+depth"]["route"]) == {"taken", "width", "depth"}
    assert len({tuple(report) for report in reports.values()}) == 1  # the same keys, in the same order


@pytest.mark.slow
@needs_fashion_mnist
def test_compress_writes_the_shape_with_a_budget(stand_in, capsys, tmp_path):
    """Without one: test_compress.py's full report."""
    recipe = tmp_path / "budget.yaml"
    recipe.write_text(yaml.safe_dump({"name": "budget", "passes": [
        {"choose_for_budget": {"speedup": 1.2, "tolerance": 0.5, "dimensions": ["width"], "max_candidates": 1}}]}))
    report = written(capsys, tmp_path / "budget", "compress", "prunefx:resnet20", "--recipe", recipe, "--data",
                     "fashion-mnist", "--batch-size", 16, "--eval-batches", 1, "--runs", 3, "--threads", 1)
    assert report["budget"]["met"] and report["budget"]["backend"] == "ort" and report["latency"]["speedup"] > 0
    assert report["budget"]["batch"] == 1  # docs/backends.md: recorded next to the backend and the precision


def test_the_schema_is_valid_and_the_builder_keeps_common_keys_common():
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert set(SCHEMA["properties"]["command"]["enum"]) == set(COMMANDS)
    facts = ReportFacts("quantize", "m", Costs(2, 1, 2, 2), {}, sections={"latency": 1.0})
    with pytest.raises(ValueError, match="common keys as its own: latency"):
        report_json(facts)
    with pytest.raises(ValueError, match="unknown command 'bench'"):
        ReportFacts("bench", "m", Costs(2, 1, 2, 2), {})
