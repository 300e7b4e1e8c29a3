"""event_ms times the GPU's work, not the host's launch of it: checked on a simulated CUDA stream (host launches
cost L each, the GPU's work W each, an event is stamped when the stream reaches it, torch.cuda._sleep is busy
work of its own), so that no GPU is needed and the true time per call is known independently of the code under
test."""

from __future__ import annotations

import pytest
import torch

from prunefx.runtime.measure.gpu_latency import event_ms

LAUNCH_MS = 0.02
SLEEP_MS = 0.05  # the simulated GPU's time for the lead busy-wait


class _Stream:
    """One CUDA stream as a timeline: the host enqueues (a launch costs LAUNCH_MS of host time); the GPU runs the
    queue in order, each item starting once the GPU is free and the item has been enqueued."""

    def __init__(self):
        self.host, self.gpu_free = 0.0, 0.0

    def enqueue(self, work_ms: float) -> float:
        self.host += LAUNCH_MS
        self.gpu_free = max(self.gpu_free, self.host) + work_ms
        return self.gpu_free


@pytest.fixture
def stream(monkeypatch):
    timeline = _Stream()

    class Event:
        def __init__(self, enable_timing=False):
            self.at = None

        def record(self, stream=None):
            self.at = max(timeline.gpu_free, timeline.host)  # stamped when the GPU reaches it in the queue

        def synchronize(self):
            timeline.host = max(timeline.host, self.at)

        def elapsed_time(self, end):
            return end.at - self.at

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: timeline.enqueue(SLEEP_MS), raising=False)
    return timeline


@pytest.mark.parametrize("calls", [1, 3])
def test_a_call_longer_than_its_launch_is_timed_without_the_launch(stream, calls):
    work = 2.0
    assert event_ms(lambda: stream.enqueue(work), calls) == pytest.approx(work, rel=1e-9)


def test_calls_shorter_than_their_launch_read_as_the_launch_they_are_bound_by(stream):
    """A sample of them is many calls (calls_per_sample): the lead hides the launches of its first one or two."""
    assert event_ms(lambda: stream.enqueue(0.005), 100) == pytest.approx(LAUNCH_MS, rel=0.03)


def test_without_a_busy_wait_an_untimed_call_leads_the_sample(stream, monkeypatch):
    monkeypatch.delattr(torch.cuda, "_sleep", raising=False)
    calls = []

    def run():
        calls.append(1)
        stream.enqueue(2.0)

    assert event_ms(run, 2) == pytest.approx(2.0, rel=1e-9) and len(calls) == 3
