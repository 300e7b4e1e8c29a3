"""A budget whose width search is steered by a per-layer latency table (`meet_budget(choose_by="latency")`,
`prunefx prune --choose-by latency`).

The runtime is a stand-in whose latency is a fixed cost per layer kind and width: 3x3 convolutions cost 20 times
what 1x1 and depthwise ones cost per multiply. The layer timer is faked with the same cost, so the table is exact;
the oracle is the stand-in's own ratio on the Program returned, computed from the graph's layers at their final
widths, which the search never sees as such."""

import importlib
import json

import pytest
import torch

from prunefx.budget import meet_budget
from prunefx.graph import Program, capture, count
from prunefx.graph.channels.timed_layers import timed_layers
from prunefx.graph.errors import PrunefxError
from prunefx.models import build_model
from prunefx.passes.budget.measurement import Timing

pytestmark = pytest.mark.usefixtures("one_thread")
WIDTH = {"importance": "l2", "compensate": False}


def layer_ms(layer) -> float:
    """The stand-in's time of one layer: its multiplies, twenty times dearer in a dense 3x3 convolution."""
    spatial = 1
    for size in layer.input_shape[2:]:
        spatial *= size
    depthwise = layer.groups > 1 and layer.groups == layer.in_channels
    per_output = layer.in_channels // layer.groups * (spatial if layer.kind == "conv2d" else 1)
    dear = 20.0 if layer.kind == "conv2d" and tuple(layer.kernel) == (3, 3) and not depthwise else 1.0
    return dear * layer.out_channels * per_output * max(1, len(layer.kernel) and layer.kernel[0] ** 2) / 1e6


def stand_in_ms(program) -> float:
    return sum(layer_ms(layer) for layer in timed_layers(program.module)) + 0.01


class StandIn:
    round_to = 4

    def __call__(self, dense, candidate):
        return Timing(stand_in_ms(dense), stand_in_ms(candidate), 0.0)

    def confirm(self, dense, candidate):
        return self(dense, candidate)


class ByMacs(StandIn):
    """A runtime whose time is 5 ms fixed and 5 ms for the dense MACs `macs`, in proportion."""

    def __init__(self, macs: int):
        self.macs = macs

    def __call__(self, dense, candidate):
        return Timing(5 + 5 * count(dense).macs / self.macs, 5 + 5 * count(candidate).macs / self.macs, 0.0)


def small_mobilenet():
    """A captured MobileNetV2 for 28 x 28 images and four calibration batches."""
    torch.manual_seed(0)
    program = capture(build_model("prunefx:mobilenetv2_small").module.eval(), torch.randn(1, 1, 28, 28)).eval()
    return program, [torch.randn(1, 1, 28, 28) for _ in range(4)]


class FakeLayerTimer:
    backend, device, precision, settings = "fake", "test device", "fp32", "stand-in"

    def __init__(self):
        self.calls, self.settings_given = 0, []

    def given(self, settings):
        self.settings_given.append(settings)
        return self

    def __call__(self, layer) -> float:
        self.calls += 1
        return layer_ms(layer)


@pytest.fixture
def timer(monkeypatch):
    fake = FakeLayerTimer()
    module = importlib.import_module("prunefx.runtime.tables.timer_by_name")
    monkeypatch.setattr(module, "layer_timer", lambda name, settings: fake.given(settings))
    return fake


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return capture(build_model("prunefx:resnet20").module.eval(), torch.randn(1, 1, 28, 28), name="resnet20").eval()


def test_a_latency_steered_search_meets_the_budget_on_the_runtime_and_reports_time_saved(resnet, timer, tmp_path):
    chosen, outcome = meet_budget(resnet, speedup=1.6, measurer=StandIn(), choose_by="latency", width=WIDTH,
                                  latency_cache=str(tmp_path), tolerance=0.25)
    assert stand_in_ms(resnet) / stand_in_ms(chosen) >= 1.6  # the oracle, on the Program returned
    trace = outcome.search["trace"]
    assert trace and all("layer_time_asked" in row for row in trace) and outcome.search["searched"] == "layer_time"
    groups = outcome.result.stats()["prune_to_budget"]["remove_channels"]["groups"]
    assert any(group.get("ms_saved", 0) > 0 for group in groups)
    assert timer.calls > 0


def test_the_report_gives_the_tables_prediction_error_against_whole_model_measurements(resnet, timer, tmp_path):
    """The stand-in runtime's whole-model time is the table's sum plus a fixed 0.01 ms, so the table's speed-up
    is a little above the measured one: the error is small but not zero, and is the trace's own median."""
    _, outcome = meet_budget(resnet, speedup=1.6, measurer=StandIn(), choose_by="latency", width=WIDTH,
                             latency_cache=str(tmp_path), tolerance=0.25)
    rows = [row for row in outcome.search["trace"] if "same_widths_as" not in row]
    errors = sorted(abs(row["table_speedup"] / row["speedup"] - 1) for row in rows)
    assert rows and all(row["table_speedup"] > row["speedup"] > 1 for row in rows)
    middle = len(errors) // 2
    median = errors[middle] if len(errors) % 2 else (errors[middle - 1] + errors[middle]) / 2
    assert outcome.search["table_error"] == pytest.approx(median) and 0 < outcome.search["table_error"] < 0.05


def test_the_table_is_timed_once_per_device_and_read_from_the_cache_after(resnet, timer, tmp_path):
    _, built = meet_budget(resnet, speedup=1.3, measurer=StandIn(), choose_by="latency", width=WIDTH,
                           latency_cache=str(tmp_path), tolerance=0.5, max_candidates=2)
    first = timer.calls
    _, read = meet_budget(resnet, speedup=1.3, measurer=StandIn(), choose_by="latency", width=WIDTH,
                          latency_cache=str(tmp_path), tolerance=0.5, max_candidates=2)
    assert first > 0 and timer.calls == first
    # the report says what the table cost: the first build timed each geometry once (layers alike share
    # entries), the second read every entry from the cache
    built, read = (outcome.budget_entry()["measurement"]["latency_table"] for outcome in (built, read))
    assert built["entries_timed"] == first and built["seconds"] >= 0
    assert read["entries_timed"] == 0 and read["entries_cached"] == built["entries_timed"] + built["entries_cached"]
    assert read["layers"] == built["layers"] > 0


def test_steering_by_time_keeps_more_of_the_cheap_layers_than_steering_by_macs(resnet, timer, tmp_path):
    """Where 3x3 convolutions hold the time, the latency-steered search meets the same budget with more MACs
    left: it cuts the dear layers, the MACs search cuts all layers alike."""
    by_time, _ = meet_budget(resnet, speedup=1.6, measurer=StandIn(), choose_by="latency", width=WIDTH,
                             latency_cache=str(tmp_path), tolerance=0.25)
    by_macs, _ = meet_budget(resnet, speedup=1.6, measurer=StandIn(), width=WIDTH, tolerance=0.25)
    assert min(stand_in_ms(resnet) / stand_in_ms(p) for p in (by_time, by_macs)) >= 1.6
    assert count(by_time).macs >= count(by_macs).macs


def test_without_a_choice_a_cuda_budget_times_a_table_and_an_ort_budget_steers_by_macs(resnet, timer, tmp_path):
    """The backend decides when the caller does not: its channel_choice, what measured faster on it."""
    _, on_ort = meet_budget(resnet, speedup=1.3, measurer=StandIn(), width=WIDTH, tolerance=0.5, max_candidates=2)
    assert timer.calls == 0 and on_ort.search["searched"] != "layer_time"
    _, on_cuda = meet_budget(resnet, speedup=1.3, backend="cuda", measurer=StandIn(), width=WIDTH,
                             latency_cache=str(tmp_path), tolerance=0.5, max_candidates=2)
    assert timer.calls > 0 and on_cuda.search["searched"] == "layer_time"
    _, asked = meet_budget(resnet, speedup=1.3, backend="cuda", measurer=StandIn(), choose_by="macs", width=WIDTH,
                           tolerance=0.5, max_candidates=2)
    assert asked.search["searched"] != "layer_time"


def test_a_depth_only_search_on_cuda_times_no_table_it_would_not_read(timer, tmp_path):
    """cuda's channel choice is latency, but the depth route never reads the per-layer table: it was timed all
    the same (every prunable layer at several widths on the GPU) and named in the report as part of the measurement."""
    program, calibration = small_mobilenet()
    macs = count(program).macs
    chosen, outcome = meet_budget(program, speedup=1.1, backend="cuda", measurer=ByMacs(macs), calibration=calibration,
                                  routes=("depth",), latency_cache=str(tmp_path), tolerance=0.5)
    assert outcome.route == "depth" and count(chosen).macs < macs
    assert timer.calls == 0 and "latency_table" not in outcome.budget_entry().get("measurement", {})


def test_an_unknown_choice_is_refused_in_one_line(resnet):
    with pytest.raises(PrunefxError, match="choose_by is one of macs, latency"):
        meet_budget(resnet, speedup=1.5, measurer=StandIn(), choose_by="flops")


def test_the_cli_spends_a_macs_target_where_the_table_says_time_goes(resnet, timer, tmp_path, monkeypatch, capsys):
    """`prune --macs 0.5 --choose-by latency`: the same MACs as `--macs 0.5` alone (the oracle: prunefx's count of
    each written model.pt2), spent on the dear 3x3 convolutions, so the stand-in runtime runs the table's choice
    faster; the table is timed at the width multiple of the backend (the stand-in's 4) and the report says what
    it predicted."""
    from prunefx.cli import main

    monkeypatch.setenv("PRUNEFX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("prunefx.cli.options.budget_latency", lambda args: StandIn())
    saved = str(resnet.save(tmp_path / "resnet.pt2"))
    written = {}
    for choice in ("macs", "latency"):
        out = tmp_path / choice
        code = main(["prune", saved, "--macs", "0.5", "--choose-by", choice, "--importance", "l2", "-o", str(out)])
        assert code == 0, capsys.readouterr().err
        written[choice] = (Program.load(out / "model.pt2"), json.loads((out / "report.json").read_text()))
    printed = capsys.readouterr().out
    assert "latency table on ort at batch 1" in printed and timer.calls > 0
    dense_macs = count(resnet).macs
    for program, _ in written.values():
        assert count(program).macs / dense_macs == pytest.approx(0.5, rel=0.03)
    (by_macs, macs_report), (by_time, time_report) = written["macs"], written["latency"]
    assert stand_in_ms(by_time) < stand_in_ms(by_macs)
    assert time_report["round_to"] == StandIn.round_to and macs_report["round_to"] == 8
    assert "table_ms" in time_report["target"] and "table_ms" not in macs_report["target"]
    assert "latency table" in time_report["seconds"]
    table = time_report["target"]["table_ms"]  # the MACs choice's plan priced by the same table: no slower
    assert table["planned"] <= table["without_table"] < table["dense"]
    assert f"{table['planned']:.3f} ms chosen by latency, {table['without_table']:.3f} ms chosen by MACs" in printed


def test_the_python_api_times_a_table_that_a_macs_target_takes(resnet, timer, tmp_path):
    """prunefx.latency_table, then remove_channels to half the MACs with it: the MACs asked (prunefx's count),
    cut where the stand-in runtime's time is, so that runtime runs it faster than the MACs choice at round_to 4."""
    import prunefx
    from prunefx.passes.remove_channels import remove_channels

    table = prunefx.latency_table(resnet, backend="ort", multiple=4, cache_dir=str(tmp_path))
    assert table.summary()["layers"] == len(timed_layers(resnet.module)) and timer.calls > 0
    by_time, by_macs = (remove_channels(resnet.clone(), config={"macs": 0.5, "round_to": 4, **WIDTH, **extra}).program
                        for extra in ({"latency_table": table}, {}))
    assert count(by_time).macs / count(resnet).macs == pytest.approx(0.5, rel=0.03)
    assert stand_in_ms(by_time) < stand_in_ms(by_macs)
    with pytest.raises(PrunefxError, match="latency_table"):
        prunefx.latency_table(resnet.module)


@pytest.mark.parametrize("flags, message", [
    (["--backend", "cuda"], "or --choose-by latency"),  # nothing times on the backend
    (["--choose-by", "latency", "--local"], "takes --ranking global"),  # the table would go unused
    (["--choose-by", "latency", "--batch", str(10**20)], "more than prunefx allocates"),  # no layer input fits
])
def test_the_cli_refuses_what_a_macs_target_would_not_use(tmp_path, capsys, timer, flags, message):
    from prunefx.cli import EXIT_USER_ERROR, main

    code = main(["prune", "prunefx:resnet20", "--macs", "0.5", *flags, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists() and timer.calls == 0  # refused before any table is timed


@pytest.mark.slow
def test_the_cli_times_the_latency_table_at_the_threads_it_times_whole_models_at(resnet, timer, tmp_path,
                                                                                 monkeypatch, capsys):
    """`--threads` reaches the per-layer table as it reaches the whole-model pair (the table was timed at the
    default thread count whatever --threads said)."""
    from prunefx.cli import main

    pairs = []
    monkeypatch.setenv("PRUNEFX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("prunefx.cli.options.budget_latency", lambda args: pairs.append(args.threads) or StandIn())
    code = main(["prune", str(resnet.save(tmp_path / "resnet.pt2")), "--speedup", "1.3", "--choose-by", "latency",
                 "--threads", "3", "--importance", "l2", "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert pairs == [3] and [settings.threads for settings in timer.settings_given] == [3]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_the_cli_on_a_gpu_keeps_the_macs_asked_and_spends_them_by_the_cuda_table(resnet, tmp_path, monkeypatch, capsys):
    """`prune --macs 0.5 --choose-by latency --backend cuda --batch 8`, nothing faked: the table timed on the GPU
    at the cuda backend's width multiple, the written model at half the MACs (prunefx's count of the file)."""
    from prunefx.cli import main

    monkeypatch.setenv("PRUNEFX_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code = main(["prune", str(resnet.save(tmp_path / "resnet.pt2")), "--macs", "0.5", "--choose-by", "latency",
                 "--backend", "cuda", "--batch", "8", "--importance", "l2", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert count(Program.load(out / "model.pt2")).macs / count(resnet).macs == pytest.approx(0.5, rel=0.03)
    table = report["target"]["table_ms"]
    assert 0 < table["planned"] <= table["without_table"] < table["dense"] and "latency table" in report["seconds"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_width_and_depth_together_on_a_gpu_meet_the_budget_by_the_cuda_table(tmp_path):
    """The joint route on the cuda backend, nothing faked: the table timed on the GPU (the merged layers too), the
    candidates timed there as CUDA graphs, and the answer checked by a pair of the backend made afresh. A small
    network at batch 32 is bound by its kernels' count on a GPU, which merging blocks cuts."""
    from prunefx.runtime import latency_pair

    torch.manual_seed(0)
    program = capture(build_model("prunefx:mobilenetv2_small").module.eval(), torch.randn(32, 1, 28, 28)).eval()
    calibration = [torch.randn(32, 1, 28, 28) for _ in range(2)]
    chosen, outcome = meet_budget(program, speedup=1.2, backend="cuda", batch=32, choose_by="latency", width=WIDTH,
                                  calibration=calibration, routes=("width+depth",), latency_cache=str(tmp_path),
                                  max_candidates=4)
    entry = outcome.budget_entry()
    assert outcome.route == "width+depth" and entry["backend"] == "cuda"
    assert entry["measurement"]["latency_table"]["entries_timed"] > 0
    assert chosen.module.graph is not program.module.graph and next(chosen.module.parameters()).device.type == "cpu"
    timing = latency_pair("cuda", threads=1, runs=50, precision="fp16", batch=32)(program, chosen)
    assert timing.dense_ms / timing.ms >= 1.2 * 0.9  # a fresh pair, within the noise of one short measurement


@pytest.mark.parametrize("options", [{"multiple": 0}, {"multiple": 1.5}, {"multiple": True}, {"threads": 0},
                                     {"batch": "2"}, {"batch": 10**12}])
def test_latency_table_refuses_what_it_would_read_as_something_else(resnet, timer, options):
    """A multiple of 0 read as the default, 1.5 rounded to 1, a batch no layer input fits in memory: refused in
    one PrunefxError before anything is timed."""
    import prunefx

    with pytest.raises(PrunefxError):
        prunefx.latency_table(resnet, backend="ort", **options)
    assert timer.calls == 0


def test_width_and_depth_together_time_the_layers_of_the_network_depth_merged(timer, tmp_path):
    """The joint route prunes the network depth merged: its merged convolutions are timed as the dense layers were
    (the dense model's table alone refused every candidate: 'has no layer conv2d_default'), and the table's cost
    in the report counts them."""
    # a runtime whose time follows the MACs: merged blocks make dense 3x3 convolutions, which the per-kind costs
    # of StandIn price high
    program, calibration = small_mobilenet()
    macs = count(program).macs
    chosen, outcome = meet_budget(program, speedup=1.4, measurer=ByMacs(macs), choose_by="latency", width=WIDTH,
                                  calibration=calibration, routes=("width+depth",), latency_cache=str(tmp_path),
                                  tolerance=0.5)
    assert outcome.route == "width+depth" and 10 / (5 + 5 * count(chosen).macs / macs) >= 1.4
    dense_layers = {layer.name for layer in timed_layers(program.module)}
    assert {layer.name for layer in timed_layers(chosen.module)} - dense_layers  # merged layers, priced too
    table = outcome.budget_entry()["measurement"]["latency_table"]
    assert table["entries_timed"] == timer.calls > 0
