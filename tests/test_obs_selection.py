"""The `obs` importance (second-order, graph/channel_saliency.py): what compensation cannot recover is
what it scores; the greedy elimination's scores are the joint compensated errors; the fallback to l2;
and, on ResNet-20 with Fashion-MNIST images, a lower logits error than l2 when both compensate."""


import numpy as np
import pytest
import torch
from torch import nn

from prunefx.graph import PrunefxError, capture, verify
from prunefx.graph.channel_compensation import second_order_update
from prunefx.graph.channel_groups import find_channel_groups
from prunefx.graph.channel_importance import channel_importance
from prunefx.graph.layer_inputs import find_consumers, gather_hessians
from prunefx.passes.remove_channels import remove_channels

BATCH = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _positions(combing, weight: str) -> list[int]:
    """For each output channel of `weight`, its index in its group's scores (group 0)."""
    labels = next(m.labels for m in combing.analysis.space.members if (m.target, m.dim) == (weight, 0))
    classes = combing.groups[0].classes.tolist()
    return [classes.index(int(c)) for c in combing.analysis.classes[labels]]


class Correlated(nn.Module):
    """a -> b with nothing in between. Channel 3 of a is channel 1 - 2 * channel 2 (b can read it from
    them), channel 0 is independent; channels 0 and 3 have the same l2 norm over everything they own
    (a's output row, b's input column). b reads channels 1 and 2 three times more strongly, so that of
    the three mutually dependent channels 1, 2, 3, channel 3 is the cheapest to drop."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Conv2d(4, 5, 3, padding=1)
        with torch.no_grad():
            self.a.weight[3] = self.a.weight[1] - 2 * self.a.weight[2]
            self.a.weight[0] *= self.a.weight[3].norm() / self.a.weight[0].norm()
            self.b.weight[:, 1:3] *= 3
            self.b.weight[:, 0] *= self.b.weight[:, 3].norm() / self.b.weight[:, 0].norm()

    def forward(self, x):
        return self.b(self.a(x))


def test_obs_scores_a_linear_combination_near_zero_where_l2_sees_no_difference():
    torch.manual_seed(0)
    program = capture(Correlated().eval(), torch.randn(4, 3, 8, 8)).eval()
    calibration = [(torch.randn(4, 3, 8, 8),) for _ in range(4)]
    combing = find_channel_groups(program.module)
    at = _positions(combing, "a.weight")
    l2 = channel_importance(program.module, combing, "l2").scores[0]
    assert l2[at[0]] == pytest.approx(l2[at[3]], rel=1e-5)  # l2 cannot tell them apart
    obs = channel_importance(program.module, combing, "obs", calibration=calibration)
    assert obs.criterion == "obs" and obs.comparable and obs.fallback_groups == 0
    scores = obs.scores[0]
    assert scores[at[3]] < 0.1 * scores[at[0]]  # default damping 0.01: the ridge term costs a little
    exact = channel_importance(program.module, combing, "obs", calibration=calibration, damping=1e-8).scores[0]
    assert exact[at[3]] < 1e-6 * exact[at[0]] and exact[at[0]] > 0.01  # a relative output error

    # Pruned by obs with compensation, the dependent channel goes and the output is kept.
    result = remove_channels(program.clone(), config={
        "channels": 0.75, "round_to": 1, "importance": "obs", "compensate": True, "damping": 1e-8,
        "calibration": calibration})
    assert result.program.module.get_parameter("a.weight").shape[0] == 3
    kept = result.program.module.get_parameter("a.weight")
    torch.testing.assert_close(kept[:3], program.module.get_parameter("a.weight")[:3])
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(result.program(x), program(x), rtol=1e-4, atol=1e-4)
    assert result.stats["importance"] == "obs" and result.stats["compensation"]["compensated"]
    verify(result.program)


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_elimination_scores_are_the_joint_compensated_errors():
    """The k-th lowest score is the relative output error left after removing the k lowest-scored
    channels at once and compensating (the same number second_order_update reports), and the lowest
    is the cheapest single channel."""
    torch.manual_seed(0)
    program = capture(TwoConvs().eval(), torch.randn(4, 3, 8, 8)).eval()
    calibration = [(torch.randn(4, 3, 8, 8),) for _ in range(6)]
    module = program.module
    combing = find_channel_groups(module)
    (group,) = combing.groups
    damping = 1e-9  # the scores use the damped Hessian, the reported error the plain one
    scores = channel_importance(module, combing, "obs", calibration=calibration, damping=damping).scores[0]

    def joint_error(positions):
        (consumer,), _ = find_consumers(module, combing.analysis, {int(group.classes[p]) for p in positions})
        hessian, _ = gather_hessians(module, [consumer.spec], calibration)[consumer.spec]
        return second_order_update(consumer.matrix(module), hessian, consumer.removed_columns,
                                   damping)[1]["error_with"]

    order = np.argsort(scores)
    for k in range(1, group.size):
        assert scores[order[k - 1]] == pytest.approx(joint_error(order[:k]), rel=1e-5, abs=1e-9)
    assert scores[order[0]] == pytest.approx(min(joint_error([p]) for p in range(group.size)), rel=1e-5)
    assert np.all(np.diff(scores[order]) >= 0) and scores[order[-1]] == pytest.approx(1.0, rel=1e-3)


class SharedConsumer(nn.Module):
    """a's channels are read only by b, whose weight is used twice: no layer can be compensated."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) + self.b(2 * h)


def test_channels_no_compensable_layer_reads_fall_back_to_l2_and_are_counted():
    torch.manual_seed(0)
    program = capture(SharedConsumer().eval(), torch.randn(2, 3, 6, 6)).eval()
    combing = find_channel_groups(program.module)
    obs = channel_importance(program.module, combing, "obs", calibration=[(torch.randn(2, 3, 6, 6),)])
    l2 = channel_importance(program.module, combing, "l2")
    assert (obs.fallback_groups, obs.fallback_channels, obs.comparable) == (1, 4, False)
    np.testing.assert_array_equal(obs.scores[0], l2.scores[0])
    result = remove_channels(program.clone(), config={"channels": 0.5, "round_to": 1, "importance": "obs"})
    assert (result.stats["importance_fallback_groups"], result.stats["importance_fallback_channels"]) == (1, 4)


def test_obs_needs_calibration_batches():
    program = capture(TwoConvs().eval(), torch.randn(2, 3, 8, 8)).eval()
    combing = find_channel_groups(program.module)
    with pytest.raises(PrunefxError, match="'obs' needs calibration batches"):
        channel_importance(program.module, combing, "obs")
    with pytest.raises(PrunefxError, match="calibration batch 0"):
        remove_channels(program, config={"channels": 0.5, "importance": "obs",
                                         "calibration": [(torch.randn(3, 3, 8, 8),)]})


# --- ResNet-20 on Fashion-MNIST images -------------------------------------------------------------------
