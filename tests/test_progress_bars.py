"""Long work shows a bar on a terminal (graph/progress.py): a calibrated channel choice and its compensation,
second-order N:M sparsity and a latency table count the layers they read, to the last, and a budget search
counts its measurements; off a terminal (a log, a pipe, a notebook's captured stream) they write nothing. The
oracle for the counts is the network's layers, counted by hand, and the measurements the test asks for."""

from __future__ import annotations

import functools
import io
import sys
import threading

import pytest
import torch
import tqdm
from torch import nn

from prunefx.budget.routes import measured_by
from prunefx.graph import capture
from prunefx.graph import progress as graph_progress
from prunefx.graph.channels.timed_layers import timed_layers
from prunefx.graph.progress import shown
from prunefx.graph.timing import Timing
from prunefx.passes import remove_channels, sparsify_nm
from prunefx.passes.budget.measurement import Ask, drive
from prunefx.runtime.tables.table import build_latency_table

# conv1 reads the image, which no plan narrows; conv2, conv3 and the head read channels that every plan
# narrows when ranking is local (the same fraction of every group)
LAYERS_READING_NARROWED_CHANNELS = 3


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _program():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 10))
    return capture(model.eval(), torch.randn(1, 3, 8, 8), name="cnn").eval()


def _prune(**config):
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(1, 3, 8, 8, generator=generator),) for _ in range(4)]
    return remove_channels(_program(), config={"macs": 0.5, "round_to": 4, "importance": "obs",
                                               "calibration": batches, "compensate": True, "ranking": "local", **config})


def _bar_draws(shown: str, bar: str) -> list[str]:
    return [line for line in shown.split("\r") if line.startswith(bar)]


@pytest.fixture
def every_update_shown(monkeypatch):
    """tqdm redraws at most every 0.1 s: a tiny network's last counts would never be drawn."""
    monkeypatch.setattr(graph_progress, "tqdm", functools.partial(tqdm.tqdm, mininterval=0, miniters=1))


def test_a_calibrated_prune_counts_its_layers_on_a_terminal(monkeypatch, every_update_shown):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    result = _prune()
    shown = terminal.getvalue()
    total = LAYERS_READING_NARROWED_CHANNELS
    assert len(result.stats["compensation"]["compensated"]) == total
    for bar in ("scoring channels (obs)", "compensating"):
        draws = _bar_draws(shown, bar)
        assert f"0/{total} " in draws[0] and f"{total}/{total} " in draws[-1], bar


@pytest.mark.parametrize("criterion", ["obs", "cap"])
def test_second_order_sparsity_counts_its_layers_on_a_terminal(criterion, monkeypatch, every_update_shown):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(1, 3, 8, 8, generator=generator), torch.tensor([index])) for index in range(4)]
    result = sparsify_nm(_program(), config={"criterion": criterion, "calibration": batches, "min_channels": 4})
    total = len(result.stats["layers"])
    assert total == 3  # conv2, conv3 and the head: conv1's 3 input channels make no group of 4
    draws = _bar_draws(terminal.getvalue(), f"sparsifying ({criterion})")
    assert f"0/{total} " in draws[0] and f"{total}/{total} " in draws[-1]


class ConstantTimer:
    backend, device, precision, settings = "constant", "none", "fp32", "1 ms a layer"

    def __call__(self, layer) -> float:
        return 1.0


def test_a_latency_table_counts_its_layers_on_a_terminal(tmp_path, monkeypatch, every_update_shown):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    layers = timed_layers(_program().module)
    assert len(layers) == 4  # three convolutions and the head
    build_latency_table(layers, ConstantTimer(), multiple=4, cache_dir=tmp_path)
    draws = _bar_draws(terminal.getvalue(), "timing layers")
    assert "0/4 " in draws[0] and "4/4 " in draws[-1]


@pytest.mark.parametrize("driver", [measured_by, lambda measurer, steps: drive(steps, measurer)],
                         ids=["prunefx.budget", "a bare Python call of a budget pass"])
def test_a_budget_search_counts_its_measurements_and_shows_the_last(driver, monkeypatch, every_update_shown):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    dense = candidate = _program()
    # dense ms, candidate ms, spread; the search's readings taken while other processes took 40 % of the cores
    readings = {"search": Timing(3.0, 2.0, 0.01, contention=0.4), "confirm": (3.0, 1.5, 0.01)}

    class Measurer:
        round_to = None

        def __call__(self, dense, candidate):
            return readings["search"]

        def confirm(self, dense, candidate):
            return readings["confirm"]

    def steps():
        yield Ask("search", dense, candidate)
        yield Ask("search", dense, candidate)
        yield Ask("confirm", dense, candidate)
        return "chosen"

    assert driver(Measurer(), steps()) == "chosen"
    draws = _bar_draws(terminal.getvalue(), "budget search")
    assert "budget search (measurements: 3) [" in draws[-1] and "last: 2.00x, a confirmation]" in draws[-1]
    assert any("last: 1.50x, a search reading, other processes took 40 % of the cores" in draw for draw in draws)


@pytest.mark.parametrize("stderr, progress, drawn", [
    (Terminal(), None, True), (Terminal(), False, False), (io.StringIO(), None, False), (io.StringIO(), True, True),
    (None, None, False), (None, True, False),  # `2>&-`: there is nowhere to draw
])
def test_a_bar_is_drawn_where_asked_and_where_it_can_be(stderr, progress, drawn, monkeypatch):
    monkeypatch.setattr(sys, "stderr", stderr)
    assert shown(progress) is drawn


def test_without_a_standard_error_a_calibrated_prune_runs_quietly(monkeypatch):
    monkeypatch.setattr(sys, "stderr", None)
    assert _prune(progress=True).modified  # tqdm itself would write to None and fail


def test_off_a_terminal_nothing_is_written_unless_asked(monkeypatch, every_update_shown):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    _prune()
    assert stream.getvalue() == ""
    _prune(progress=True)
    assert "compensating" in stream.getvalue()


def _lines(text: str) -> list[str]:
    assert "\r" not in text  # a log holds whole lines, no redraws
    return text.splitlines()


def test_off_a_terminal_the_command_line_writes_a_progress_line_now_and_then(monkeypatch):
    """Where the command line asks (lines_off_terminal), long work writes whole lines instead of a bar: one each
    LINE_EVERY seconds (0 here: every layer) and one at the end, with the count to the last; -q asks for none."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(graph_progress, "LINE_EVERY", 0.0)
    with graph_progress.lines_off_terminal():
        _prune()
    lines = [line for line in _lines(stream.getvalue()) if line.startswith("prunefx: compensating: ")]
    total = LAYERS_READING_NARROWED_CHANNELS
    assert len(lines) >= 2 and lines[-1].startswith(f"prunefx: compensating: {total}/{total} layers (100%)")
    stream.truncate(0)
    with graph_progress.lines_off_terminal(asked=False):
        _prune()
    assert stream.getvalue() == ""


def test_work_shorter_than_the_interval_writes_no_line(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with graph_progress.lines_off_terminal():  # LINE_EVERY's 30 s: a tiny prune is over long before
        _prune()
    assert stream.getvalue() == ""


def test_a_step_longer_than_the_interval_has_its_line_written_again_as_time_passes(monkeypatch):
    """An 18,432-column Hessian's inverse is one step of minutes: the log is not silent meanwhile."""
    import time

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(graph_progress, "LINE_EVERY", 0.05)
    with graph_progress.lines_off_terminal():
        bar = graph_progress.progress_bar("inverting", 2, unit="layer", progress=None)
        bar.update(1)
        time.sleep(0.5)  # one long step: about ten intervals
        written = len(_lines(stream.getvalue()))
        bar.update(1)
        bar.close()
    lines = _lines(stream.getvalue())
    assert written >= 3 and all(line.startswith("prunefx: inverting: 1/2 layers") for line in lines[:written])
    assert lines[-1].startswith("prunefx: inverting: 2/2 layers (100%)")
    beating = [thread for thread in threading.enumerate() if thread.name == "prunefx-progress-line"]
    for thread in beating:
        thread.join(timeout=1.0)
    assert not any(thread.is_alive() for thread in beating)  # closed, the bar's thread ends


def test_progress_lines_of_a_bar_inside_another_and_of_an_iterated_bar_are_plain_and_current(monkeypatch):
    """A candidate's scoring runs inside the budget search's bar: no cursor movement between lines. A bar iterated
    (the pipeline's passes) counts what is done while its current step runs. Units are plural: 'passes'."""
    import time

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(graph_progress, "LINE_EVERY", 0.05)
    with graph_progress.lines_off_terminal():
        outer = graph_progress.progress_bar("budget search", None, unit="measurement", progress=None)
        for step in graph_progress.bar_or_lines(None, iterable=["a", "b", "c"], desc="passes", unit="pass"):
            if step == "c":
                time.sleep(0.3)
        outer.update()
        outer.close()
    lines = _lines(stream.getvalue())
    assert all(line.isprintable() for line in lines)
    during_c = [line for line in lines if line.startswith("prunefx: passes: ") and "(100%)" not in line]
    assert during_c and all(line.startswith("prunefx: passes: 2/3 passes") for line in during_c[-3:])


def test_a_line_bar_dropped_unclosed_is_collected_and_its_thread_ends(monkeypatch):
    import gc
    import time

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(graph_progress, "LINE_EVERY", 0.02)
    with graph_progress.lines_off_terminal():
        bar = graph_progress.progress_bar("abandoned", 3, unit="layer", progress=None)
        bar.update()
        del bar
        gc.collect()
        time.sleep(0.2)
    assert not any(thread.name == "prunefx-progress-line" and thread.is_alive() for thread in threading.enumerate())
