"""Channels chosen by time: a latency table (here written by hand) prices plans, and the selection spends
importance per millisecond saved. The expected choices are worked out by hand, or by listing every plan of a
two-group net, from the hand-written table and importance sums, never from the code under test."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from prunefx.graph import capture
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.channels.importance import Importance
from prunefx.graph.channels.removal import remove_classes
from prunefx.graph.channels.selection import Selector, Target
from prunefx.graph.channels.timed_layers import timed_layers
from prunefx.graph.counting import node_macs
from prunefx.graph.errors import PrunefxError
from prunefx.models import build_model
from prunefx.passes.core.config_checks import ConfigError
from prunefx.passes.remove_channels import remove_channels

WIDTHS = (4, 8, 12, 16)  # 16 channels at round_to 4, max_ratio 0.8
SCORES = np.arange(1.0, 17.0)  # the same in both groups; normalised by their mean, 8.5


class Chain(torch.nn.Module):
    """x -> conv1 (4 -> 16) -> conv2 (16 -> 16) -> conv3 (16 -> 4): group A is conv1's outputs (conv2's
    inputs), group B conv2's outputs (conv3's inputs)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(4, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x):
        return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


@pytest.fixture(scope="module")
def chain():
    torch.manual_seed(0)
    return capture(Chain(), torch.randn(1, 4, 8, 8)).eval()


def _which(layer) -> str:
    """conv1, conv2 or conv3, from the dense geometry the table is asked about."""
    return "conv1" if layer.in_channels == 4 else "conv3" if layer.out_channels == 4 else "conv2"


def expensive_a_free_b(layer, in_channels, out_channels) -> float:
    """conv2 costs 1 ms per input channel (group A); nothing else costs anything (group B is free)."""
    return float(in_channels) if _which(layer) == "conv2" else 0.0


def interacting(layer, in_channels, out_channels) -> float:
    """conv1: a / 4, conv2: a * b / 16, conv3: 0.75 b (a, b: the widths of groups A and B)."""
    return {"conv1": out_channels / 4, "conv2": in_channels * out_channels / 16, "conv3": 0.75 * in_channels}[
        _which(layer)]


def _by_hand(table, a: int, b: int) -> float:
    """The net's time at widths a, b: each layer (known to the table by its dense widths) at its widths."""
    dense = {"conv1": (4, 16), "conv2": (16, 16), "conv3": (16, 4)}
    now = {"conv1": (4, a), "conv2": (a, b), "conv3": (b, 4)}
    return sum(table(SimpleNamespace(in_channels=dense[name][0], out_channels=dense[name][1]), *now[name])
               for name in dense)


def _lost(width: int) -> float:
    """Normalised importance of the 16 - width least important channels of a group (1 + 2 + ... over 8.5)."""
    removed = 16 - width
    return removed * (removed + 1) / 2 / 8.5


def _selector(program, table, ranking="global") -> tuple[Selector, list[str]]:
    combing = find_channel_groups(program.module)
    names = ["A" if ("conv1.weight", 0) in g.members else "B" for g in combing.groups]
    selector = Selector(program.module, combing, [SCORES.copy() for _ in combing.groups], round_to=4,
                        max_ratio=0.8, ranking=ranking, layer_time=table)
    return selector, names


def _widths(plan, names) -> dict[str, int]:
    return dict(zip(names, plan.kept))


def test_expensive_channels_go_first_and_free_ones_stay(chain):
    selector, names = _selector(chain, expensive_a_free_b)
    plan = selector.plan(Target("layer_time", 0.5))
    # Only A's channels save time (1 ms each); half of 16 ms is 8 channels of A, and B keeps all of its own.
    assert _widths(plan, names) == {"A": 8, "B": 16}
    assert plan.target_met and plan.table_ms == {"dense": 16.0, "planned": 8.0}
    assert dict(zip(names, plan.ms_saved)) == {"A": 8.0, "B": 0.0}


def test_local_ranking_cuts_every_group_alike_to_the_same_time(chain):
    selector, names = _selector(chain, expensive_a_free_b, ranking="local")
    assert _widths(selector.plan(Target("layer_time", 0.5)), names) == {"A": 8, "B": 8}


def test_the_choice_is_the_cheapest_plan_in_importance_that_meets_the_time(chain):
    """Every plan of the two groups listed: of those within 3 % of 17 ms, the one losing least importance."""
    goal = 17.0
    within = [(_lost(a) + _lost(b), a, b) for a, b in itertools.product(WIDTHS, WIDTHS)
              if abs(_by_hand(interacting, a, b) - goal) <= 0.03 * goal]
    _, a, b = min(within)
    assert (a, b) == (8, 12)  # the listing itself, checked once by hand: 17 ms, importance 3.06 + 1.18 lost
    selector, names = _selector(chain, interacting)
    dense = _by_hand(interacting, 16, 16)
    assert dense == 32.0
    plan = selector.plan(Target("layer_time", goal / dense))
    assert _widths(plan, names) == {"A": a, "B": b} and plan.target_met


def test_at_the_same_time_it_loses_less_importance_than_the_macs_choice(chain):
    """The MACs choice cuts both groups of equal scores; the time it reaches, the latency choice reaches
    by cutting A alone, losing less importance."""
    selector, names = _selector(chain, expensive_a_free_b)
    by_macs = _widths(selector.plan(Target("macs", 0.5)), names)
    assert by_macs["B"] < 16  # the MACs choice spends importance on B, whose channels cost no time
    macs_ms = _by_hand(expensive_a_free_b, by_macs["A"], by_macs["B"])
    by_time = _widths(selector.plan(Target("layer_time", macs_ms / 16.0)), names)
    assert _by_hand(expensive_a_free_b, by_time["A"], by_time["B"]) <= macs_ms * 1.03
    assert _lost(by_time["A"]) + _lost(by_time["B"]) < _lost(by_macs["A"]) + _lost(by_macs["B"])


def test_remove_channels_takes_a_table_and_reports_the_time_saved_per_group(chain):
    def importance(module, combing):
        return Importance([SCORES.copy() for _ in combing.groups], "given")

    result = remove_channels(chain.clone(), config={"layer_time": 0.5, "latency_table": expensive_a_free_b,
                                                    "round_to": 4, "importance": importance})
    weights = dict(result.program.module.named_parameters())
    assert weights["conv2.weight"].shape[:2] == (16, 8)  # A: 8 channels left, B: all 16
    stats = result.stats
    assert stats["target"] == {"kind": "layer_time", "fraction": 0.5, "met": True, "at_floor": False,
                               "table_ms": {"dense": 16.0, "planned": 8.0}}
    assert sorted(g["ms_saved"] for g in stats["groups"]) == [0.0, 8.0]
    by_macs = remove_channels(chain.clone(), config={"macs": 0.5, "round_to": 4, "strict": False})
    assert all("ms_saved" not in g for g in by_macs.stats["groups"]) and "table_ms" not in by_macs.stats["target"]


def _macs_by_hand(a: int, b: int) -> float:
    """The chain's MACs at widths a, b, as a fraction of dense: 4a + ab + 4b input-output channel pairs, every
    one over the same 8 x 8 positions and 3 x 3 taps."""
    return (4 * a + a * b + 4 * b) / (4 * 16 + 16 * 16 + 16 * 4)


@pytest.mark.parametrize("table", [expensive_a_free_b, interacting])
@pytest.mark.parametrize("goal", [0.3, 0.6])
def test_at_a_macs_target_it_is_the_fastest_plan_losing_no_more_than_the_macs_choice(chain, table, goal):
    """At a MACs target, every plan of the two-group net listed: of those within the target's tolerance (MACs
    counted by hand) that lose no more importance than the MACs choice, the table's choice is the fastest (times
    by hand), and it too loses no more."""
    selector, names = _selector(chain, table)
    by_macs, by_time = (_widths(s.plan(Target("macs", goal)), names) for s in (_selector(chain, None)[0], selector))
    budget = _lost(by_macs["A"]) + _lost(by_macs["B"])
    allowed = [_by_hand(table, a, b) for a, b in itertools.product(WIDTHS, WIDTHS)
               if abs(_macs_by_hand(a, b) - goal) <= 0.03 * goal and _lost(a) + _lost(b) <= budget + 1e-9]
    assert allowed and _by_hand(table, by_time["A"], by_time["B"]) == min(allowed)
    assert _lost(by_time["A"]) + _lost(by_time["B"]) <= budget + 1e-9
    assert abs(_macs_by_hand(by_time["A"], by_time["B"]) - goal) <= 0.03 * goal


def test_at_a_macs_target_time_is_not_bought_with_more_importance_than_the_macs_choice_loses(chain):
    """The same MACs both ways: A at 8 or B at 8 (counted by hand). Only A's channels cost time, but B's matter
    far less (scores on one scale): cutting A would lose more importance than the MACs choice, which cuts B, so the
    table's choice is the MACs choice, however much faster A's cut would be."""
    goal = _macs_by_hand(8, 16)
    assert goal == _macs_by_hand(16, 8) == pytest.approx(0.583, abs=1e-3)  # MACs alone cannot tell them apart
    combing = find_channel_groups(chain.module)
    names = ["A" if ("conv1.weight", 0) in g.members else "B" for g in combing.groups]
    scores = [SCORES.copy() if name == "A" else 0.01 * SCORES for name in names]

    def plan(table):
        return Selector(chain.module, combing, scores, round_to=4, max_ratio=0.8, comparable=True,
                        layer_time=table).plan(Target("macs", goal))

    by_time, by_macs = plan(expensive_a_free_b), plan(None)
    assert _widths(by_macs, names) == _widths(by_time, names) == {"A": 16, "B": 8} and by_time.target_met
    assert by_time.table_ms == {"dense": 16.0, "planned": 16.0, "without_table": 16.0}
    assert _by_hand(expensive_a_free_b, 8, 16) == 8.0  # what cutting A would have bought


def test_remove_channels_takes_a_table_with_a_macs_target(chain):
    """A and B alike in importance: the table's choice cuts A, whose channels cost time, and its report gives the
    time by hand of the plan the same target gives without the table (the oracle: that plan's written widths)."""
    def importance(module, combing):
        return Importance([SCORES.copy() for _ in combing.groups], "given")

    goal = _macs_by_hand(8, 16)
    result, without = (remove_channels(chain.clone(), config={"macs": goal, "round_to": 4, "importance": importance,
                                                              **extra})
                       for extra in ({"latency_table": expensive_a_free_b}, {}))
    assert dict(result.program.module.named_parameters())["conv2.weight"].shape[:2] == (16, 8)
    a, b = dict(without.program.module.named_parameters())["conv2.weight"].shape[1::-1]
    assert result.stats["target"] == {"kind": "macs", "fraction": goal, "met": True, "at_floor": False,
                                      "table_ms": {"dense": 16.0, "planned": 8.0,
                                                   "without_table": _by_hand(expensive_a_free_b, a, b)}}


@pytest.mark.parametrize("config, message", [
    ({"layer_time": 0.5}, "needs the latency_table"),
    ({"macs": 0.5, "latency_table": expensive_a_free_b, "ranking": "local"}, "would go unused"),
    ({"layer_time": 0.5, "macs": 0.5, "latency_table": expensive_a_free_b}, "exactly one target"),
])
def test_a_table_and_its_target_come_together(chain, config, message):
    with pytest.raises((ConfigError, PrunefxError), match=message):
        remove_channels(chain.clone(), config=config)


def test_a_table_that_gives_no_number_is_refused(chain):
    with pytest.raises(PrunefxError, match="a time is a finite number"):
        _selector(chain, lambda layer, i, o: float("nan") if i < 16 else 1.0)[0].plan(Target("layer_time", 0.5))
    with pytest.raises(PrunefxError, match="no time"):
        _selector(chain, lambda layer, i, o: 0.0)[0].plan(Target("layer_time", 0.5))
    with pytest.raises(PrunefxError, match="needs a latency table"):
        Selector(chain.module, find_channel_groups(chain.module), [SCORES, SCORES]).plan(Target("layer_time", 0.5))


@pytest.mark.parametrize("model", ["prunefx:mobilenetv2_small", "prunefx:vit_tiny_fmnist"])
def test_the_widths_a_plan_is_priced_at_are_those_of_the_pruned_graph(model):
    """The oracle is the removal itself: every timed layer of the pruned graph has the (in, out) widths the
    table was asked about for that plan (depthwise convolutions, attention heads and MLPs included), and the MACs
    the plan's price per MAC reads for it are those the pruned graph's node counts."""

    torch.manual_seed(0)
    program = capture(build_model(model).module.eval(), torch.randn(2, 1, 28, 28)).eval()
    combing = find_channel_groups(program.module)
    rng = np.random.default_rng(0)
    selector = Selector(program.module, combing, [rng.random(g.size) for g in combing.groups], round_to=4,
                        layer_time=lambda layer, i, o: float(i * o))
    plan = selector.plan(Target("macs", 0.5))
    predicted = selector.latency.widths(selector._mask(plan.kept)[0])
    remove_classes(program.module, combing.analysis, {int(c) for gone in plan.removed for c in gone})
    program.recompile()
    pruned = {layer.name: (layer.in_channels, layer.out_channels) for layer in timed_layers(program.module)}
    assert pruned == dict(zip([layer.name for layer in selector.latency.layers], predicted))
    norms = {layer.name: layer.in_channels for layer in selector.latency.layers if layer.kind == "layer_norm"}
    assert bool(norms) == (model == "prunefx:vit_tiny_fmnist")  # the ViT's layer norms are priced too,
    assert all(pruned[name][0] < dense for name, dense in norms.items())  # narrowed with its residual stream
    assert plan.table_ms["planned"] == sum(i * o for i, o in pruned.values()) < plan.table_ms["dense"]
    counted = {node.name: node_macs(node) for node in program.module.graph.nodes if node.name in pruned}
    priced = {layer.name: selector.latency.macs_at(index, *predicted[index])
              for index, layer in enumerate(selector.latency.layers)}
    assert priced == pytest.approx(counted, rel=1e-9) and any(m < d for m, d in zip(priced.values(),
                                                                                     selector.latency.dense_macs))


class SplitHeads(torch.nn.Module):
    """Attention with q and k from one projection, v from another: heads, q/k head dims and v head dims are
    three groups, so a plan can leave an attention's q narrower than its v. Fused, or spelled out with a bias
    added to the scores (as Swin adds its relative-position bias); k and v over all tokens or fewer `keys`."""

    def __init__(self, spelled_out: bool, keys=6, heads=4, dim=8, tokens=6, width=16):
        super().__init__()
        self.shape, self.qk, self.v = (heads, dim), torch.nn.Linear(width, 2 * heads * dim), torch.nn.Linear(
            width, heads * dim)
        self.out = torch.nn.Linear(heads * dim, width)
        self.spelled_out, self.keys, self.bias = spelled_out, keys, torch.nn.Parameter(torch.randn(tokens, keys))

    def forward(self, x):
        n, t, _ = x.shape
        heads, dim = self.shape
        q, k = self.qk(x).view(n, t, 2, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)
        v = self.v(x).view(n, t, heads, dim).transpose(1, 2)
        k, v = k[:, :, :self.keys], v[:, :, :self.keys]
        if self.spelled_out:
            attended = torch.softmax((q * dim ** -0.5) @ k.transpose(-2, -1) + self.bias, dim=-1) @ v
        else:
            attended = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(attended.transpose(1, 2).reshape(n, t, -1))


@pytest.mark.parametrize("spelled_out, keys", [(False, 6), (True, 6), (False, 3), (True, 3)])
@pytest.mark.parametrize("heads_kept", [4, 3, 1])
def test_an_attention_is_priced_at_the_heads_and_mean_head_dim_of_the_pruned_graph(heads_kept, spelled_out, keys):
    """Oracle: the pruned graph's attention, its heads and the mean of q's and v's head dims read from its
    products' shapes, and the MACs they count; against the widths and MACs the plan was priced at, at every q and
    v width."""
    torch.manual_seed(0)
    for q_kept, v_kept in itertools.product((8, 5, 2), (8, 6)):
        program = capture(SplitHeads(spelled_out, keys).eval(), torch.randn(2, 6, 16)).eval()
        combing = find_channel_groups(program.module)
        selector = Selector(program.module, combing, [np.arange(1.0, g.size + 1) for g in combing.groups],
                            round_to=1, max_ratio=0.9, layer_time=lambda layer, i, o: float(i * o))
        roles = {4: heads_kept, 8: None}  # the heads group; the head dims' by the projection they narrow
        kept = [roles.get(g.size) or (q_kept if ("qk.weight", 0) in g.members else v_kept if ("v.weight", 0) in
                                      g.members else g.size) for g in combing.groups]
        latency = selector.latency
        (index,) = [i for i, layer in enumerate(latency.layers)
                    if layer.kind == ("attention_products" if spelled_out else "attention")]
        priced = latency.widths(selector._mask(kept)[0])[index]
        remove_classes(program.module, combing.analysis, set(np.flatnonzero(selector._mask(kept)[0]).tolist()))
        program.recompile()
        if spelled_out:  # q kᵀ, then the probabilities times v
            products = program.module.graph.find_nodes(op="call_function", target=torch.ops.aten.matmul.default)
            q, v = products[0].args[0].meta["val"].shape, products[1].args[1].meta["val"].shape
        else:
            products = program.module.graph.find_nodes(op="call_function",
                                                       target=torch.ops.aten.scaled_dot_product_attention.default)
            q, _, v = (arg.meta["val"].shape for arg in products[0].args[:3])
        assert (q[-1], v[-1]) == (q_kept, v_kept)  # the plan narrowed what it was meant to
        assert priced == (heads_kept, (q_kept + v_kept) // 2) == (q[1], (q[-1] + v[-1]) // 2)
        if (q_kept + v_kept) % 2 == 0:  # the mean is a whole number: the MACs scale exactly
            assert latency.macs_at(index, *priced) == pytest.approx(sum(map(node_macs, products)), rel=1e-12)


def stairs(layer, in_channels, out_channels) -> float:
    """A table in steps of 8 input and 4 output channels, as a GPU's kernels price widths: many narrower widths
    save nothing, a few save a step."""
    return 0.01 + float(-(-in_channels // 8) * -(-out_channels // 4))


@pytest.mark.parametrize("model", ["prunefx:mobilenetv2_small", "prunefx:vit_tiny_fmnist"])
def test_each_drop_saves_what_the_whole_plan_priced_anew_says(model):
    """The knapsack prices a drop from its group's layers alone, on the kept plan's mask; the oracle prices the
    whole plan before and after the drop, every layer, from the selector's own masks. Both must list the same
    widths with the same savings, from the dense widths and from a plan part-way down."""
    from prunefx.graph.channels.latency_selection import LatencyKnapsack

    torch.manual_seed(0)
    program = capture(build_model(model).module.eval(), torch.randn(2, 1, 28, 28)).eval()
    combing = find_channel_groups(program.module)
    rng = np.random.default_rng(0)
    selector = Selector(program.module, combing, [rng.random(g.size) for g in combing.groups], round_to=4,
                        layer_time=stairs)
    knapsack, latency = LatencyKnapsack(selector), selector.latency
    checked = 0
    for kept in ([int(widths[-1]) for widths in selector.widths], selector.plan(Target("macs", 0.6)).kept):
        planned = latency.ms(selector._mask(kept)[0])
        for group, widths in enumerate(selector.widths):
            expected = {}
            for width in (int(w) for w in widths if w < kept[group]):
                trial = kept[:group] + [width] + kept[group + 1:]
                saved = planned - latency.ms(selector._mask(trial)[0])
                if saved > knapsack.epsilon:
                    expected[width] = saved
            drops = knapsack._drops(kept, group)
            found = {drop.width: drop.saved for drop in drops}
            assert found.keys() == expected.keys()
            assert all(found[w] == pytest.approx(expected[w], rel=1e-9) for w in found)
            counted, knapsack.counted[group] = knapsack.counted[group], None  # priced through masks instead
            assert knapsack._drops(kept, group) == drops  # bit for bit: a tie between ratios breaks alike
            knapsack.counted[group] = counted
            checked += len(found)
    assert checked > 10 and any(c is not None for c in knapsack.counted)


@pytest.mark.parametrize("seed", range(5))
def test_the_landing_search_finds_every_drop_that_lands_measuring_few(seed):
    """A count (MACs, say) rises with the width kept: bisection at the run's two ends gives the same drops as trying
    every one (the oracle), with far fewer plans counted. A table's time may not rise with the width: every drop is
    tried there."""
    from prunefx.graph.channels.latency_selection import Drop, _landing

    rng = np.random.default_rng(seed)
    drops = [Drop(0, width, 0.0, 1.0) for width in range(8, 8 * 201, 8)]  # narrowest first, as _drops lists them
    rising = dict(zip((d.width for d in drops), np.cumsum(rng.random(len(drops)))))
    low, high = np.quantile(list(rising.values()), sorted(rng.random(2)))
    calls = []

    def after(drop):
        calls.append(drop)
        return rising[drop.width]

    expected = [d for d in drops if low <= rising[d.width] <= high]
    assert _landing(drops, after, low, high, counted=True) == expected
    assert len(calls) <= 2 * (int(np.log2(len(drops))) + 2) < len(drops)
    jagged = {d.width: float(v) for d, v in zip(drops, rng.permutation(list(rising.values())))}
    assert _landing(drops, lambda d: jagged[d.width], low, high, counted=False) == [
        d for d in drops if low <= jagged[d.width] <= high]


def test_many_widths_are_priced_at_once_as_one_at_a_time():
    """times_at_many and macs_at_many (a knapsack's lookups of every narrower width of a group at once) give what
    time_at and macs_at give width by width: first priced, then from the memo; a width out of range is refused."""
    torch.manual_seed(0)
    program = capture(build_model("prunefx:vit_tiny_fmnist").module.eval(), torch.randn(2, 1, 28, 28)).eval()
    combing = find_channel_groups(program.module)
    latency = Selector(program.module, combing, [np.ones(g.size) for g in combing.groups], round_to=4,
                       layer_time=stairs).latency
    rng = np.random.default_rng(1)
    indices = list(range(len(latency.layers)))
    dense = np.array([[layer.in_channels, layer.out_channels] for layer in latency.layers])
    for _ in range(2):  # priced, then looked up
        ins = rng.integers(1, dense[:, :1] + 1, (len(indices), 7))
        outs = rng.integers(1, dense[:, 1:] + 1, (len(indices), 7))
        times, macs = latency.times_at_many(indices, ins, outs), latency.macs_at_many(indices, ins, outs)
        for row, index in enumerate(indices):
            for j in range(7):
                assert times[row, j] == latency.time_at(index, int(ins[row, j]), int(outs[row, j]))
                assert macs[row, j] == latency.macs_at(index, int(ins[row, j]), int(outs[row, j]))
    with pytest.raises(PrunefxError, match="out of range"):
        latency.times_at_many([0], np.array([[-1]]), np.array([[4]]))
