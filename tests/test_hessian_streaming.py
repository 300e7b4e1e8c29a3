"""The layer Hessians gathered a chunk at a time in one staged pass over the data (graph/staged_run.py), the
packed float32 form a cache holds them in, and the compensation, their last reader, dropping them."""

import contextlib

import pytest
import torch
from torch import nn

from prunefx.graph import capture, count, gram_sum, layer_hessians, packed_hessian
from prunefx.graph.activations import run_tapped, tap_nodes
from prunefx.graph.channels import saliency
from prunefx.graph.channels.compensation import compensate_removed_inputs
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.layer_hessians import iter_hessians
from prunefx.graph.layer_inputs import InputSpec, find_consumers
from prunefx.graph.packed_hessian import PackedHessian
from prunefx.graph.staged_run import StagedRun
from prunefx.graph.timing import Timing
from prunefx.passes.budget import measurement
from prunefx.passes.prune_to_budget import prune_to_budget

pytestmark = pytest.mark.usefixtures("one_thread")


class Chain(nn.Module):
    """Four convolutions with a skip: a value (the first conv's output) read across stages."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c, self.d = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 6, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.d(torch.relu(self.c(torch.relu(self.b(h)))) + h)


def _program_and_batches():
    torch.manual_seed(0)
    program = capture(Chain().eval(), torch.randn(2, 3, 8, 8)).eval()
    return program, [(torch.randn(2, 3, 8, 8),) for _ in range(3)]


def test_a_staged_run_yields_what_a_tapped_module_computes_and_wants_graph_order():
    program, batches = _program_and_batches()
    names = [node.name for node in program.module.graph.nodes if node.op == "call_function"]
    stages = [names[1:3], names[5:6], names[-2:]]
    staged = StagedRun(program.module, batches)
    for stage in stages:
        tapped = tap_nodes(program.module, stage)
        for batch, values in zip(batches, staged.advance(stage)):
            for name, expected in zip(stage, run_tapped(tapped, batch)):
                torch.testing.assert_close(values[name], expected, rtol=0, atol=0)
    output = next(node for node in program.module.graph.nodes if node.op == "output")
    assert all(set(values) <= set(output.all_input_nodes) for values in staged.values)  # what later nodes read
    with pytest.raises(Exception, match="graph order"):
        list(staged.advance(names[:1]))


def _specs(program) -> list[InputSpec]:
    combing = find_channel_groups(program.module)
    removed = {int(c) for group in combing.groups for c in group.classes[:2]}
    consumers, _ = find_consumers(program.module, combing.analysis, removed)
    return list(dict.fromkeys(consumer.spec for consumer in consumers))


def test_hessians_gathered_a_chunk_at_a_time_equal_those_gathered_at_once(monkeypatch):
    """With a budget that puts every layer input in its own chunk, the same Hessians as with one chunk."""
    from prunefx.graph import layer_hessians

    program, batches = _program_and_batches()
    specs = _specs(program)
    assert len(specs) >= 3
    at_once = {spec: hessian for spec, hessian, _ in iter_hessians(program.module, specs, batches)}
    monkeypatch.setattr(layer_hessians, "_HESSIAN_BUDGET", 1)
    chunked = {spec: hessian for spec, hessian, _ in iter_hessians(program.module, specs, batches)}
    assert set(chunked) == set(at_once)
    for spec, hessian in at_once.items():
        torch.testing.assert_close(chunked[spec], hessian, rtol=1e-12, atol=1e-12)


def test_a_caller_holding_a_hessian_holds_no_staging_buffer_of_its_chunk(monkeypatch):
    """Every product of a chunk is made before its first H is yielded, and the float64 rows' buffer freed: a
    caller working on an H (the obs elimination, where a ViT-L peaks) does not hold it too."""
    from prunefx.graph import layer_hessians

    made = []

    class Recorded(layer_hessians.Float64Rows):
        def __init__(self):
            super().__init__()
            made.append(self)

    monkeypatch.setattr(layer_hessians, "Float64Rows", Recorded)
    program, batches = _program_and_batches()
    yielded = 0
    for _ in iter_hessians(program.module, _specs(program), batches):
        yielded += 1
        assert made and all(staging.buffer is None for staging in made)
    assert yielded >= 3


@pytest.mark.parametrize("columns", [70, 1100])  # 1100: past the blocks the unpacking mirrors a triangle in
def test_a_packed_hessian_is_the_hessian_rounded_to_float32_in_a_quarter_of_its_bytes(columns):
    x = torch.randn(300, columns, dtype=torch.float64)
    hessian = x.t() @ x
    hessian = (hessian + hessian.t()) / 2  # a product's rounding is not symmetric; a gathered H is
    packed = PackedHessian(hessian, torch.float32)
    assert packed.data.numel() * packed.data.element_size() < 0.3 * hessian.numel() * hessian.element_size()
    unpacked = packed.unpack()
    assert unpacked.dtype == torch.float64 and torch.equal(unpacked, unpacked.t())
    torch.testing.assert_close(unpacked, hessian.float().double(), rtol=0, atol=0)
    torch.testing.assert_close(PackedHessian(hessian, torch.float64).unpack(), hessian, rtol=0, atol=0)


def test_a_spilled_packed_hessian_holds_nothing_in_memory_and_unpacks_the_same():
    x = torch.randn(300, 70, dtype=torch.float64)
    hessian = x.t() @ x
    hessian = (hessian + hessian.t()) / 2
    spilled, held = PackedHessian(hessian, torch.float32, spill=True), PackedHessian(hessian, torch.float32)
    assert spilled.bytes_in_memory == 0 and held.bytes_in_memory == 70 * 71 // 2 * 4
    assert torch.equal(spilled.unpack(), held.unpack()) and torch.equal(spilled.unpack(), held.unpack())


def test_a_hessian_that_cannot_be_spilled_stays_in_memory(monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(packed_hessian.tempfile, "TemporaryFile", full)
    hessian = torch.eye(5, dtype=torch.float64)
    packed = PackedHessian(hessian, torch.float32, spill=True)
    assert packed.bytes_in_memory == 15 * 4 and torch.equal(packed.unpack(), hessian)


@pytest.mark.parametrize("in_memory", ["default", "nothing"])
def test_the_cache_holds_packed_hessians_and_the_compensation_drops_them(monkeypatch, in_memory):
    """A cache filled by a first reader holds H packed (in temporary files past its memory budget); the
    compensation, its last reader, leaves no Hessian in it, and compensates exactly as it does from
    Hessians gathered afresh (rounded alike)."""
    if in_memory == "nothing":
        monkeypatch.setattr(packed_hessian, "CACHE_IN_MEMORY", 0)
    program, batches = _program_and_batches()
    combing = find_channel_groups(program.module)
    removed = {int(c) for c in combing.groups[0].classes[:3]}
    other = program.clone()  # compensated alone (the compensation rewrites its weights)
    other_combing = find_channel_groups(other.module)
    alone = compensate_removed_inputs(other.module, other_combing.analysis,
                                      {int(c) for c in other_combing.groups[0].classes[:3]}, batches)
    cache: dict = {}
    specs = _specs(program)
    for spec, hessian, _ in iter_hessians(program.module, specs, batches, cache=cache):
        assert isinstance(cache[spec][0], PackedHessian)
        assert (cache[spec][0].bytes_in_memory == 0) == (in_memory == "nothing")
        torch.testing.assert_close(cache[spec][0].unpack(), hessian, rtol=1e-6, atol=1e-6 * float(hessian.abs().max()))
    cache["other"] = 1  # not a Hessian: left alone
    shared = compensate_removed_inputs(program.module, combing.analysis, removed, batches, hessians=cache)
    assert cache == {"other": 1}
    for mine, theirs in zip(shared["compensated"], alone["compensated"]):
        assert (mine["error_with"], mine["error_without"]) == (theirs["error_with"], theirs["error_without"])
    for name, tensor in program.module.state_dict().items():
        assert torch.equal(tensor, other.module.state_dict()[name]), name
    assert len(shared["compensated"]) == len(alone["compensated"]) > 0


class SlowsWithMacs:
    """A stand-in measurer whose time grows slower than the MACs, so that a width search takes several
    candidates to reach its budget."""

    round_to = 2

    def __init__(self, dense):
        self.macs = count(dense).macs

    def __call__(self, dense, candidate):
        return Timing(10 * (count(dense).macs / self.macs) ** 0.6, 10 * (count(candidate).macs / self.macs) ** 0.6, 0.0)

    def confirm(self, dense, candidate):
        return self(dense, candidate)


def test_a_budget_search_gathers_the_dense_hessians_once_for_every_candidate(monkeypatch):
    """The obs scores of the dense model are cached across a search's candidates; inside the search the Hessians
    gathered with them stay too (saliency.hessians_shared, entered by the search's Asked), so that every candidate's compensation reads them
    instead of running the network again: one gathering pass, and the model chosen as without the sharing."""
    program, batches = _program_and_batches()
    saliency._LAST.clear()  # scored afresh, whatever ran before in this process
    gathered = []
    original = StagedRun.__init__
    monkeypatch.setattr(StagedRun, "__init__", lambda self, *args: gathered.append(1) or original(self, *args))
    config = {"speedup": 1.6, "latency": SlowsWithMacs(program), "calibration": batches, "importance": "obs",
              "compensate": True, "tolerance": 0.05}
    shared = prune_to_budget(program.clone(), config=config)
    assert len(shared.stats["trace"]) >= 2 and len(gathered) == 1
    saliency._LAST.clear()  # scored afresh again
    monkeypatch.setattr(measurement, "hessians_shared", contextlib.nullcontext)
    alone = prune_to_budget(program.clone(), config=config)
    assert len(gathered) == 1 + len(alone.stats["trace"])  # the scores', then each candidate's compensation
    expected = alone.program.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in shared.program.state_dict().items())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_a_cache_of_hessians_gathered_on_a_gpu_waits_on_the_host_and_unpacks_on_the_gpu():
    program, batches = _program_and_batches()
    program.module.to("cuda")
    batches = [tuple(x.cuda() for x in batch) for batch in batches]
    cache: dict = {}
    for spec, hessian, _ in iter_hessians(program.module, _specs(program), batches, cache=cache):
        packed, rows, device = cache[spec]
        assert hessian.is_cuda and device.type == "cuda" and packed.data.device.type == "cpu"
        assert rows.kept is None or rows.kept.device.type == "cpu"
        unpacked = packed.unpack()
        assert unpacked.is_cuda
        torch.testing.assert_close(unpacked, hessian, rtol=1e-6, atol=1e-6 * float(hessian.abs().max()))


def test_a_wide_layer_input_with_many_rows_has_its_hessian_summed_over_rows_drawn_at_random(monkeypatch):
    """Past GRAM_BUDGET, H comes from about `most_rows` rows drawn at random, scaled to stand for every row: the
    oracle is H summed over all of them, which the drawn one must approach (its trace, and the matrix as a whole)."""
    torch.manual_seed(0)
    columns, batches = 16, 8
    mixing = torch.randn(columns, columns)
    data = [torch.randn(512, columns) @ mixing for _ in range(batches)]  # correlated columns, as activations are
    full = gram_sum.GramSum()
    for x in data:
        full.add(x)
    everything = full.finish()
    most = gram_sum.most_rows(columns)
    assert most == gram_sum.GRAM_BUDGET // columns**2  # far more rows than these batches hold
    monkeypatch.setattr(gram_sum, "GRAM_BUDGET", 1024 * columns**2)  # a quarter of the 4096 rows
    drawn = gram_sum.GramSum(most_rows=gram_sum.most_rows(columns), batches=batches)
    for x in data:
        drawn.add(x)
    estimate = drawn.finish()
    assert drawn.rows == 1024 and drawn.drawn_from() == 4096
    assert abs(estimate.trace() / everything.trace() - 1) < 0.1
    assert torch.linalg.matrix_norm(estimate - everything) / torch.linalg.matrix_norm(everything) < 0.15


def test_rows_are_drawn_no_fewer_than_the_floor_and_not_at_all_within_the_budget(monkeypatch):
    program, batches = _program_and_batches()
    specs = _specs(program)
    summed = {spec: rows for spec, _, rows in iter_hessians(program.module, specs, batches)}
    assert all(rows.drawn_from is None for rows in summed.values())
    monkeypatch.setattr(gram_sum, "GRAM_BUDGET", 0)  # every input at its floor: 2 rows a column
    drawn = {spec: rows for spec, _, rows in iter_hessians(program.module, specs, batches)}
    assert any(rows.drawn_from for rows in drawn.values())
    for spec, rows in drawn.items():
        columns = layer_hessians._columns(program.module, spec)
        floor = gram_sum.MIN_ROWS_PER_COLUMN * columns
        if summed[spec].count <= floor:
            assert rows.drawn_from is None and rows.count == summed[spec].count
        else:
            assert rows.drawn_from == summed[spec].count and abs(rows.count - floor) <= len(batches)


def test_a_global_choice_from_drawn_rows_keeps_nearly_the_channels_all_rows_keep(monkeypatch):
    """The oracle is the same global obs choice from every row: with the widest layer inputs (ResNet-20's last
    stage, 576 columns) summed over a fifth of their 6272 rows (about MIN_ROWS_PER_COLUMN a column), at most 3 % of
    the channels kept move between groups (8 of 544 here; at a twelfth of the rows, 127)."""
    from prunefx.models import build_model

    torch.manual_seed(0)
    program = capture(build_model("prunefx:resnet20").module.eval(), torch.randn(32, 1, 28, 28)).eval()
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 1, 28, 28, generator=generator),) for _ in range(4)]  # 6272 rows in the last stage

    everything = _kept_widths(program, batches)
    monkeypatch.setattr(layer_hessians, "most_rows", lambda columns: 1200 if columns >= 576 else 10**9)
    drawn = _kept_widths(program, batches)
    assert drawn.keys() == everything.keys()
    moved = sum(abs(drawn[name][0] - everything[name][0]) for name in everything)
    assert 0 < moved <= 0.03 * sum(kept for kept, _ in everything.values()), (everything, drawn)


def _kept_widths(program, batches) -> dict[str, tuple[int, int]]:
    """{convolution weight: (output channels kept, before)} after a global obs choice of half the MACs."""
    from prunefx.passes import remove_channels

    saliency._LAST.clear()  # the last model's scores are kept for the same model and data
    pruned = remove_channels(program.clone(), config={"macs": 0.5, "importance": "obs", "calibration": batches,
                                                      "round_to": 1, "compensate": False}).program
    before = {name: weight.shape[0] for name, weight in program.module.named_parameters() if weight.dim() == 4}
    return {name: (weight.shape[0], before[name]) for name, weight in pruned.module.named_parameters()
            if weight.dim() == 4}


@pytest.mark.parametrize("sizes", [(4000, 100, 100, 100), (100, 4000, 4000, 4000), (0, 2000, 2000)],
                         ids=["a large batch first", "a small batch first", "an empty batch first"])
def test_batches_of_unequal_rows_each_give_their_share_and_h_stays_the_sum_over_every_row(sizes):
    """Each batch gives at most its share (most_rows / batches), scaled to stand for its own rows: the oracle is H
    over every row; an empty batch gives nothing and changes nothing."""
    torch.manual_seed(0)
    columns, most = 16, 400
    mixing = torch.randn(columns, columns)
    data = [torch.randn(size, columns) @ mixing for size in sizes]
    full, drawn = gram_sum.GramSum(), gram_sum.GramSum(most_rows=most, batches=len(sizes))
    for x in data:
        full.add(x)
        drawn.add(x)
    everything, estimate = full.finish(), drawn.finish()
    share = -(-most // len(sizes))
    assert drawn.rows == sum(min(size, share) for size in sizes) and drawn.drawn_from() == sum(sizes)
    assert abs(estimate.trace() / everything.trace() - 1) < 0.1
