"""prunefx/reports/seconds.py: report.json's `seconds`, checked on a clock the test moves by hand."""

from prunefx.reports.seconds import StageSeconds


class HandClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stages_add_up_and_passes_split_the_stage_they_run_in():
    clock = HandClock()
    seconds = StageSeconds(clock)
    with seconds.stage("load"):
        clock.now += 2.0
    seconds.after_step("outside any stage")  # ignored: a Pipeline run outside a timed stage
    with seconds.stage("prune"):
        clock.now += 3.0
        seconds.after_step("remove_channels")
        clock.now += 0.5
        seconds.after_step("recalibrate_batchnorm")
        clock.now += 0.25  # after the last pass, inside the stage: the stage's own
    with seconds.stage("load"):  # a stage met twice adds up
        clock.now += 1.0
    clock.now += 4.0
    assert seconds.as_dict() == {"load": 3.0, "prune: remove_channels": 3.0, "prune: recalibrate_batchnorm": 0.5,
                                 "prune": 3.75, "total": 10.75}


def test_a_stage_that_raises_is_still_timed():
    clock = HandClock()
    seconds = StageSeconds(clock)
    try:
        with seconds.stage("prune"):
            clock.now += 1.5
            raise RuntimeError("a pass failed")
    except RuntimeError:
        pass
    assert seconds.as_dict()["prune"] == 1.5
