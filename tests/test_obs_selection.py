"""The `obs` importance (second-order, graph/channels/saliency.py): what compensation cannot recover is
what it scores; the greedy elimination's scores are the joint compensated errors; the fallback to l2;
and, on ResNet-20 with Fashion-MNIST images, a lower logits error than l2 when both compensate."""


import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from prunefx.graph import PrunefxError, capture, verify
from prunefx.graph.channels.compensation import second_order_update
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.channels.importance import channel_importance
from prunefx.graph.layer_hessians import gather_hessians
from prunefx.graph.layer_inputs import LayerInput, find_consumers
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


def _while_inside(monkeypatch, owner, name: str) -> list:
    """A list that holds an item while `owner.name` runs (wrapped for the test), and is empty otherwise."""
    inside, original = [], getattr(owner, name)

    def wrapped(*args, **kwargs):
        inside.append(1)
        try:
            return original(*args, **kwargs)
        finally:
            inside.clear()

    monkeypatch.setattr(owner, name, wrapped)
    return inside


def _correlated_with_data():
    torch.manual_seed(0)
    program = capture(Correlated().eval(), torch.randn(4, 3, 8, 8)).eval()
    return program, find_channel_groups(program.module), [(torch.randn(4, 3, 8, 8),) for _ in range(4)]


def test_a_removal_whose_block_did_not_factor_leaves_its_group_to_l2_with_a_warning(monkeypatch, caplog):
    """Whether a removal's block of the inverse Hessian factored is read once, when the group is done; where one
    did not (singular: its updates are no OBS updates), the group's elimination is discarded and its channels are
    scored by l2, as those of a group no layer reads. The removals here are told that their block did not."""
    from prunefx.graph.channels import obs_layer_state, saliency

    program, combing, calibration = _correlated_with_data()
    solve = obs_layer_state.solve_unchecked
    monkeypatch.setattr(obs_layer_state, "solve_unchecked",
                        lambda block, right: (solve(block, right)[0], torch.tensor(False)))
    saliency._LAST.clear()
    with caplog.at_level("WARNING", logger="prunefx"):
        obs = channel_importance(program.module, combing, "obs", calibration=calibration)
    saliency._LAST.clear()
    l2 = channel_importance(program.module, combing, "l2")
    assert (obs.fallback_groups, obs.comparable) == (1, False)
    np.testing.assert_array_equal(obs.scores[0], l2.scores[0])
    assert "did not factor in the elimination of the 4 channels of a.weight (group 0)" in caplog.text


def test_an_exact_elimination_reads_no_truth_value_but_whether_its_blocks_factored(monkeypatch):
    """On a GPU each read of a value waits for the device's queue: a removal reads none (its block's factoring is
    read once for the group), so `bool` is read once in an exact elimination (a step's errors are one copy)."""
    from prunefx.graph.channels import saliency

    program, combing, calibration = _correlated_with_data()
    reads, original_bool = [], torch.Tensor.__bool__
    inside = _while_inside(monkeypatch, saliency, "eliminate")

    def counted_bool(tensor):
        if inside:
            reads.append(1)
        return original_bool(tensor)

    monkeypatch.setattr(torch.Tensor, "__bool__", counted_bool)
    saliency._LAST.clear()
    scores = saliency.obs_saliency(program.module, combing, calibration, steps="exact").scores[0]
    assert len(reads) == 1 and np.isfinite(scores).all()


@pytest.mark.parametrize("width", [4, 16])
def test_the_scoring_copies_to_its_device_once_a_layer_not_once_a_channel(monkeypatch, width):
    """On a GPU a copy to the device without non_blocking waits for its queue: the columns of a layer's channels
    go in one copy (not one a channel: tens of thousands in a ResNet-50), so the count does not grow with width."""
    from prunefx.graph.channels import saliency

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.Conv2d(width, 5, 3)).eval()
    program = capture(model, torch.randn(2, 3, 8, 8)).eval()
    combing = find_channel_groups(program.module)
    copies, original_to = [], torch.Tensor.to
    inside = _while_inside(monkeypatch, saliency, "_compute")

    def counted_to(tensor, *args, **kwargs):
        if inside and not kwargs.get("non_blocking") and any(
                isinstance(arg, (torch.device, str)) for arg in (*args, kwargs.get("device"))):
            copies.append(1)
        return original_to(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counted_to)
    saliency._LAST.clear()
    scored = saliency.obs_saliency(program.module, combing, [(torch.randn(2, 3, 8, 8),)], steps="exact")
    assert scored.read[0].all() and np.isfinite(scored.scores[0]).all()
    assert len(copies) <= 4  # per layer: its weights and its channels' columns


def test_columns_copied_at_once_are_each_array_as_it_was():
    from prunefx.graph.host_to_device import on_device_at_once

    arrays = [np.array([3, 1]), np.zeros(0, dtype=np.int64), np.array([7])]
    copied = on_device_at_once(arrays, torch.device("cpu"))
    assert [tensor.tolist() for tensor in copied] == [[3, 1], [], [7]] and on_device_at_once([], "cpu") == []


def test_obs_needs_calibration_batches():
    program = capture(TwoConvs().eval(), torch.randn(2, 3, 8, 8)).eval()
    combing = find_channel_groups(program.module)
    with pytest.raises(PrunefxError, match="'obs' needs calibration batches"):
        channel_importance(program.module, combing, "obs")
    with pytest.raises(PrunefxError, match="calibration batch 0"):
        remove_channels(program, config={"channels": 0.5, "importance": "obs",
                                         "calibration": [(torch.randn(3, 3, 8, 8),)]})


# --- the elimination against an oracle ---------------------------------------------------------------

def _joint_error(matrix: np.ndarray, inverse: np.ndarray, removed: list[int]) -> float:
    """trace(M_T [(H^-1)_TT]^-1 M_T^T): the output error of removing the columns T at once, the others
    compensated (least squares); removing T one part after the other, compensating each time, ends in
    the same error, which is what makes this an oracle for the greedy elimination's steps."""
    if not removed:
        return 0.0
    weights = matrix[:, removed]
    return float(np.sum(weights.T * np.linalg.solve(inverse[np.ix_(removed, removed)], weights.T)))


def _oracle_elimination(size: int, layers: list[tuple]) -> np.ndarray:
    """The greedy elimination spelled out from its definition (obs_elimination.eliminate's docstring)
    with joint errors from the original inverse: the alive // 32 (at least 1) channels that add the
    least error go together; the last of them scores the total error, the others share the increase
    in proportion to their single errors."""
    def error(chosen: list[int]) -> float:
        return sum(_joint_error(matrix, inverse, [c for ch in chosen for c in columns.get(ch, [])]) / energy
                   for matrix, inverse, energy, columns in layers)

    scores, gone, total = np.zeros(size), [], 0.0
    while len(gone) < size:
        alive = [c for c in range(size) if c not in gone]
        single = np.array([error(gone + [c]) - total for c in alive])
        order = np.argsort(single, kind="stable")[:max(len(alive) // 32, 1)]
        chosen = [alive[i] for i in order]
        increase = error(gone + chosen) - total
        shares = np.cumsum(single[order]) / single[order].sum()
        scores[chosen] = total + increase * shares
        total += increase
        gone += chosen
    return scores


def _random_layer(rng, widths: list[int], others: int, outputs: int):
    """A layer's H, weight matrix and {channel: its columns} (`widths` columns per channel, then `others`
    columns of other groups), correlated inputs and weights of uneven scales."""
    columns, start = {}, 0
    for channel, width in enumerate(widths):
        if width:
            columns[channel] = list(range(start, start + width))
            start += width
    total = start + others
    x = rng.standard_normal((2 * total, total)) @ (np.eye(total) + 0.3 * rng.standard_normal((total, total)))
    hessian = torch.from_numpy(x.T @ x)
    matrix = rng.standard_normal((outputs, total)) * rng.uniform(0.1, 2.0, total)
    return hessian, matrix, columns


def _two_layers(rng, size: int) -> list[tuple]:
    return [_random_layer(rng, list(rng.integers(1, 4, size)), 300, 7),   # narrow slice of a wide layer: copied
            _random_layer(rng, [1] * (size - 5) + [0] * 5, 12, 5)]        # most of the layer: shared


def _states(built: list[tuple]) -> list:
    from prunefx.graph.channels.compensation import lean_damped_inverse
    from prunefx.graph.channels.obs_layer_state import LayerState

    states = []
    for hessian, matrix, columns in built:
        energy = float((matrix @ hessian.numpy() * matrix).sum())
        states.append(LayerState(torch.from_numpy(matrix).clone(), lean_damped_inverse(hessian, 0.01), energy,
                                 {c: torch.tensor(cols) for c, cols in columns.items()}))
    return states


@pytest.mark.parametrize(("capacity", "owned"), [(6, False), (512, False), (6, True)])
def test_elimination_matches_an_oracle(monkeypatch, capacity, owned):
    """LayerState/eliminate (a group's block of the inverse, deferred downdates applied `capacity` columns
    at a time, a wide layer's inverse shared, or `owned` and compacted in place, a narrow slice copied)
    choose the channels the oracle does, with the same scores; two layers read the group, with 1 to 3
    columns per channel and columns of other groups."""
    from prunefx.graph.channels.compensation import damped_inverse, lean_damped_inverse
    from prunefx.graph.channels.obs_elimination import eliminate
    from prunefx.graph.channels.obs_layer_state import LayerState

    monkeypatch.setattr(LayerState, "CAPACITY", capacity)
    rng = np.random.default_rng(0)
    size = 90
    built = _two_layers(rng, size)
    states, oracle_layers = [], []
    for hessian, matrix, columns in built:
        inverse = lean_damped_inverse(hessian, 0.01)
        assert torch.equal(inverse, damped_inverse(hessian, 0.01))  # the same, in less memory
        energy = float((matrix @ hessian.numpy() * matrix).sum())
        original = inverse.clone()
        state = LayerState(torch.from_numpy(matrix).clone(), inverse, energy,
                       {c: torch.tensor(cols) for c, cols in columns.items()})
        state.owned = owned and state.base is inverse
        states.append((state, inverse, original))
        oracle_layers.append((matrix, inverse.numpy().copy(), energy, columns))
    scores = eliminate(size, [state for state, _, _ in states])
    expected = _oracle_elimination(size, oracle_layers)
    np.testing.assert_array_equal(np.argsort(scores, kind="stable"), np.argsort(expected, kind="stable"))
    np.testing.assert_allclose(scores, expected, rtol=1e-7)
    for _, inverse, original in states:
        if not owned:
            assert torch.equal(inverse, original)  # a shared inverse is never written


# --- ResNet-20 on Fashion-MNIST images -------------------------------------------------------------------


def test_fast_elimination_takes_few_steps_stops_at_the_removable_count_and_keeps_the_joint_errors(monkeypatch):
    """obs_steps fast: the exact schedule up to the `removable` count, then the rest in one joint step: the
    channels it can remove are the exact elimination's, in its order with its scores, in fewer steps; the
    removable channels' last score is the exact joint error of removing them all (oracle), the others score
    above it."""
    from prunefx.graph.channels.obs_elimination import eliminate
    from prunefx.graph.channels.obs_layer_state import LayerState

    size, removable = 90, 70
    built = _two_layers(np.random.default_rng(0), size)
    oracle_layers = [(matrix, np.linalg.inv(hessian.numpy() + 0.01 * np.diag(hessian.numpy()).mean() * np.eye(len(hessian))),
                      float((matrix @ hessian.numpy() * matrix).sum()), columns) for hessian, matrix, columns in built]

    def joint(chosen) -> float:
        return sum(_joint_error(matrix, inverse, [c for ch in chosen for c in columns.get(ch, [])]) / energy
                   for matrix, inverse, energy, columns in oracle_layers)

    calls = []
    original = LayerState.remove
    monkeypatch.setattr(LayerState, "remove", lambda self, channels, alive: calls.append(len(channels))
                        or original(self, channels, alive))
    fast = eliminate(size, _states(built), steps="fast", removable=removable)
    steps = len(calls) // len(built)
    calls.clear()
    exact = eliminate(size, _states(built), steps="exact")
    assert len(calls) // len(built) == 76 and steps == 56  # exact: 2 channels a step down to 63, then one
    order = np.argsort(fast, kind="stable")
    gone = order[:removable]
    assert fast[gone[-1]] == pytest.approx(joint(gone), rel=1e-7)
    assert fast[order[-1]] == pytest.approx(joint(order), rel=1e-7)
    assert np.all(fast[order[removable:]] >= fast[gone[-1]]) and np.all(np.diff(fast[order]) >= 0)
    exact_order = np.argsort(exact, kind="stable")
    assert np.array_equal(gone, exact_order[:removable]) and np.allclose(fast[gone], exact[gone], rtol=1e-9)


@pytest.mark.parametrize("steps", ["exact", "fast"])
def test_a_layer_with_many_outputs_is_eliminated_from_a_factor_of_its_gram_with_the_same_scores(monkeypatch, steps):
    """A layer with at least twice as many outputs as columns is held as F with F F^T = M^T M
    ([columns, columns]): the same scores as from M itself."""
    from prunefx.graph.channels import obs_layer_state
    from prunefx.graph.channels.obs_elimination import eliminate

    rng = np.random.default_rng(3)
    size = 40
    built = [_random_layer(rng, [1] * size, 10, 150), _random_layer(rng, [2] * size, 0, 200)]
    states = _states(built)
    assert all(state.columns_major.shape[1] < matrix.shape[0] for state, (_, matrix, _) in zip(states, built))
    factored = eliminate(size, states, steps=steps, removable=30)
    monkeypatch.setattr(obs_layer_state, "_column_factor", lambda matrix: matrix.t().clone())
    plain = eliminate(size, _states(built), steps=steps, removable=30)
    np.testing.assert_allclose(factored, plain, rtol=1e-9)
    np.testing.assert_array_equal(np.argsort(factored, kind="stable"), np.argsort(plain, kind="stable"))


def test_the_last_saliency_is_reused_for_the_same_model_and_data_only(monkeypatch):
    """A budget search scores the same dense model again at every fraction: the second call gathers no
    Hessian and returns the same scores (a copy: changing it changes nothing kept); a changed weight or
    other batches are scored anew, as a fresh computation scores them."""
    from prunefx.graph.channels import saliency

    torch.manual_seed(0)
    program = capture(TwoConvs().eval(), torch.randn(4, 3, 8, 8)).eval()
    calibration = [(torch.randn(4, 3, 8, 8),) for _ in range(2)]
    combing = find_channel_groups(program.module)
    gathered, original = [], saliency.iter_hessians

    def counting(*args, **kwargs):
        gathered.append(1)
        yield from original(*args, **kwargs)

    monkeypatch.setattr(saliency, "iter_hessians", counting)
    saliency._LAST.clear()
    first = saliency.obs_saliency(program.module, combing, calibration)
    assert len(gathered) == 1
    first.scores[0][:] = -1.0  # the caller's copy
    again = saliency.obs_saliency(program.module, combing, calibration)
    assert len(gathered) == 1 and not (again.scores[0] == -1.0).any()

    def fresh(batches) -> np.ndarray:
        saliency._LAST.clear()
        return saliency.obs_saliency(program.module, combing, batches).scores[0]

    np.testing.assert_array_equal(again.scores[0], fresh(calibration))
    other = [(torch.randn(4, 3, 8, 8),) for _ in range(2)]
    saliency.obs_saliency(program.module, combing, calibration)
    changed_data = saliency.obs_saliency(program.module, combing, other).scores[0]
    np.testing.assert_array_equal(changed_data, fresh(other))
    assert not np.allclose(changed_data, again.scores[0])
    saliency.obs_saliency(program.module, combing, calibration)
    with torch.no_grad():
        program.module.get_parameter(next(n for n, _ in program.module.named_parameters())).mul_(1.5)
    changed_weight = saliency.obs_saliency(program.module, combing, calibration).scores[0]
    np.testing.assert_array_equal(changed_weight, fresh(calibration))
    assert not np.allclose(changed_weight, again.scores[0])


def test_quadratic_forms_equal_the_explicit_inverse_also_for_an_indefinite_block():
    from prunefx.graph.numerics.block_solves import quadratic_forms

    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 4, 4))
    blocks = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(4)
    weights = rng.standard_normal((5, 4, 3))
    expected = np.einsum("nso,nst,nto->n", weights, np.linalg.inv(blocks), weights)
    got = quadratic_forms(torch.from_numpy(blocks), torch.from_numpy(weights)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    blocks[2] = np.diag([1.0, -2.0, 3.0, 4.0])  # not positive definite: the LU solve
    expected = np.einsum("nso,nst,nto->n", weights, np.linalg.inv(blocks), weights)
    got = quadratic_forms(torch.from_numpy(blocks), torch.from_numpy(weights)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_a_steps_errors_are_read_at_once_and_blocks_not_positive_definite_are_solved_exactly():
    """Every layer's errors of a step stay on the device until one read (on a GPU each read waits for its queue);
    a term whose fast path does not apply (a block not positive definite, s x s or 1 x 1) is solved as before.
    Oracle: the explicit inverses, summed per channel, each divided by its layer's energy."""
    from prunefx.graph.channels.obs_elimination import read_terms
    from prunefx.graph.channels.obs_layer_state import ErrorTerm
    from prunefx.graph.numerics.block_solves import quadratic_forms, quadratic_forms_unchecked

    rng = np.random.default_rng(2)
    a = rng.standard_normal((5, 4, 4))
    blocks = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(4)
    blocks[2] = np.diag([1.0, -2.0, 3.0, 4.0])
    ones = np.array([[[2.0]], [[-1.0]]])  # a 1 x 1 block that is not positive
    weights, narrow = rng.standard_normal((5, 4, 3)), rng.standard_normal((2, 1, 3))
    terms = []
    for channels, energy, b, w in (([0, 2, 4, 6, 8], 2.0, blocks, weights), ([1, 2], 4.0, ones, narrow)):
        b, w = torch.from_numpy(b), torch.from_numpy(w)
        values, usable = quadratic_forms_unchecked(b, w)
        assert not bool(usable)
        terms.append(ErrorTerm(np.array(channels), energy, values, usable, lambda b=b, w=w: quadratic_forms(b, w)))
    terms.append(ErrorTerm(np.array([0, 9]), None, np.array([0.5, 0.25])))  # a layer without compensation
    expected = np.zeros(10)
    for channels, energy, b, w in (([0, 2, 4, 6, 8], 2.0, blocks, weights), ([1, 2], 4.0, ones, narrow)):
        expected[channels] += np.maximum(np.einsum("nso,nst,nto->n", w, np.linalg.inv(b), w), 0.0) / energy
    expected[[0, 9]] += [0.5, 0.25]
    errors, carried = read_terms(terms, 10, (torch.tensor(0.75, dtype=torch.float64), 0.5))
    np.testing.assert_allclose(errors, expected, rtol=1e-10)
    assert carried == [0.75, 0.5]  # a step's increase read in the same copy


def _tensors_held(term) -> list[torch.Tensor]:
    """The tensors an error term keeps alive: its values and what its exact solve would read."""
    held = [value for value in (term.values, term.usable) if isinstance(value, torch.Tensor)]
    if term.exact is not None:
        cells = [cell.cell_contents for cell in term.exact.__closure__ or ()]
        held += [value for value in (*(term.exact.__defaults__ or ()), *cells) if isinstance(value, torch.Tensor)]
    return held


@pytest.mark.parametrize("widths", [[1] * 40, [2] * 20])  # one column a channel (a division), two (2 x 2 blocks)
def test_a_steps_error_terms_hold_no_copy_of_the_layers_weights_and_solve_exactly_when_asked(widths):
    """A step holds every layer's terms until it reads them all (a ViT-L residual stream: 49 layers): a term keeps
    its values and indices, not the weights it gathered (about the layer's weight matrix each); its exact solve
    gathers them again and agrees with the fast path on positive definite blocks."""
    from prunefx.graph.channels.obs_layer_state import LayerState

    rng = np.random.default_rng(5)
    state = _states([_random_layer(rng, widths, 10, 64)])[0]
    if max(widths) == 1:  # one column a channel: no gathered copy at all, even for a moment (its weights' norms)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(LayerState, "_gathered", lambda *args: pytest.fail("weights gathered"))
            terms = state.error_terms(np.ones(len(widths), dtype=bool))
    else:
        terms = state.error_terms(np.ones(len(widths), dtype=bool))
    own = {tensor.untyped_storage().data_ptr() for tensor in (state.base, state.columns_major, state.place,
                                                             *(t for bucket in state.buckets for t in bucket[1:]))}
    weights_bytes = state.columns_major.numel() * state.columns_major.element_size()
    for term in terms:
        copies = [t for t in _tensors_held(term) if t.untyped_storage().data_ptr() not in own]
        assert sum(t.numel() * t.element_size() for t in copies) < weights_bytes / 4
        assert bool(term.usable)
        torch.testing.assert_close(term.exact(), term.values, rtol=1e-9, atol=0)


def test_compensation_after_obs_reports_what_it_reports_alone(monkeypatch):
    """The obs importance leaves each layer's output energy in the Hessian cache it shares with the
    compensation: the errors the compensation reports are those it computes on its own."""
    from prunefx.graph.channels import compensation, saliency
    from prunefx.graph.channels.compensation import compensate_removed_inputs, energy_key

    torch.manual_seed(0)
    model, example = TwoConvs().eval(), torch.randn(4, 3, 8, 8)
    calibration = [(torch.randn(4, 3, 8, 8),) for _ in range(2)]
    other = capture(model, example).eval()  # compensated alone (the compensation rewrites its weights)
    other_combing = find_channel_groups(other.module)
    removed = {int(c) for c in other_combing.groups[0].classes[:3]}
    alone = compensate_removed_inputs(other.module, other_combing.analysis, removed, calibration)
    program = capture(model, example).eval()
    combing = find_channel_groups(program.module)
    assert {int(c) for c in combing.groups[0].classes[:3]} == removed
    shared: dict = {}
    saliency._LAST.clear()
    saliency.obs_saliency(program.module, combing, calibration, hessians=shared)
    assert energy_key("b.weight") in shared
    monkeypatch.setattr(compensation, "output_energy", lambda *args: pytest.fail("energy computed again"))
    after = compensate_removed_inputs(program.module, combing.analysis, removed, calibration, hessians=shared)
    for mine, theirs in zip(after["compensated"], alone["compensated"]):
        assert mine["error_with"] == pytest.approx(theirs["error_with"], rel=1e-6)  # the cache holds H in float32
        assert mine["error_without"] == pytest.approx(theirs["error_without"], rel=1e-6)
    assert after["compensated"] and len(after["compensated"]) == len(alone["compensated"])


@given(st.lists(st.integers(0, 12), max_size=40), st.lists(st.integers(-1, 14), max_size=4))
def test_the_columns_of_a_channel_are_those_carrying_its_classes(column_classes, classes):
    # the oracle: a scan of every column (numpy's isin), which the per-class index replaced
    layer = LayerInput("layer", np.array(column_classes, dtype=np.int64))
    found = layer.column_indices(np.array(classes, dtype=np.int64))
    assert found.tolist() == np.flatnonzero(np.isin(layer.column_classes, classes)).tolist()


class Pooled(nn.Module):
    """A convolution read by a classifier after global pooling: one calibration row per image for the classifier."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)

    def features(self, x):
        return torch.relu(self.a(x)).mean(dim=(2, 3))

    def forward(self, x):
        return self.b(self.features(x))


def test_a_layer_with_fewer_calibration_rows_than_columns_charges_each_channel_its_uncompensated_error():
    # 4 images: 4 rows for the classifier's 8 columns, which a compensation would fit exactly whatever went
    torch.manual_seed(0)
    model = Pooled().eval()
    images = torch.randn(4, 3, 8, 8)
    program = capture(model, images).eval()
    combing = find_channel_groups(program.module)
    at = _positions(combing, "a.weight")
    scores = channel_importance(program.module, combing, "obs", calibration=[(images,)], damping=1e-8).scores[0]
    with torch.no_grad():  # the oracle: ||X_c w_c^T||^2 / ||X W^T||^2 from the model's own pooled features
        pooled, weight = model.features(images).double(), model.b.weight.double()
        own = pooled.square().sum(0) * weight.square().sum(0) / (pooled @ weight.t()).square().sum()
    order = torch.argsort(own).tolist()  # removed cheapest first, each scored by the errors gone so far
    expected = np.cumsum(own[order].numpy())
    np.testing.assert_allclose([scores[at[c]] for c in order], expected, rtol=1e-6)
    assert expected[-1] > 0.5  # without a fit, removing every channel costs about the whole output


@pytest.mark.parametrize("from_rows", [False, True])
def test_uncompensated_errors_of_channels_with_different_column_counts_are_each_their_own(from_rows):
    # channels of 1, 2 and 3 columns in one layer (scored a bucket at a time): each channel's error is
    # ||X_c M_c^T||^2 / energy, computed here from the calibration rows X themselves
    from types import SimpleNamespace

    from prunefx.graph.channels.obs_elimination import read_terms
    from prunefx.graph.channels.obs_layer_state import UncompensatedState
    from prunefx.graph.channels.saliency import _gram_blocks

    torch.manual_seed(0)
    rows, matrix = torch.randn(5, 9, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64)
    columns = {0: torch.tensor([0]), 1: torch.tensor([1, 2]), 2: torch.tensor([3]), 3: torch.tensor([4, 5, 6]),
               4: torch.tensor([], dtype=torch.long), 5: torch.tensor([7, 8])}
    energy = float((rows @ matrix.t()).square().sum())
    gram_blocks = _gram_blocks(None, SimpleNamespace(kept=rows)) if from_rows else _gram_blocks(rows.t() @ rows, None)
    state = UncompensatedState(matrix, gram_blocks, energy, columns)
    errors, _ = read_terms(state.error_terms(np.array([True, True, True, True, True, False])), 6)
    expected = [float((rows[:, c] @ matrix[:, c].t()).square().sum()) / energy if c.numel() else 0.0
                for c in columns.values()]
    np.testing.assert_allclose(errors, expected[:5] + [0.0], rtol=1e-12)
    assert state.remove([1, 5]) == pytest.approx(expected[1] + expected[5], rel=1e-12)
