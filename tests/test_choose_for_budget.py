"""choose_for_budget: every mix of width, depth and INT8 searched to the budget, the least damaged kept.

The measuring function is a stand-in runtime the pass does not see into: latency proportional to the MACs
of the network it is given, times INT8_GAIN's inverse when the network holds fake quantizers. With it the
figures each combination must reach are known here, and the damage proxy is recomputed from the returned
Program with numpy. Block ranking costs a minute on this model, so it is replaced by the mergeable blocks
in graph order (the ranking itself is tested in test_linearize_blocks.py)."""

import importlib
import math

import numpy as np
import pytest
import torch

from prunefx.graph import capture, count
from prunefx.graph.depth.blocks import find_blocks
from prunefx.graph.errors import PrunefxError
from prunefx.graph.int8.quantization import has_fake_quant
from prunefx.models import build_model
from prunefx.passes import Pipeline
from prunefx.passes.choose_for_budget import choose_for_budget
from prunefx.passes.core.pipeline import Step

pytestmark = pytest.mark.usefixtures("one_thread")
module = importlib.import_module("prunefx.passes.budget.candidates")  # the search, where the inner searches are made
INT8_GAIN = 1.25   # the stand-in runtime runs INT8 this much faster
BUDGET = 1.6       # INT8 alone misses it; every merged block together gives about 1.38x, so depth alone misses too


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    program = capture(build_model("prunefx:mobilenetv2_small").module.eval(), torch.randn(2, 1, 28, 28),
                      name="mobilenetv2_small").eval()
    batches = [torch.randn(2, 1, 28, 28) for _ in range(2)]
    return program, batches


@pytest.fixture
def graph_order_ranking(mobilenet, monkeypatch):
    blocks = [block for block in find_blocks(mobilenet[0].module) if block.affine]
    monkeypatch.setattr(module, "ranked_blocks", lambda *args, **kwargs: (blocks, {}))
    return mobilenet


def stand_in_ms(program) -> float:
    return count(program).macs / 1e7 / (INT8_GAIN if has_fake_quant(program.graph) else 1.0)


def stand_in_latency(dense, candidate):
    return stand_in_ms(dense), stand_in_ms(candidate), 0.0


def config(batches, **extra):
    return {"speedup": BUDGET, "latency": stand_in_latency, "calibration": batches,
            "width": {"importance": "l2", "round_to": 4}, **extra}


def numpy_kl(dense, candidate, batches) -> float:
    """Mean over images of sum_c p_c (log p_c - log q_c), p the dense model's softmax, q the candidate's."""
    total, rows = 0.0, 0
    for x in batches:
        with torch.no_grad():
            p, q = (torch.softmax(model.module(x).double(), dim=1).numpy() for model in (dense, candidate))
        total += float(np.sum(p * (np.log(p) - np.log(q))))
        rows += p.shape[0]
    return total / rows


@pytest.mark.slow
@pytest.mark.zoo  # heavy end-to-end: `make test-zoo` (keeps `make test` within 20 minutes)
def test_every_combination_is_searched_and_the_least_damaged_that_meets_is_chosen(graph_order_ranking, monkeypatch):
    program, batches = graph_order_ranking
    asked = []  # the speed-up each depth search is given
    original = module.depth_search
    monkeypatch.setattr(module, "depth_search",
                        lambda p, settings: asked.append(settings.speedup) or original(p, settings))
    result = choose_for_budget(program.clone(), config=config(batches))
    # depth alone, depth+int8: the whole budget; beside width: sqrt(S), and sqrt(S / INT8's gain) with INT8
    assert asked == pytest.approx([BUDGET, math.sqrt(BUDGET), BUDGET, math.sqrt(BUDGET / INT8_GAIN)])
    rows = {"+".join(row["dimensions"]): row for row in result.stats["candidates"]}
    assert list(rows) == ["width", "depth", "int8", "width+depth", "width+int8", "depth+int8", "width+depth+int8"]
    assert not rows["int8"]["met"] and rows["int8"]["speedup"] == pytest.approx(INT8_GAIN)
    assert not rows["depth"]["met"] and "cannot reach" in rows["depth"]["failed"]
    met = {name: row for name, row in rows.items() if row["met"]}
    assert set(met) == {"width", "width+depth", "width+int8", "depth+int8", "width+depth+int8"}
    for name, row in met.items():
        assert row["speedup"] >= BUDGET, name
        assert ("blocks" in row) == ("depth" in name) and ("macs_fraction" in row) == ("width" in name)
    assert all(met[name]["blocks"] for name in met if "depth" in name)
    chosen = min(met.values(), key=lambda row: row["proxy"])
    assert result.stats["chosen"] == chosen["dimensions"]
    # the returned Program is what was measured and scored: the stand-in and numpy agree
    assert count(program).macs / 1e7 / stand_in_ms(result.program) == pytest.approx(result.stats["speedup"])
    assert has_fake_quant(result.program.graph) == ("int8" in chosen["dimensions"])
    assert numpy_kl(program, result.program, batches) == pytest.approx(result.stats["proxy"], rel=1e-6)


@pytest.mark.slow
def test_int8_leaves_width_less_to_cut(graph_order_ranking):
    program, batches = graph_order_ranking
    result = choose_for_budget(program.clone(), config=config(batches, dimensions=["width", "int8"]))
    rows = {"+".join(row["dimensions"]): row for row in result.stats["candidates"]}
    # width alone must cut the MACs by the whole budget, beside INT8 by budget / gain only
    assert rows["width"]["macs_kept"] <= 1 / BUDGET
    assert rows["width+int8"]["macs_kept"] > rows["width"]["macs_kept"]
    assert rows["width+int8"]["macs_kept"] <= INT8_GAIN / BUDGET


def test_a_budget_no_combination_reaches_is_one_line_naming_the_best(mobilenet):
    program, batches = mobilenet
    with pytest.raises(PrunefxError) as error:
        choose_for_budget(program.clone(), config=config(batches, speedup=50.0, dimensions=["int8"]))
    message = str(error.value)
    assert "\n" not in message
    # the fastest first, then why the combination failed, as its own search said it
    assert message.startswith("cannot reach a 50x speed-up with any mix of int8: the best measured was 1.25x (int8); "
                              "int8: reached 1.25x")


@pytest.mark.parametrize("bad, said", [
    ({"dimensions": ["width", "colour"]}, "'dimensions' must list some of width, depth, int8"),
    ({"dimensions": []}, "'dimensions' must list some of"),
    ({"width": {"speedup": 3}}, "'speedup' is set on the budget pass, not in 'width'"),
    ({"width": {"start_speedup": 2}}, "'start_speedup' is set on the budget pass, not in 'width'"),  # depth's share
    ({"depth": {"progress": False}}, "'progress' is set on the budget pass, not in 'depth'"),
    ({"width": {"importance": "astrology"}}, "'width': 'importance' must be one of"),
    ({"int8": {"method": "guess"}}, "'int8': 'method' must be one of"),
    ({"latency_ms": 3.0}, "exactly one budget"),
    ({"dimensions": ["width", "depth"], "combinations": [["width", "int8"]]}, "each of 'combinations' must list"),
    ({"combinations": [[]]}, "each of 'combinations' must list"),
    ({"depth_share": 1.5}, "'depth_share' must lie in (0, 1]"),
])
def test_bad_options_fail_before_any_measurement(mobilenet, bad, said):
    program, batches = mobilenet
    calls = []

    def counting(dense, candidate):
        calls.append(1)
        return stand_in_latency(dense, candidate)

    with pytest.raises(PrunefxError, match=said.replace("(", r"\(").replace(")", r"\)")):
        Pipeline([Step(choose_for_budget, config(batches, latency=counting, **bad))]).run(program.clone())
    assert calls == []


def pruned_widths(dense, candidate) -> dict[str, int]:
    """Output channels of every convolution weight whose width the candidate changed, read from the modules."""
    before = {name: p.shape[0] for name, p in dense.module.named_parameters() if p.dim() == 4}
    after = {name: p.shape[0] for name, p in candidate.module.named_parameters() if p.dim() == 4}
    return {name: width for name, width in after.items() if name in before and width != before[name]}


@pytest.mark.slow
def test_with_int8_the_widths_are_kept_on_the_int8_multiple(graph_order_ranking):
    program, batches = graph_order_ranking
    candidates = module.budget_candidates(program, config(batches, dimensions=["width", "int8"], int8_round_to=16))
    found = {"+".join(candidate.dimensions): candidate for candidate in candidates}
    assert found["width+int8"].round_to == 16 and found["width"].round_to == 4
    with_int8 = pruned_widths(program, found["width+int8"].program)
    alone = pruned_widths(program, found["width"].program)
    assert with_int8 and all(width % 16 == 0 for width in with_int8.values())
    assert any(width % 16 for width in alone.values())  # round_to 4 alone: the option made the difference
    assert len(found["width+int8"].width_trace) >= 1


class GatedResidual(torch.nn.Module):
    """x + g(y), y = conv(gelu(conv(x))) through a wider hidden layer (which width can prune), g a GRN-like gate
    (y times its own norm over the channels): never affine, so no block merges, but the residual branch can be
    dropped whole (graph/depth/branch_drop.py)."""

    def __init__(self, channels: int):
        super().__init__()
        self.expand, self.project = torch.nn.Conv2d(channels, 4 * channels, 1), torch.nn.Conv2d(4 * channels, channels, 1)

    def forward(self, x):
        y = self.project(torch.nn.functional.gelu(self.expand(x)))
        return x + y * torch.linalg.vector_norm(y, dim=1, keepdim=True)


def test_width_and_depth_together_drop_branches_where_no_block_merges():
    """ConvNeXtV2-like: depth's share is reached by dropping residual branches (depth_to_budget's own drop
    ranking), then width closes the rest; checked on the stand-in runtime with the model returned."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), *[GatedResidual(16) for _ in range(4)],
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    program = capture(net, torch.randn(2, 1, 12, 12), name="gated").eval()
    batches = [torch.randn(2, 1, 12, 12) for _ in range(2)]
    assert not any(block.affine for block in find_blocks(program.module))  # the premise: nothing merges
    result = choose_for_budget(program.clone(), config=config(
        batches, speedup=2.0, dimensions=["width", "depth"], combinations=[["width", "depth"]]))
    stats = result.stats
    assert [row["dimensions"] for row in stats["candidates"]] == [["width", "depth"]]  # the one mix asked
    chosen = stats["candidates"][0]
    assert chosen["met"] and chosen["blocks"] and chosen["depth_speedup"] < 2.0
    assert stand_in_ms(program) / stand_in_ms(result.program) >= 2.0  # the oracle, on the model returned


def test_when_no_mix_measured_anything_the_one_line_says_why_each_failed():
    """A network with no block at all: depth alone fails before measuring, and the refusal says so instead of
    naming no best."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 10 * 10, 10)).eval()
    program = capture(net, torch.randn(2, 1, 12, 12), name="plain").eval()
    with pytest.raises(PrunefxError) as error:
        choose_for_budget(program, config=config([torch.randn(2, 1, 12, 12)], speedup=2.0, dimensions=["depth"]))
    message = str(error.value)
    assert message.startswith("cannot reach a 2x speed-up with any mix of depth: depth: cannot reach a 2x speed-up")
    assert "no block of plain" in message and "\n" not in message


class NoInt8Measurer:
    """A measurer whose backend runs no INT8 kernels (the cuda backend's pair says so): every program it is
    handed is recorded, so a fake-quantized one would show."""

    int8_refusal, round_to = "this backend runs no INT8 kernels", None

    def __init__(self):
        self.seen = []

    def __call__(self, dense, candidate):
        self.seen.append(candidate)
        return stand_in_latency(dense, candidate)

    confirm = __call__


def test_a_backend_without_int8_kernels_never_measures_an_int8_mix(mobilenet):
    program, batches = mobilenet
    measurer = NoInt8Measurer()
    result = choose_for_budget(program.clone(), config=config(
        batches, speedup=1.3, latency=measurer, dimensions=["width", "int8"]))
    rows = {"+".join(row["dimensions"]): row for row in result.stats["candidates"]}
    assert list(rows) == ["width", "int8", "width+int8"]
    assert rows["int8"]["failed"] == "not measured: this backend runs no INT8 kernels" and not rows["int8"]["met"]
    assert not rows["width+int8"]["met"] and "runs no INT8 kernels" in rows["width+int8"]["failed"]
    assert result.stats["chosen"] == ["width"] and measurer.seen
    assert not any(has_fake_quant(candidate.graph) for candidate in measurer.seen)
    assert not has_fake_quant(result.program.graph)
