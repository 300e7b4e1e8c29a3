"""The latency-backend registry (runtime/backends/): lookups, and a backend added from a test reaching budgets,
the CLI's choices and help, the budget report and the docs table without any other file changing.

The test backend times nothing: its "latency" is a known function of the model (MS_PER_WEIGHT per
convolution weight), so what the budget search is told can be checked against that truth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from torch import nn

from prunefx.cli import build_parser
from prunefx.cli import options as cli_options
from prunefx.graph import Program, capture
from prunefx.graph.errors import PrunefxError
from prunefx.graph.fingerprint import fingerprint
from prunefx.passes.prune_to_budget import prune_to_budget
from prunefx.reports.budget_text import search_lines
from prunefx.runtime import backends, latency_pair
from prunefx.runtime.backends import Backend, Settings
from prunefx.runtime.backends import width_multiple as backend_multiple
from prunefx.runtime.backends.gpu_pair import pair_of

MS_PER_WEIGHT = 1e-4
DOCS = Path(__file__).resolve().parents[1] / "docs" / "backends.md"


def _weights(program: Program) -> int:
    return sum(p.numel() for p in program.module.parameters() if p.dim() == 4)


class CountingBackend(Backend):
    """Latency proportional to the convolution weights; remembers the settings it was made with."""

    name, label, rank = "counting", "a weight counter", 70
    needs = "nothing"
    precisions = ("fp32", "fp8")
    made: list[Settings] = []

    def width_multiple(self, precision: str) -> int:
        return 4

    def latency_pair(self, settings: Settings):
        self.made.append(settings)

        class Sources:
            def get(self, program):
                return program, fingerprint(program)

        def timing(a, b, *, runs, warmup):
            return MS_PER_WEIGHT * _weights(a[0]), MS_PER_WEIGHT * _weights(b[0]), 0.0

        return pair_of(Sources(), timing, settings, self.width_multiple(settings.precision))


@pytest.fixture
def counting():
    backend = backends.register(CountingBackend())
    CountingBackend.made = []
    yield backend
    backends.unregister(backend.name)


def _net(width: int = 32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(width, 8, 3, padding=1)).eval()
    return capture(model, torch.randn(1, 3, 16, 16), name=f"net{width}").eval()


def test_the_shipped_backends_are_registered_default_first():
    assert backends.names()[0] == "ort"
    assert set(backends.names()) == {"ort", "trt", "cuda", "torch-trt", "trtexec", "torch"}
    assert "torch" not in backends.names(budgets=True)  # bench only
    assert set(backends.names(profiles=True)) == {"ort", "trt", "trtexec", "cuda"}
    assert backends.label("cuda") == "PyTorch on CUDA" and backends.label("unknown") == "unknown"


def test_an_unknown_backend_is_one_line_listing_the_choices():
    with pytest.raises(PrunefxError) as error:
        backends.get("tvm")
    assert str(error.value) == f"unknown backend 'tvm': choose one of {', '.join(backends.names())}"
    with pytest.raises(PrunefxError, match="unknown budget backend 'torch'"):
        latency_pair("torch", threads=1, runs=1)
    with pytest.raises(PrunefxError, match="already registered"):
        backends.register(backends.get("ort"))


def test_a_registered_backend_serves_budgets_and_is_gone_when_unregistered(counting):
    dense = _net(32)
    pair = latency_pair("counting", threads=1, runs=3, precision="fp8", batch=4)
    assert counting.made[-1].precision == "fp8" and counting.made[-1].batch == 4 and pair.round_to == 4
    result = prune_to_budget(dense.clone(), config={"speedup": 1.5, "latency": pair})
    measured = _weights(dense) / _weights(result.program)  # the stand-in's truth on the model returned
    assert result.stats["met"] and 1.5 <= measured <= 1.5 * 1.25
    assert backend_multiple("counting", "fp8") == 4
    backends.unregister("counting")
    with pytest.raises(PrunefxError, match="unknown budget backend 'counting'"):
        latency_pair("counting", threads=1, runs=3)


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_the_cli_offers_a_registered_backend_and_measures_on_it(counting, tmp_path):
    args = _parse(["prune", "m.pt2", "--speedup", "1.5", "--backend", "counting", "--batch", "2", "-o", "out"])
    assert "counting" in build_parser()._subparsers._group_actions[0].choices["prune"].format_help()
    cli_options.check_budget_backend(args, budgeted=True)
    assert args.precision == "fp32"  # the backend's default, filled in
    assert cli_options.measured_on(args) == {"backend": "counting", "precision": "fp32", "batch": 2, "runs": args.runs}
    dense_ms, ms, _ = cli_options.budget_latency(args)(_net(32), _net(16))
    assert (dense_ms, ms) == pytest.approx((MS_PER_WEIGHT * _weights(_net(32)), MS_PER_WEIGHT * _weights(_net(16))))
    assert counting.made[-1].batch == 2
    measurement = cli_options.measurement(args)  # the one object every measurement of the run is made from
    assert measurement.backend == "counting" and measurement.settings.batch == 2
    assert (measurement.settings.precision, measurement.settings.threads) == ("fp32", args.threads)
    speedup = cli_options.pass_measure(args)(_net(32), _net(16))  # what passes that keep what is faster get
    assert speedup == pytest.approx(_weights(_net(32)) / _weights(_net(16)))
    budget = {"trace": [], "budget": "1.5x", "speedup": 1.6, "ms": 1.0, "dense_ms": 1.6,
              **cli_options.measured_on(args)}
    assert "measured on a weight counter at batch 2 (" in search_lines(budget)[-1]
    backends.unregister("counting")
    with pytest.raises(SystemExit):
        _parse(["prune", "m.pt2", "--speedup", "1.5", "--backend", "counting", "-o", "out"])


def test_the_docs_table_is_the_registry(counting):
    backends.unregister("counting")  # the table documents the shipped backends
    assert backends.markdown_table() in DOCS.read_text()


def test_a_backend_times_a_small_program_alone():
    """`time_program`, what a per-layer latency table reuses: statistics of the Program's ONNX file."""
    stats = backends.get("ort").time_program(_net(8), Settings(runs=5, warmup=1, threads=1))
    assert stats["runs"] == 5 and 0 < stats["median_ms"] <= stats["p90_ms"]


def test_every_latency_measurement_defaults_to_the_commands_thread_count():
    """The library's ONNX Runtime measures (merge_blocks' speed-up, a latency pair, a backend's Settings) and the
    commands' --threads time with one default: the same model measured from Python and from the command line is
    the same measurement."""
    import inspect

    from prunefx.cli import build_parser
    from prunefx.runtime import onnx_latency_pair, onnx_speedup

    commands = {build_parser().parse_args([name, "prunefx:resnet20", *flags, "-o", "out"]).threads
                for name, flags in (("prune", ["--speedup", "2"]), ("depth", ["--speedup", "2"]),
                                    ("compress", ["--recipe", "finetune", "--data", "fashion-mnist"]))}
    defaults = {inspect.signature(function).parameters["threads"].default for function in (onnx_speedup, onnx_latency_pair)}
    assert len(commands) == 1 and defaults == commands
    assert Settings().threads in commands  # onnx_side_by_side(files, Settings()) times as `bench --vs` does


def test_a_budget_says_the_runs_and_the_threads_it_was_measured_with():
    """report.json's `budget`: threads where the backend reads them (ONNX Runtime), runs always."""
    from prunefx.budget.outcome import MeasuredOn
    from prunefx.runtime.measure.pairs import Measurement

    said = MeasuredOn.of(Measurement.of("ort", threads=1, runs=7)).to_dict()
    assert said == {"backend": "ort", "precision": "fp32", "batch": 1, "runs": 7, "threads": 1}
    sleeping = Measurement.of("ort", threads=1, runs=7, spinning=False, flush_denormals=False, rounds=2)
    assert MeasuredOn.of(sleeping).to_dict() == {**said, "spinning": False, "flush_denormals": False, "rounds": 2}


@pytest.mark.parametrize("option", [{"spinning": False}, {"flush_denormals": True}, {"rounds": 2}])
def test_a_session_option_is_refused_on_a_backend_that_does_not_read_it(counting, option):
    """ONNX Runtime's session options on another backend would be reported and not applied."""
    from prunefx.runtime.errors import MeasurementError
    from prunefx.runtime.measure.pairs import Measurement

    name = next(iter(option))
    with pytest.raises(MeasurementError, match=f"does not read {name}: it applies to ort"):
        Measurement.of("counting", threads=1, runs=2, **option)


def test_a_confirmation_over_no_process_is_refused_when_the_measurement_is_made():
    from prunefx.runtime.errors import MeasurementError
    from prunefx.runtime.measure.pairs import Measurement

    with pytest.raises(MeasurementError, match="at least 1 process, not rounds=0"):
        Measurement.of("ort", threads=1, runs=2, rounds=0)



def test_an_onnx_runtime_budget_times_with_the_session_options_and_rounds_it_is_given(monkeypatch):
    """Settings' spinning and flush_denormals reach every session a budget times (search and confirmation), and
    `rounds` the confirmation's fresh processes, as `bench` times with them (a budget on a shared host, say)."""
    from prunefx.runtime.measure import speedup

    sessions, confirm_rounds = [], []

    class Timed(Exception):
        pass

    class RecordedMaker(speedup.OnnxRunnerMaker):
        def __init__(self, *args, **options):
            super().__init__(*args, **options)
            sessions.append((self.threads, self.spinning, self.flush_denormals))

    def stop(*makers, rounds=1, **options):
        confirm_rounds.append(rounds)
        raise Timed

    monkeypatch.setattr(speedup, "OnnxRunnerMaker", RecordedMaker)
    monkeypatch.setattr(speedup, "compare_latency", stop)
    monkeypatch.setattr(speedup, "compare_rounds", stop)
    pair = backends.get("ort").latency_pair(Settings(runs=2, warmup=0, threads=1, spinning=False,
                                                      flush_denormals=False, rounds=3))
    for measure in (pair, pair.confirm):
        with pytest.raises(Timed):
            measure(_net(8), _net(4))
    assert sessions == [(1, False, False)] * 4 and confirm_rounds == [1, 3]
