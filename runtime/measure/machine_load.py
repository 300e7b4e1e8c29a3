"""How much of the cores a latency was measured on other processes took while it was measured.

A timing beside a busy process reads slow, and readings spoilt alike agree with one another, which no
consistency rule between them can see (docs/latency-budgets.md, 'A busy machine'). So every reading carries
the share of its cores' time that went elsewhere: the cores' busy time from /proc/stat (the cores this
process may run on; time the hypervisor stole counts as taken), less this process's own CPU time and that of
the children it waited for (a confirmation's rounds run in fresh processes). In a container whose CPU quota is
smaller than those cores, the cgroup's CPU time over the quota's cores instead (cpu_quota.py: the host's other
tenants are not seen there, the container's other processes are). Where neither can be read (not Linux), the share
is None: not known, never 0.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from prunefx.runtime.measure.cpu_quota import CGROUP_ROOT, quota_usage

PROC_STAT = Path("/proc/stat")
SHORTEST_SECONDS = 0.1  # /proc/stat counts in ticks (10 ms): a shorter reading's share would be mostly rounding
# /proc/stat's columns after the core's name: user nice system idle iowait irq softirq steal (guest time is in user)
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)


@dataclass(frozen=True)
class CpuClock:
    """One look at the clocks: the cores' busy seconds, this process's own CPU seconds (with its waited-for
    children's), the wall clock, and how many cores were counted."""

    busy: float
    own: float
    wall: float
    cores: float  # a quota's cores may be a fraction


def busy_seconds(stat: str, cores: set[int], tick: float) -> tuple[float, int]:
    """(busy seconds, cores counted) of the cores in `cores` from the text of /proc/stat; every core the text
    lists where `cores` names none of them (a container's affinity that /proc/stat numbers otherwise)."""
    per_core = {}
    for line in stat.splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            per_core[int(name[3:])] = sum(int(values[column]) for column in _BUSY_COLUMNS if column < len(values))
    counted = [ticks for core, ticks in per_core.items() if core in cores] or list(per_core.values())
    return sum(counted) * tick, len(counted)


def own_seconds() -> float:
    """This process's CPU seconds and its waited-for children's."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def look(stat_path: Path = PROC_STAT, cgroup_root: Path = CGROUP_ROOT) -> CpuClock | None:
    """The clocks now: the cgroup's over its quota where one binds (see the module docstring), else /proc/stat's;
    None where neither can be read or /proc/stat lists no core."""
    affinity = _affinity()
    quota = quota_usage(cgroup_root)
    if quota is not None and 0 < quota[1] < (len(affinity) or math.inf):
        used, cores = quota
        return CpuClock(used, own_seconds(), time.perf_counter(), cores)
    try:
        stat = stat_path.read_text()
    except OSError:
        return None
    busy, cores = busy_seconds(stat, affinity, 1.0 / os.sysconf("SC_CLK_TCK"))
    return CpuClock(busy, own_seconds(), time.perf_counter(), cores) if cores else None


def others_share(before: CpuClock | None, after: CpuClock | None) -> float | None:
    """The share of the counted cores' time, between two looks, that went to other processes (0 to 1); None
    where either look is missing or too close to the other (SHORTEST_SECONDS)."""
    if before is None or after is None or after.wall - before.wall < SHORTEST_SECONDS:
        return None
    available = (after.wall - before.wall) * after.cores
    taken = (after.busy - before.busy) - (after.own - before.own)
    return min(max(taken / available, 0.0), 1.0)


class LoadMeter:
    """`with LoadMeter() as meter: ...`, then `meter.share`: others_share over the block."""

    def __init__(self, stat_path: Path = PROC_STAT, cgroup_root: Path = CGROUP_ROOT):
        self.stat_path, self.cgroup_root, self.share = stat_path, cgroup_root, None
        self._before: CpuClock | None = None

    def __enter__(self) -> LoadMeter:
        self._before = look(self.stat_path, self.cgroup_root)
        return self

    def __exit__(self, *exc_info) -> None:
        self.share = others_share(self._before, look(self.stat_path, self.cgroup_root))


def _affinity() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux: every core
        return set()
