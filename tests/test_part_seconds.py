"""graph/part_seconds.py: where a pass's own time goes (the obs choice's Hessians, inverses and elimination; the
removal's scoring, choice, compensation and slicing), on a clock the test moves by hand, through remove_channels'
facts, and on a GPU, where the work a part queues must be counted in that part."""

import time
import weakref

import pytest
import torch
from torch import nn

from prunefx.graph import capture
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.channels.importance import channel_importance
from prunefx.graph.part_seconds import PartSeconds
from prunefx.passes.remove_channels import remove_channels

pytestmark = pytest.mark.usefixtures("one_thread")


class HandClock:
    def __init__(self):
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def test_parts_add_up_and_a_part_that_raises_is_still_timed():
    clock = HandClock()
    parts = PartSeconds("cpu", clock)
    with parts.part("Hessians"):
        clock.now += 2.0
    with parts.part("elimination"):
        clock.now += 0.5
    with parts.part("Hessians"):  # met again: added
        clock.now += 1.25
    with pytest.raises(RuntimeError), parts.part("inverses"):
        clock.now += 0.75
        raise RuntimeError("a factorisation failed")
    clock.now += 9.0  # between parts: nobody's
    assert parts.seconds == {"Hessians": 3.25, "elimination": 0.5, "inverses": 0.75}


def test_many_short_parts_add_up_before_rounding():
    clock = HandClock()
    parts = PartSeconds("cpu", clock)
    for _ in range(300):  # a GPU's per-layer inverses: well under a millisecond each
        with parts.part("inverses"):
            clock.now += 0.0004
    assert parts.seconds == {"inverses": 0.12}


def test_each_layer_s_hessian_is_freed_before_the_next_is_gathered(monkeypatch):
    from prunefx.graph.channels import saliency

    inverses, alive_at_release = [], []
    made = saliency.lean_damped_inverse

    def kept(hessian, *args, **options):
        inverse = made(hessian, *args, **options)
        inverses.append(weakref.ref(inverse))
        return inverse

    monkeypatch.setattr(saliency, "lean_damped_inverse", kept)
    monkeypatch.setattr(saliency, "release_freed_memory",
                        lambda: alive_at_release.append([ref() is not None for ref in inverses]))
    torch.manual_seed(0)
    program = capture(TwoConvs().eval(), torch.randn(2, 3, 8, 8)).eval()
    calibration = [(torch.randn(2, 3, 8, 8),) for _ in range(40)]  # rows enough for H itself, not its rows
    channel_importance(program.module, find_channel_groups(program.module), "obs", calibration=calibration,
                       damping=0.0789)
    assert inverses and alive_at_release and not any(any(alive) for alive in alive_at_release)


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_obs_reports_its_parts_and_a_cached_choice_none():
    torch.manual_seed(0)
    program = capture(TwoConvs().eval(), torch.randn(2, 3, 8, 8)).eval()
    calibration = [(torch.randn(2, 3, 8, 8),) for _ in range(2)]
    combing = find_channel_groups(program.module)
    first = channel_importance(program.module, combing, "obs", calibration=calibration, damping=0.123)
    assert set(first.seconds) == {"Hessians", "inverses", "elimination"}
    assert all(seconds >= 0 for seconds in first.seconds.values())
    again = channel_importance(program.module, combing, "obs", calibration=calibration, damping=0.123)
    assert again.seconds == {} and all((a == b).all() for a, b in zip(again.scores, first.scores))  # from the cache


def test_remove_channels_times_its_parts_inside_its_own_time():
    torch.manual_seed(0)
    program = capture(TwoConvs().eval(), torch.randn(2, 3, 8, 8)).eval()
    calibration = [(torch.randn(2, 3, 8, 8),) for _ in range(2)]
    started = time.perf_counter()
    result = remove_channels(program, config={"channels": 0.5, "round_to": 1, "damping": 0.0456,
                                              "calibration": calibration})
    wall = time.perf_counter() - started
    seconds = result.facts.seconds
    assert {"channel groups", "scoring", "choice", "compensation", "slicing", "scoring: Hessians",
            "scoring: inverses", "scoring: elimination"} <= set(seconds)
    rounding = 5e-4 * len(seconds)  # each part rounded to the millisecond
    inside = sum(value for part, value in seconds.items() if part.startswith("scoring: "))
    assert inside <= seconds["scoring"] + rounding  # the obs parts lie inside the scoring
    assert 0 < sum(value for part, value in seconds.items() if ": " not in part) <= wall + rounding
    assert "seconds" not in result.stats  # the stats say what was done, the same on every run


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")


@pytest.mark.gpu
@requires_cuda
def test_work_a_part_queues_on_the_gpu_is_counted_in_that_part():
    device = torch.device("cuda")
    x = torch.randn(4096, 4096, device=device)
    torch.cuda.synchronize(device)
    parts = PartSeconds(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with parts.part("queued"):
        start.record()
        for _ in range(50):
            x = x @ x / 64  # queued: the call returns before the device has run it
        end.record()
    with parts.part("after"):
        pass
    end.synchronize()
    on_device = start.elapsed_time(end) / 1000
    assert parts.seconds["queued"] >= 0.9 * on_device and parts.seconds["after"] < 0.1 * parts.seconds["queued"]
