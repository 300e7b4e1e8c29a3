"""torch eager on this CPU, for `bench` only: the Program as captured, run under inference mode at `threads`
torch threads. It offers no budget pair: a budget is stated for a deployment, and eager torch on a CPU is
not one prunefx delivers for."""

from __future__ import annotations

from prunefx.runtime.backends.base import Backend, BenchModel, Settings
from prunefx.runtime.backends.facts import TorchEagerFacts
from prunefx.runtime.ort.runners import torch_runner


class TorchEagerBackend(TorchEagerFacts, Backend):
    needs = "nothing beyond prunefx; runs on this CPU"
    reads = "program"
    options = frozenset({"threads"})
    times_on_cpu = True
    float32_only = True

    def precision_refusal(self, precision, allowed):
        return f"precision {precision} applies to the GPU backends; torch eager runs the float32 Program"

    def runner(self, model: BenchModel, settings: Settings):
        return torch_runner(model.program, threads=settings.threads)


BACKEND = TorchEagerBackend()
