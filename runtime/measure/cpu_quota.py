"""The CPU quota a container's cgroup gives this process, and the CPU time that cgroup has used so far.

In a container limited by a quota (`docker --cpus`, a Kubernetes CPU limit) this process may run on every core of
the host while its cgroup may use only a few cores' worth: /proc/stat's cores then carry other tenants' work, which
says nothing of what was taken from this measurement. machine_load.py reads the cgroup there instead: the CPU time of
every process in it (this one, its children, whatever else runs in the container), over the quota's cores.
cgroup v2 (cpu.max, cpu.stat) and v1 (cpu.cfs_quota_us, cpuacct.usage).
"""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
OWN_CGROUP = Path("/proc/self/cgroup")


def quota_usage(root: Path = CGROUP_ROOT, own: Path = OWN_CGROUP) -> tuple[float, float] | None:
    """(CPU seconds this process's cgroup has used, its quota in cores); None where no quota applies or the cgroup
    cannot be read."""
    return _version_2(root, own) or _version_1(root)


def _version_2(root: Path, own: Path) -> tuple[float, float] | None:
    for folder in _v2_folders(root, own):
        limit, usage = _read(folder / "cpu.max"), _read(folder / "cpu.stat")
        if limit is None or usage is None:
            continue
        quota, _, period = limit.partition(" ")
        if quota == "max" or not quota.isdigit() or not period.strip().isdigit() or int(period) == 0:
            return None
        used = next((int(value) for key, value in (line.split() for line in usage.splitlines() if line.strip())
                     if key == "usage_usec"), None)
        return None if used is None else (used / 1e6, int(quota) / int(period))
    return None


def _v2_folders(root: Path, own: Path) -> list[Path]:
    """This process's cgroup folder (from /proc/self/cgroup's `0::` line), then the root: in a container with its
    own cgroup namespace, the root is its cgroup."""
    text = _read(own) or ""
    paths = [line[3:].strip() for line in text.splitlines() if line.startswith("0::")]
    return [root / path.lstrip("/") for path in paths if path.strip("/")] + [root]


def _version_1(root: Path) -> tuple[float, float] | None:
    quota, period, usage = (_read(root / name) for name in ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us",
                                                            "cpuacct/cpuacct.usage"))
    if not all(value is not None and value.isdigit() for value in (quota, period, usage)) or int(period) == 0:
        return None  # no quota: cfs_quota_us is -1
    return int(usage) / 1e9, int(quota) / int(period)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None
