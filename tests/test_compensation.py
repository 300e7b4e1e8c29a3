"""Second-order compensation of removed channels (remove_channels' `compensate`) and batch-norm
recalibration: exact where the algebra says so, better than nothing on a real model, exact statistics."""

import copy
import sys

import numpy as np
import pytest
import torch
from torch import nn

from prunefx.data.fashion_mnist import MEAN, STD, DatasetError, load_fashion_mnist
from prunefx.graph import PrunefxError, capture, verify
from prunefx.graph.activations import run_tapped, tap_nodes
from prunefx.graph.channels.compensation import second_order_update
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.channels.importance import Importance
from prunefx.graph.layer_hessians import gather_hessians
from prunefx.graph.layer_inputs import find_consumers
from prunefx.models import build_model
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import remove_channels

BATCH = 16


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Fashion-MNIST test images, normalised: real images, so activations are correlated as in use."""
    try:
        pixels, _ = load_fashion_mnist("test")
    except DatasetError as error:
        pytest.skip(f"Fashion-MNIST is not installed: {error}")
    return ((pixels[:1024].float() / 255 - MEAN) / STD).unsqueeze(1)


def _batches(images, start, count, labels=False):
    batches = [images[start + i * BATCH:start + (i + 1) * BATCH] for i in range(count)]
    return [(x, torch.zeros(BATCH, dtype=torch.long)) if labels else (x,) for x in batches]


def _resnet20(images):
    torch.manual_seed(0)
    model = build_model("prunefx:resnet20").module.eval()
    return model, capture(copy.deepcopy(model), images[:BATCH]).eval()


def _removing(weight: str, channels: list[int]):
    """An importance callable that scores the output `channels` of `weight` lowest and everything else high."""
    def importance(module, combing):
        labels = next(m.labels for m in combing.analysis.space.members if (m.target, m.dim) == (weight, 0))
        doomed = set(combing.analysis.classes[labels[channels]].tolist())
        scores = [np.array([0.0 if c in doomed else 1.0 + i for i, c in enumerate(g.classes.tolist())])
                  for g in combing.groups]
        return Importance(scores, "test")
    return importance


def _prune(program, weight, channels, width, **options):
    config = {"channels": (width - len(channels)) / width, "round_to": 1, "ranking": "local",
              "importance": _removing(weight, channels), **options}
    return remove_channels(program.clone(), config=config)


# --- exactness ----------------------------------------------------------------------------------------

class DeadChannels(nn.Module):
    """conv -> bn -> relu -> conv; channels 6 and 7 of the first conv produce exact zeros."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 6, 3, padding=1)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            for tensor in (self.conv1.weight, self.conv1.bias, self.bn.bias, self.bn.running_mean):
                tensor[6:] = 0

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


def test_removing_channels_without_signal_is_exact():
    torch.manual_seed(0)
    program = capture(DeadChannels().eval(), torch.randn(4, 3, 8, 8)).eval()
    calibration = [(torch.randn(4, 3, 8, 8),) for _ in range(3)]
    result = _prune(program, "conv1.weight", [6, 7], 8, compensate=True, calibration=calibration)
    (layer,) = result.stats["compensation"]["compensated"]
    assert (layer["weight"], layer["columns_removed"]) == ("conv2.weight", 18)  # 2 channels x 9 taps
    assert layer["error_without"] == layer["error_with"] == 0.0
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(result.program(x), program(x), rtol=1e-5, atol=1e-5)


class Dependent(nn.Module):
    """Layer a's output channel 3 is 1 * channel 1 - 2 * channel 2 (by weight construction) and reaches
    layer b through no non-linearity, so b can read it from channels 1 and 2 instead."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "conv":
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Conv2d(4, 5, 3, padding=1)
        else:
            self.a, self.b = nn.Linear(6, 4, bias=False), nn.Linear(4, 3)
        with torch.no_grad():
            self.a.weight[3] = self.a.weight[1] - 2 * self.a.weight[2]
        self.w = nn.Parameter(torch.randn(4, 3))  # the [in, out] weight of a matmul layer

    def forward(self, x):
        h = self.a(x)
        return h @ self.w if self.kind == "matmul" else self.b(h)


@pytest.mark.parametrize("kind", ["conv", "linear", "matmul"])
def test_removing_a_linear_combination_of_kept_channels_is_exact(kind):
    torch.manual_seed(0)
    shape = (4, 3, 8, 8) if kind == "conv" else (16, 6)
    program = capture(Dependent(kind).eval(), torch.randn(shape)).eval()
    calibration = [(torch.randn(shape),) for _ in range(4)]
    plain = _prune(program, "a.weight", [3], 4).program
    result = _prune(program, "a.weight", [3], 4, compensate=True, calibration=calibration, damping=1e-10)
    assert len(result.stats["compensation"]["compensated"]) == 1
    x = torch.randn(shape)
    torch.testing.assert_close(result.program(x), program(x), rtol=1e-4, atol=1e-4)
    assert (plain(x) - program(x)).abs().max() > 0.1  # without compensation, channel 3 is missed
    verify(result.program)


class Strided(nn.Module):
    def __init__(self, **conv):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 3, bias=False, **conv)

    def forward(self, x):
        return self.b(self.a(x))


@pytest.mark.parametrize("conv", [{"stride": 2, "padding": 1}, {"dilation": 2, "padding": 2},
                                  {"padding": "same", "dilation": 2}, {"stride": (2, 1), "padding": (0, 1)}])
def test_the_unfolded_input_times_the_weight_matrix_is_the_convolution(conv):
    torch.manual_seed(0)
    program = capture(Strided(**conv).eval(), torch.randn(2, 3, 9, 9)).eval()
    combing = find_channel_groups(program.module)
    consumers, _ = find_consumers(program.module, combing.analysis, {int(combing.groups[0].classes[0])})
    (consumer,) = consumers
    layer = next(n for n in program.graph.nodes if n.name == consumer.node)
    x, y = run_tapped(tap_nodes(program.module, [consumer.spec.source, layer.name]), (torch.randn(2, 3, 9, 9),))
    rows = consumer.spec.rows(x) @ consumer.matrix(program.module).float().t()
    torch.testing.assert_close(rows, y.permute(0, 2, 3, 1).reshape(-1, 5), rtol=1e-5, atol=1e-5)


# --- a real model ------------------------------------------------------------------------------------

def test_compensation_lowers_the_layer_output_error_on_held_out_images(images):
    _, program = _resnet20(images)
    module = program.module
    combing = find_channel_groups(module)
    removed = {int(c) for group in combing.groups for c in group.classes[1::2]}  # half of every group
    consumers, skipped = find_consumers(module, combing.analysis, removed)
    assert len(consumers) >= 18 and not skipped
    hessians = gather_hessians(module, list(dict.fromkeys(c.spec for c in consumers)), _batches(images, 0, 8))
    sources = sorted({c.spec.source for c in consumers})
    held_out = run_tapped(tap_nodes(module, sources), (images[512:512 + BATCH],))
    plain_error = compensated_error = 0.0
    for consumer in consumers:
        x = consumer.spec.rows(held_out[sources.index(consumer.spec.source)]).double()
        matrix, removed_columns = consumer.matrix(module), torch.from_numpy(consumer.removed_columns)
        updated, _ = second_order_update(matrix, hessians[consumer.spec][0], consumer.removed_columns, 0.01)
        dense = x @ matrix.t()
        plain = x[:, ~removed_columns] @ matrix[:, ~removed_columns].t()
        compensated = x[:, ~removed_columns] @ updated[:, ~removed_columns].t()
        plain_error += float((plain - dense).square().sum())
        compensated_error += float((compensated - dense).square().sum())
    assert compensated_error < 0.8 * plain_error


def test_the_pass_compensates_every_dense_consumer_and_reports_the_error(images):
    _, program = _resnet20(images)
    result = remove_channels(program.clone(), config={"macs": 0.5, "importance": "l2", "compensate": True,
                                                      "calibration": _batches(images, 0, 4, labels=True)})
    report = result.stats["compensation"]
    assert len(report["compensated"]) >= 18 and report["skipped"] == [] and report["images"] == 4 * BATCH
    assert all(layer["error_with"] <= layer["error_without"] for layer in report["compensated"])
    assert sum(layer["error_with"] for layer in report["compensated"]) < 0.5 * sum(
        layer["error_without"] for layer in report["compensated"])
    verify(result.program)
    assert result.program.output_shapes == program.output_shapes


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.depthwise, self.pointwise = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.pointwise(torch.relu(self.depthwise(torch.relu(self.conv(x)))))


def test_depthwise_consumers_are_skipped_with_the_reason():
    torch.manual_seed(0)
    program = capture(Depthwise().eval(), torch.randn(2, 3, 8, 8)).eval()
    result = _prune(program, "conv.weight", [0, 1], 8, compensate=True)  # calibration: the example inputs
    report = result.stats["compensation"]
    assert [layer["weight"] for layer in report["compensated"]] == ["pointwise.weight"]
    (skipped,) = report["skipped"]
    assert "depthwise" in skipped["reason"]
    verify(result.program)


def test_compensating_a_training_mode_program_leaves_its_statistics_alone():
    torch.manual_seed(0)
    program = capture(DeadChannels().eval(), torch.randn(4, 3, 8, 8)).train()
    before = program.module.get_buffer("bn.running_mean").clone()
    result = _prune(program, "conv1.weight", [6, 7], 8, compensate=True)
    assert result.program.training and result.stats["compensation"]["compensated"]
    torch.testing.assert_close(result.program.module.get_buffer("bn.running_mean"), before[:6], rtol=0, atol=0)


@pytest.mark.parametrize("config, message", [
    ({"compensate": True, "calibration": []}, "no batches"),
    ({"compensate": True, "calibration": [(torch.randn(3, 3, 8, 8),)]}, "calibration batch 0"),
    ({"compensate": "yes"}, "'compensate' must be true or false"),
    ({"compensate": True, "damping": -1.0}, "'damping' must lie in"),
])
def test_bad_compensation_configs_are_refused(config, message):
    program = capture(Depthwise().eval(), torch.randn(2, 3, 8, 8)).eval()
    with pytest.raises(PrunefxError, match=message):
        remove_channels(program, config={"channels": 0.75, **config})


# --- batch-norm recalibration ---------------------------------------------------------------------------

def _direct_statistics(model, name, batches):
    """Mean and unbiased variance of the input of batch norm `name` over all batches, in float64, eagerly."""
    seen = []
    hook = model.get_submodule(name).register_forward_pre_hook(lambda _, args: seen.append(args[0].double()))
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    hook.remove()
    values = torch.cat(seen).transpose(0, 1).reshape(len(seen[0][0]), -1)
    return values.mean(dim=1), values.var(dim=1, unbiased=True)


def test_recalibrated_statistics_equal_those_computed_directly(images):
    model, program = _resnet20(images)
    data = _batches(images, 0, 4, labels=True)
    result = recalibrate_batchnorm(program, config={"data": data})
    assert result.modified and result.stats["recalibrated"] == result.stats["batch_norms"] == 21
    assert result.stats["images"] == 4 * BATCH
    missing, unexpected = model.load_state_dict(result.program.state_dict(), strict=False)
    assert not unexpected and all(name.endswith("num_batches_tracked") for name in missing)
    buffers = dict(result.program.module.named_buffers())
    # the first batch norm, and a late one whose input depends on every batch norm before it
    for name in ("stem.1", "stages.2.2.conv2.1"):
        mean, var = _direct_statistics(model, name, data)
        torch.testing.assert_close(buffers[f"{name}.running_mean"].double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(buffers[f"{name}.running_var"].double(), var, rtol=1e-5, atol=1e-6)
    verify(result.program)
    again = recalibrate_batchnorm(result.program, config={"data": data})
    assert not again.modified and again.stats["changed"] == 0


def test_the_one_pass_walk_and_the_level_passes_set_the_same_statistics(images, monkeypatch):
    """The walk (all batches at once, node by node) and the batch-by-batch level passes, forced by a
    zero memory budget, agree; the walk reads the data once."""
    recalibration = sys.modules["prunefx.passes.recalibrate_batchnorm"]  # the package exports the pass by that name
    _, program = _resnet20(images)
    data = _batches(images, 0, 3)
    walked = recalibrate_batchnorm(program.clone(), config={"data": data})
    monkeypatch.setattr(recalibration, "_WALK_BUDGET", 0)
    levelled = recalibrate_batchnorm(program.clone(), config={"data": data})
    assert walked.stats["passes_over_data"] == 1 < levelled.stats["passes_over_data"]
    expected = levelled.program.state_dict()
    for name, value in walked.program.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-7)


def test_recalibrating_named_batch_norms_counts_all_and_changes_only_those(images):
    _, program = _resnet20(images)
    first = next(node.name for node in program.graph.nodes if "batch_norm" in str(node.target))
    before = program.state_dict()
    result = recalibrate_batchnorm(program.clone(), config={"data": _batches(images, 0, 2), "nodes": [first]})
    assert result.stats["batch_norms"] == 21 and result.stats["recalibrated"] == 1
    changed = {name for name, value in result.program.state_dict().items() if not torch.equal(value, before[name])}
    assert changed and all(name.startswith("stem.1.") for name in changed)


def test_recalibration_reads_max_batches_and_keeps_each_layer_s_mode(images):
    _, program = _resnet20(images)
    data = _batches(images, 0, 4)
    expected = recalibrate_batchnorm(program.clone(), config={"data": data[:2]}).program.state_dict()
    training = program.clone().train()
    first = next(node for node in training.graph.nodes if "batch_norm" in str(node.target))
    first.update_arg(5, False)  # one batch norm frozen, as fine-tuning recipes do: it must stay so
    training.module.recompile()
    modes = training.modes()
    result = recalibrate_batchnorm(training, config={"data": iter(data), "max_batches": 2})
    assert result.program.modes() == modes and result.stats["batches"] == 2
    for name, value in result.program.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


@pytest.mark.parametrize("config, message", [
    ({}, "needs data"),
    ({"data": []}, "no batches"),
    ({"data": [(torch.randn(3, 3, 8, 8),)]}, "batch 0 has input shapes"),
    ({"data": [(torch.randn(4, 3, 8, 8),)], "max_batches": 0}, "max_batches"),
    ({"data": [(torch.randn(4, 3, 8, 8),)], "momentum": 0.1}, "unknown option"),
])
def test_bad_recalibration_configs_are_refused(config, message):
    program = capture(DeadChannels().eval(), torch.randn(4, 3, 8, 8)).eval()
    with pytest.raises(PrunefxError, match=message):
        recalibrate_batchnorm(program, config=config)


@pytest.mark.parametrize(("damping", "rank"), [(0.01, 40), (0.0, 12)])
def test_the_reported_errors_are_the_output_errors_of_the_change(damping, rank):
    """error_without and error_with equal trace(C H C^T) / trace(M H M^T) computed from the whole H for
    the change C (removed columns zeroed, and with the update), also for damping 0 on a rank-deficient
    H (least squares)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rank, 30)) @ rng.standard_normal((30, 30))
    hessian, matrix = torch.from_numpy(x.T @ x), torch.from_numpy(rng.standard_normal((6, 30)))
    removed = np.zeros(30, dtype=bool)
    removed[[2, 5, 6, 17, 29]] = True
    updated, errors = second_order_update(matrix, hessian, removed, damping)
    h, m = hessian.numpy(), matrix.numpy()
    energy = float(np.sum(m @ h * m))
    for new, name in ((m, "error_without"), (updated.numpy(), "error_with")):
        change = new.copy()
        change[:, removed] = 0
        change -= m
        assert errors[name] == pytest.approx(float(np.sum(change @ h * change)) / energy, rel=1e-6, abs=1e-12)
    assert errors["error_with"] < errors["error_without"]


def test_an_update_reads_the_device_a_few_times_whatever_the_width(monkeypatch):
    """On a GPU each read of a value waits for the device's queue: the kept and removed columns come from the
    host's mask (no nonzero of a device mask), and each error is read once: an update reads four values (the
    output energy, the damping, trace(M_R H_RR M_R^T), the error after) and whether its factorisation held."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((80, 40))
    hessian, matrix = torch.from_numpy(x.T @ x), torch.from_numpy(rng.standard_normal((6, 40)))
    removed = np.zeros(40, dtype=bool)
    removed[::3] = True
    reads = []
    for name in ("__float__", "__int__", "__bool__", "item", "nonzero", "cpu"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda tensor, *a, _n=name, _o=original, **k: reads.append(_n)
                            or _o(tensor, *a, **k))
    second_order_update(matrix, hessian, removed, 0.01)
    monkeypatch.undo()
    assert sorted(reads) == ["__float__"] * 4 + ["__int__"]
