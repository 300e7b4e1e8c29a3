"""Depth pruning, first half: block discovery, progressive linearisation, its schedule and block choice."""

import importlib

import pytest
import torch

from prunefx.graph import Program, PrunefxError, capture, count
from prunefx.graph.activations import run_tapped, tap_nodes
from prunefx.graph.depth.blocks import find_blocks, is_constant
from prunefx.graph.depth.linearization import set_blends, strip_finished_blends
from prunefx.models import build_model
from prunefx.passes.distill import distill
from prunefx.passes.linearize_blocks import linearize_blocks, mergeable_blocks
from prunefx.passes.merge_blocks import merge_blocks

aten = torch.ops.aten
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    spec = build_model("torchvision:mobilenet_v2")
    return capture(spec.module.eval(), torch.randn(2, 3, 64, 64), name="mobilenet_v2").eval()


def _targets(program: Program) -> list:
    return [node.target for node in program.graph.nodes if node.op == "call_function"]


def test_mobilenet_v2_blocks_are_its_inverted_residuals(mobilenet):
    blocks = {block.name: block for block in find_blocks(mobilenet.module)}
    assert list(blocks) == [f"features.{i}" for i in range(19)]
    residual = {name for name, block in blocks.items() if block.kind == "residual"}
    assert residual == {f"features.{i}" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)}
    assert all(len(blocks[name].activations) == 2 for name in residual)
    assert all(block.affine for block in blocks.values())


def test_vit_mlp_halves_are_affine_blocks_with_a_layer_norm_and_attention_is_not_a_block():
    torch.manual_seed(0)
    spec = build_model("timm:deit_tiny_patch16_224", image_size=64)
    program = capture(spec.module.eval(), torch.randn(1, 3, 64, 64))
    blocks = find_blocks(program.module)
    assert [block.name for block in blocks] == [f"blocks.{i}" for i in range(12)]
    assert all(block.affine and len(block.layer_norms) == 1 and len(block.activations) == 1 for block in blocks)


def test_a_squeeze_excitation_gate_makes_a_block_non_affine_and_says_which_operator():
    spec = build_model("torchvision:mobilenet_v3_small")
    program = capture(spec.module.eval(), torch.randn(1, 3, 64, 64))
    gated = [block for block in find_blocks(program.module) if not block.affine]
    assert gated, "mobilenet_v3 blocks with squeeze-excitation must not be affine"
    assert all("mul" in block.reason and block.reason.startswith("not affine") for block in gated)


class _SkipFromFarBack(torch.nn.Module):
    """x1 = relu(conv1(x)); out = x1 + conv3(relu(conv2(x1))) + x: the add over x1 has a second entry."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = (torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))

    def forward(self, x):
        x1 = torch.relu(self.conv1(x))
        inner = self.conv3(torch.relu(self.conv2(x1)))
        return (x1 + inner) * 1.0 + x


def test_regions_are_closed_and_every_activation_lands_in_one_block():
    program = capture(_SkipFromFarBack().eval(), torch.randn(1, 4, 8, 8))
    blocks = find_blocks(program.module)
    activations = [name for block in blocks for name in block.activations]
    assert sorted(activations) == sorted(n.name for n in program.graph.nodes if n.target is aten.relu.default)
    residual = [block for block in blocks if block.kind == "residual"]
    assert [block.activations for block in residual] == [["relu_1"]]  # x1 -> add: one closed region


@pytest.mark.slow
def test_progressive_blend_is_exact_at_both_ends_and_strips_to_the_abrupt_form(mobilenet, tmp_path):
    x = torch.randn(2, 3, 64, 64)
    dense = mobilenet(x)
    names = ["features.3", "features.4"]
    blended = linearize_blocks(mobilenet.clone(), config={"blocks": names}).program
    assert torch.equal(blended(x), dense)  # l = 0: (1 - 0) * act(x) + 0 * x
    abrupt = linearize_blocks(mobilenet.clone(), config={"blocks": names, "mode": "abrupt"}).program
    assert _targets(abrupt).count(aten.hardtanh_.default) == _targets(mobilenet).count(aten.hardtanh_.default) - 4
    reloaded = Program.load(blended.save(tmp_path / "blended.pt2"))
    assert set(reloaded.analysis.linearize.blends.values()) == set(names)
    set_blends(reloaded.module, reloaded.analysis.linearize.blends, 1.0)
    torch.testing.assert_close(reloaded(x), abrupt(x), rtol=1e-5, atol=1e-5)
    assert len(strip_finished_blends(reloaded)) == 2
    assert aten.lerp.Tensor not in _targets(reloaded)
    assert not [name for name, _ in reloaded.module.named_buffers() if name.startswith("linearize_")]
    torch.testing.assert_close(reloaded(x), abrupt(x), rtol=1e-5, atol=1e-5)
    reloaded.export()


def test_a_second_progressive_call_takes_the_first_calls_ramp(mobilenet):
    """One schedule raises every blend of a Program: another ramp would move the first call's blends too."""
    blended = linearize_blocks(mobilenet.clone(), config={"blocks": ["features.3"], "ramp": 0.2}).program
    with pytest.raises(PrunefxError, match="ramp over 0.2 of the steps; a second progressive call takes the same"):
        linearize_blocks(blended, config={"blocks": ["features.4"], "ramp": 0.9})
    both = linearize_blocks(blended, config={"blocks": ["features.4"], "ramp": 0.2}).program
    assert set(both.analysis.linearize.blends.values()) == {"features.3", "features.4"}


def test_a_half_blend_of_an_in_place_activation_reads_the_input_before_the_activation():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU6(inplace=True), torch.nn.Conv2d(4, 4, 1),
                                torch.nn.ReLU6(inplace=True)).eval()
    x = torch.randn(1, 3, 4, 4) * 10
    program = capture(model, x)
    names = [block.name for block in find_blocks(program.module)]
    blended = linearize_blocks(program, config={"blocks": names}).program
    set_blends(blended.module, blended.analysis.linearize.blends, 0.5)
    h = model[0](x)
    h = model[2](0.5 * h.clamp(0, 6) + 0.5 * h)
    torch.testing.assert_close(blended(x), 0.5 * h.clamp(0, 6) + 0.5 * h)


@pytest.mark.slow
@pytest.mark.parametrize("rank", ["damage", "damage_per_mac"])
def test_count_takes_the_least_damaging_blocks(mobilenet, rank):
    batches = [torch.randn(2, 3, 64, 64) for _ in range(2)]
    stats = linearize_blocks(mobilenet.clone(), config={"count": 4, "calibration": batches, "rank": rank,
                                                        "progress": False}).stats
    damage = {c["name"]: c["damage"] for c in stats["candidates"] if "damage" in c}
    saved = {c["name"]: c["macs_saved"] for c in stats["candidates"]}
    assert len(stats["chosen"]) == 4 and set(damage) == {name for name, gain in saved.items() if gain > 0}
    assert saved["features.3"] > 0 and saved["features.0"] == 0  # an inverted residual merges, the stem does not
    score = {name: damage[name] / (saved[name] if rank == "damage_per_mac" else 1) for name in damage}
    assert max(score[name] for name in stats["chosen"]) <= min(v for n, v in score.items() if n not in stats["chosen"])


def test_distill_raises_blends_to_exactly_one_over_the_ramp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))
    program = capture(model.eval(), torch.randn(4, 1, 8, 8))
    (block,) = find_blocks(program.module)
    program = linearize_blocks(program, config={"blocks": [block.name], "ramp": 0.5}).program
    (buffer,) = program.analysis.linearize.blends
    seen = []
    data = [(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))) for _ in range(8)]
    hook = lambda trainer, step: seen.append(float(trainer.program.module.get_buffer(buffer)))  # noqa: E731
    trained = distill(program, config={"data": data, "steps": 8, "kd_weight": 0.0, "progress": False,
                                       "after_step": [hook]}).program
    assert seen == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert strip_finished_blends(trained) == [buffer]
    assert aten.relu.default not in _targets(trained)


@pytest.mark.parametrize("config, message", [
    ({}, "exactly one of"),
    ({"blocks": ["features.99"]}, "no block named"),
    ({"count": 2}, "needs 'calibration'"),
    ({"count": 2, "mode": "sudden"}, "'mode' must be one of"),
    ({"blocks": ["features.3"], "ramp": 0}, "ramp"),
])
def test_bad_configurations_are_refused_with_a_reason(mobilenet, config, message):
    with pytest.raises(PrunefxError, match=message):
        linearize_blocks(mobilenet.clone(), config=config)


def test_a_count_no_block_can_meet_names_why_the_blocks_cannot_merge():
    spec = build_model("torchvision:mobilenet_v3_small")
    program = capture(spec.module.eval(), torch.randn(1, 3, 64, 64))
    gated = [block for block in find_blocks(program.module) if not block.affine]
    with pytest.raises(PrunefxError) as refused:
        linearize_blocks(program, config={"count": 100, "calibration": [torch.randn(1, 3, 64, 64)]})
    message = str(refused.value)
    assert f"; {len(gated)} of " in message and "cannot merge (not affine: " in message


def test_vit_layer_norm_becomes_a_batch_norm_calibrated_on_the_data():
    torch.manual_seed(0)
    spec = build_model("timm:deit_tiny_patch16_224", image_size=64)
    x = torch.randn(2, 3, 64, 64)
    program = capture(spec.module.eval(), x)
    result = linearize_blocks(program, config={"blocks": ["blocks.3"], "mode": "abrupt", "calibration": [x]})
    assert result.stats["layer_norms_replaced"] == 1 and result.stats["calibrated"]
    (norm,) = [n for n in result.program.graph.nodes if n.target is aten.batch_norm.default]
    gamma, beta = (result.program.module.get_parameter(arg.target) for arg in norm.args[1:3])
    (normalised,) = run_tapped(tap_nodes(result.program.module, [norm.name]), (x,))
    centred = (normalised.reshape(-1, gamma.numel()) - beta) / gamma  # calibrated on x itself: mean 0
    torch.testing.assert_close(centred.mean(0), torch.zeros_like(beta), atol=1e-3, rtol=0)
    result.program.export()


@pytest.mark.slow
@pytest.mark.zoo  # heavy end-to-end: `make test-zoo` (keeps `make test` within 20 minutes)
def test_a_speedup_target_takes_the_shortest_run_of_the_ranking_that_reaches_it(mobilenet):
    """A deterministic stand-in for a runtime measurement: the MACs ratio of the merged networks."""
    calls = []

    def macs_ratio(before, after):
        calls.append(after)
        return count(before).macs / count(after).macs

    batches = [torch.randn(2, 3, 64, 64)]
    stats = linearize_blocks(mobilenet.clone(), config={"speedup": 1.08, "measure": macs_ratio,
                                                        "calibration": batches, "progress": False}).stats
    measured = [c["measured_speedup_with_previous"] for c in stats["candidates"] if "measured_speedup_with_previous" in c]
    assert len(measured) == len(stats["chosen"]) == len(calls) >= 2
    assert max(measured) >= 1.08 > sorted(measured)[-2]
    with pytest.raises(PrunefxError, match="needs 'measure'"):
        linearize_blocks(mobilenet.clone(), config={"speedup": 1.2, "calibration": batches})


def test_constancy_is_decided_on_graphs_deeper_than_the_recursion_limit():
    """Whether an input is constant must be decided without recursing down its whole ancestry: a graph as
    deep as EfficientNet-B1's would raise RecursionError. A chain of 3000 operators each way: an activation's
    end is not constant, a parameter's (a layer scale reshaped 3000 times) is."""
    graph = torch.fx.Graph()
    activation, scale = graph.placeholder("x"), graph.get_attr("scale")
    for _ in range(3000):
        activation, scale = graph.call_function(torch.relu, (activation,)), graph.call_function(torch.neg, (scale,))
    assert not is_constant(activation) and is_constant(scale)
    assert not is_constant(graph.call_function(torch.mul, (scale, activation)))


def test_merge_gains_equal_merging_from_scratch_and_merge_the_dense_network_once(mobilenet, monkeypatch):
    import importlib
    module = importlib.import_module("prunefx.passes.linearize_blocks")
    merging = importlib.import_module("prunefx.passes.merge_blocks")
    blocks = [block for block in find_blocks(mobilenet.module) if block.affine]
    baseline = count(module._linearized_and_merged(mobilenet, [])).macs
    from_scratch = {block.name: baseline - count(module._linearized_and_merged(mobilenet, [block])).macs
                    for block in blocks}
    dense_merges = len(merge_blocks(mobilenet.clone(), config={}).stats["merges"])
    applied = []
    monkeypatch.setattr(merging, "apply_merge", lambda module, candidate, real=merging.apply_merge: (
        applied.append(candidate.kind), real(module, candidate))[1])
    assert module._merge_gains(mobilenet, blocks, 1.0, "batch_norm") == from_scratch
    assert sum(gain > 0 for gain in from_scratch.values()) >= 15
    # the dense network's batch-norm folds are made once, not once per block
    assert dense_merges > 40 and len(applied) < dense_merges + 4 * len(blocks)


class _ResidualNorm(torch.nn.Module):
    def __init__(self, channels, norm):
        super().__init__()
        self.c1, self.norm, self.c2 = torch.nn.Conv2d(channels, channels, 1), norm, torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x + self.c2(torch.relu(self.norm(self.c1(x))))


class _ChannelNorm(torch.nn.LayerNorm):  # timm's LayerNorm2d: over the channels only
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_a_layer_norm_over_more_than_the_channels_keeps_its_block_unmergeable_and_the_others_choosable():
    """A layer norm over [C, H, W] cannot become a batch norm: its block is not affine, the other block is still
    counted, and naming both replaces only the norm that can be replaced (it raised half-way, the Program
    half-rewritten)."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    model = torch.nn.Sequential(_ResidualNorm(8, _ChannelNorm(8)), _ResidualNorm(8, torch.nn.LayerNorm([8, 6, 6])))
    program = capture(model.eval(), x).eval()
    blocks = {block.name: block for block in find_blocks(program.module)}
    assert blocks["0"].affine and not blocks["1"].affine and "normalises over [8, 6, 6]" in blocks["1"].reason
    assert [block.name for block in mergeable_blocks(program)] == ["0"]
    assert linearize_blocks(program.clone(), config={"count": 1, "calibration": [x]}).stats["chosen"] == ["0"]
    named = linearize_blocks(program.clone(), config={"blocks": ["0", "1"], "mode": "abrupt", "calibration": [x]})
    assert named.stats["layer_norms_replaced"] == 1 and named.stats["not_mergeable"] == ["1"]
    assert sum(node.target is torch.ops.aten.layer_norm.default for node in named.program.graph.nodes) == 1


class _GrownKernel(torch.nn.Module):
    """Two depthwise 3x3 convolutions: merged, one 5x5 (a kernel side grown by 5/3) with fewer MACs."""

    def __init__(self):
        super().__init__()
        self.stem, self.head = torch.nn.Conv2d(3, 8, 1), torch.nn.Linear(8, 10)
        self.block = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.ReLU(),
                                         torch.nn.Conv2d(8, 8, 3, groups=8))

    def forward(self, x):
        return self.head(torch.relu(self.block(self.stem(x))).mean((2, 3)))


def test_blocks_are_counted_as_merging_with_the_kernel_growth_the_merge_will_allow():
    program = capture(_GrownKernel().eval(), torch.randn(2, 3, 8, 8)).eval()
    assert mergeable_blocks(program) == []  # at growth 1 the 5x5 is refused
    assert [block.name for block in mergeable_blocks(program, max_kernel_growth=2.0)] == ["relu"]


def test_a_speedup_no_choice_of_blocks_reaches_is_said_in_the_stats():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    program = capture(torch.nn.Sequential(_ResidualNorm(8, _ChannelNorm(8))).eval(), x).eval()

    def measure(before, after):
        return count(before).macs / count(after).macs

    result = linearize_blocks(program, config={"speedup": 50.0, "measure": measure, "mode": "abrupt",
                                               "calibration": [x]})
    missed = result.stats["speedup_missed"]
    assert missed["target"] == 50.0 and 1.0 < missed["best_measured"] < 50.0 and result.stats["chosen"] == ["0"]


def test_a_count_beyond_the_mergeable_blocks_is_refused_before_any_block_is_scored(mobilenet, monkeypatch):
    module = importlib.import_module("prunefx.passes.linearize_blocks")
    mergeable = len(mergeable_blocks(mobilenet))
    monkeypatch.setattr(module, "block_damage", lambda *a, **k: pytest.fail("blocks scored before the refusal"))
    batches = [torch.randn(2, 3, 64, 64)]
    with pytest.raises(PrunefxError, match=f"count {mergeable + 1} but only {mergeable} blocks"):
        linearize_blocks(mobilenet.clone(), config={"count": mergeable + 1, "mode": "abrupt", "calibration": batches})


class _PooledResidual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return x + self.second(torch.nn.functional.avg_pool2d(torch.relu(self.first(x)), 3, 1, 1))


def test_a_block_held_back_by_a_linear_operator_is_not_called_non_linear():
    [block] = find_blocks(capture(_PooledResidual().eval(), torch.randn(1, 8, 8, 8)).module)
    assert not block.affine and block.reason == "linear, but not foldable into a convolution: avg_pool2d.default"


class _TwoThreeByThrees(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return x + self.second(torch.relu(self.first(x)))


def test_a_count_no_block_meets_names_the_blocks_whose_merge_would_save_nothing():
    """Two 3x3 convolutions merge into a 5x5: past max_kernel_growth 1, so the block is affine yet saves nothing."""
    program = capture(_TwoThreeByThrees().eval(), torch.randn(1, 8, 8, 8))
    with pytest.raises(PrunefxError, match="1 would merge into no fewer MACs .*max_kernel_growth 1 bounds"):
        linearize_blocks(program, config={"count": 1, "calibration": [torch.randn(1, 8, 8, 8)]})


class _WritesIntoItsActivation(torch.nn.Module):
    """`a = relu(h); a += 1`, with `h` read again after: the add writes into the activation's own output."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        h = self.conv(x)
        a = torch.relu(h)
        a += 1
        return a + h


@pytest.mark.parametrize("out_of_place_exists", [True, False])
def test_an_activation_removed_leaves_its_input_to_its_other_readers(out_of_place_exists, monkeypatch):
    """Removed, the activation is the identity: `(h + 1) + h`, the in-place add no longer writing into `h`: in its
    out-of-place form, or reading a copy where torch had none (as if it had none, here)."""
    import prunefx.graph.depth.linearization as linearization
    from prunefx.graph.depth.linearization import remove_activation

    if not out_of_place_exists:
        monkeypatch.setattr(linearization, "out_of_place", lambda op: None)

    torch.manual_seed(0)
    module = _WritesIntoItsActivation().eval()
    program = capture(module, torch.randn(1, 3, 6, 6), name="writes").eval()
    (relu,) = [node for node in program.graph.nodes if node.target is torch.ops.aten.relu.default]
    assert any(node.target is torch.ops.aten.add_.Tensor or node.target is torch.ops.aten.add_.Scalar
               for node in relu.users)  # captured in place, as written
    remove_activation(program.module, relu)
    program.recompile()
    copies = [node for node in program.graph.nodes if node.target is torch.ops.aten.clone.default]
    assert len(copies) == (0 if out_of_place_exists else 1)
    images = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        h = module.conv(images)
        assert torch.allclose(program.module(images), (h + 1) + h, atol=1e-6)
