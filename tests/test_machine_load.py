"""The share of the measuring cores other processes took during a reading (runtime/measure/machine_load.py; a
container's CPU quota where one binds, cpu_quota.py), what a CPU comparison carries (latency.compare_latency,
compare_rounds), how a budget's pair treats a busy one (speedup.cached_pair), and what `prunefx bench` says of it.
Oracles: /proc/stat and cgroup texts and clocks whose shares are worked out by hand, and processes this test starts
that spin on every core."""

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from prunefx.cli import main
from prunefx.graph import capture
from prunefx.graph.timing import BUSY
from prunefx.runtime import export_onnx
from prunefx.runtime.measure import latency, machine_load, speedup
from prunefx.runtime.measure.cpu_quota import quota_usage
from prunefx.runtime.measure.machine_load import CpuClock, LoadMeter, busy_seconds, others_share

#        user nice system idle iowait irq softirq steal guest guest_nice
STAT = """cpu  900 90 300 5000 70 10 20 30 0 0
cpu0 100 10 40 1000 10 1 2 3 0 0
cpu1 200 20 60 2000 20 2 4 6 0 0
cpu2 600 60 200 2000 40 7 14 21 0 0
intr 1 2 3
ctxt 4
"""


def test_busy_seconds_sum_the_busy_columns_of_the_cores_this_process_may_run_on():
    # cpu0: 100+10+40+1+2+3 = 156 ticks, cpu2: 600+60+200+7+14+21 = 902; idle and iowait are not busy
    assert busy_seconds(STAT, {0, 2}, 0.01) == (pytest.approx(10.58), 2)
    # an affinity that names none of the listed cores (numbered otherwise): every core
    assert busy_seconds(STAT, {7}, 0.01) == (pytest.approx(10.58 + 2.92), 3)


def test_the_share_is_what_other_processes_took_of_the_cores_time():
    before = CpuClock(busy=10.0, own=3.0, wall=100.0, cores=2)
    # 2 s of wall time on 2 cores: 4 core-seconds; 3 of them busy, 1 of those this process's own
    assert others_share(before, CpuClock(13.0, 4.0, 102.0, 2)) == pytest.approx(0.5)
    assert others_share(before, CpuClock(11.0, 4.5, 102.0, 2)) == 0.0  # tick rounding: never below 0
    assert others_share(before, CpuClock(10.05, 3.0, 100.05, 2)) is None  # too short to say
    assert others_share(None, before) is None


def test_without_proc_stat_the_share_is_not_known(tmp_path):
    with LoadMeter(tmp_path / "absent") as meter:
        time.sleep(0.15)
    assert meter.share is None


@pytest.mark.skipif(not machine_load.PROC_STAT.exists(), reason="needs Linux's /proc/stat")
def test_processes_spinning_on_every_core_are_counted_and_a_waited_child_is_not():
    cores = len(os.sched_getaffinity(0))
    spin = "import time\nend = time.time() + {}\nwhile time.time() < end: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin.format(2.5)]) for _ in range(cores)]
    try:
        time.sleep(0.5)  # started
        with LoadMeter() as meter:
            time.sleep(1.0)
    finally:
        for process in spinners:
            process.kill()
            process.wait()
    assert meter.share >= 0.5
    with LoadMeter() as own:  # a child waited for inside the block is this measurement's own work
        subprocess.run([sys.executable, "-c", spin.format(1.0)], check=True)
    assert own.share < meter.share


class Files:
    """cached_pair's `sources`: each Program is its own entry."""

    def get(self, program):
        return (program,)


def fake_meter(share: float | None):
    """A LoadMeter that read `share` (what the load meter read while a comparison ran)."""
    class Meter:
        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.share = share

    return Meter


@pytest.mark.parametrize("share, timed_twice", [(0.6, True), (0.05, False), (None, False)])
def test_a_reading_taken_on_a_busy_machine_carries_its_share_and_is_not_answered_again(monkeypatch, share, timed_twice):
    monkeypatch.setattr(latency, "LoadMeter", fake_meter(share))
    calls = []

    def timed(a, b):  # a CPU comparison, as the ONNX Runtime pair makes it
        calls.append((a, b))
        return speedup.timing_of(latency.compare_latency(lambda: None, lambda: None, warmup=1, runs=2, block=1))

    pair = speedup.cached_pair(Files(), timed)
    first, second = pair("dense", "candidate"), pair("dense", "candidate")
    assert first.contention == share and first.busy == (share is not None and share >= BUSY)
    assert len(calls) == (2 if timed_twice else 1) and second.contention == share


def test_a_comparison_over_rounds_carries_the_share_too(monkeypatch):
    monkeypatch.setattr(latency, "LoadMeter", fake_meter(0.3))
    comparison = latency.compare_rounds(lambda: (lambda: None), lambda: (lambda: None), rounds=2, warmup=1, runs=4,
                                        block=1)
    assert comparison.contention == 0.3 and comparison.to_dict()["contention"] == 0.3


@pytest.mark.parametrize("share", [0.4, 0.02])
def test_bench_reports_the_share_and_notes_a_busy_one(tmp_path, capsys, monkeypatch, share):
    monkeypatch.setattr(importlib.import_module("prunefx.cli.commands.bench"), "LoadMeter", fake_meter(share))
    program = capture(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval(), torch.randn(1, 3, 16, 16))
    path = export_onnx(program, tmp_path / "conv.onnx").path
    assert main(["bench", str(path), "--runs", "3", "--warmup", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["contention"] == share
    busy_notes = [note for note in report.get("notes", []) if "other processes took 40 % of the cores" in note]
    assert len(busy_notes) == (share >= BUSY)
    assert main(["bench", str(path), "--runs", "3", "--warmup", "1"]) == 0
    assert ("note: other processes took 40 % of the cores" in capsys.readouterr().out) == (share >= BUSY)


@pytest.mark.skipif(not machine_load.PROC_STAT.exists(), reason="needs Linux's /proc/stat")
def test_a_benchmark_run_says_what_share_of_the_cores_other_work_took(load_script, monkeypatch):
    """run_all's summary line marks a run beside other work; every results file records the share over its run."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # their helpers
    run_all = load_script("benchmarks/run_all.py")
    assert run_all.busy_note(0.23) == "  (busy: other processes took 23 % of the cores)"
    assert run_all.busy_note(0.05) == "" and run_all.busy_note(None) == ""
    share = load_script("benchmarks/common.py").provenance()["others_share"]
    assert share is None or 0.0 <= share <= 1.0  # None: its module was loaded less than SHORTEST_SECONDS ago


def cgroup(tmp_path, files: dict[str, str]) -> Path:
    """A cgroup folder tree written from `files` (relative path -> text), and /proc/self/cgroup's stand-in."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "own").write_text("0::/\n")
    return root


def test_a_cpu_quota_is_read_from_cgroup_v2_and_v1(tmp_path):
    v2 = cgroup(tmp_path / "v2", {"cpu.max": "150000 100000\n", "cpu.stat": "usage_usec 5000000\nuser_usec 4000000\n"})
    assert quota_usage(v2, tmp_path / "v2" / "own") == (5.0, 1.5)
    unlimited = cgroup(tmp_path / "max", {"cpu.max": "max 100000\n", "cpu.stat": "usage_usec 5000000\n"})
    assert quota_usage(unlimited, tmp_path / "max" / "own") is None
    v1 = cgroup(tmp_path / "v1", {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n",
                                  "cpuacct/cpuacct.usage": "2500000000\n"})
    assert quota_usage(v1, tmp_path / "v1" / "own") == (2.5, 1.0)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert quota_usage(v1, tmp_path / "v1" / "own") is None


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs the cores this process may run on")
def test_a_quota_below_the_cores_this_process_may_run_on_is_what_the_share_is_of(tmp_path, monkeypatch):
    """On a host whose cores carry other tenants' work, a container's quota is what its measurements share."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 0 1 1\n" + "".join(f"cpu{core} 100 0 0 100\n" for core in os.sched_getaffinity(0)))
    monkeypatch.setattr(machine_load, "quota_usage", lambda root: (7.0, 0.5))
    assert (machine_load.look(stat).busy, machine_load.look(stat).cores) == (7.0, 0.5)
    monkeypatch.setattr(machine_load, "quota_usage", lambda root: (7.0, 512.0))  # more than this process's cores
    assert machine_load.look(stat).cores == len(os.sched_getaffinity(0))
