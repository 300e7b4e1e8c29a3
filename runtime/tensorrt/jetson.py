"""Jetson board state that changes a latency: power mode (`nvpmodel -q`), pinned clocks
(`jetson_clocks --show`) and power drawn while a benchmark runs (`tegrastats --interval N`).

A Jetson's latency depends on its power mode (MAXN vs 15 W differ by 2x and more) and on whether
`jetson_clocks` pinned the clocks at their maximum (otherwise DVFS ramps them up during the run), so
both are recorded with every trtexec measurement. Power comes from tegrastats' rail readings,
`NAME current/average` in mW (with or without the unit, depending on JetPack):
- the board input is `VDD_IN` (Orin Nano/NX, Xavier NX, AGX Xavier) or `POM_5V_IN` (Nano, TX2);
- AGX Orin reports no input rail; its total is VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0, as jtop sums it.
`total_source` says which was used. The parsers are pure functions tested on captured lines.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?\b")
_GPU_LOAD = re.compile(r"GR3D_FREQ (\d+)%")
_POWER_MODE = re.compile(r"NV Power Mode:\s*(.+)")
_FREQS = re.compile(r"MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)")
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
AGX_ORIN_RAILS = ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_MODEL = Path("/proc/device-tree/model")


def is_jetson() -> bool:
    return TEGRA_RELEASE.is_file() or shutil.which("tegrastats") is not None


# ---- parsers ------------------------------------------------------------------------------------

def parse_tegrastats_line(line: str) -> dict:
    """{'rails': {name: (current_mw, average_mw)}, 'total_mw', 'total_source', 'gpu_load'} of one line."""
    rails = {name: (int(now), int(average)) for name, now, average in _RAIL.findall(line)}
    total, source = None, None
    for name in INPUT_RAILS:
        if name in rails:
            total, source = rails[name][0], name
            break
    else:
        if all(name in rails for name in AGX_ORIN_RAILS):
            total, source = sum(rails[name][0] for name in AGX_ORIN_RAILS), "+".join(AGX_ORIN_RAILS)
    load = _GPU_LOAD.search(line)
    return {"rails": rails, "total_mw": total, "total_source": source,
            "gpu_load": int(load.group(1)) if load else None}


def parse_nvpmodel(text: str) -> tuple[str | None, int | None]:
    """(power mode name, mode id) from `nvpmodel -q`: 'NV Power Mode: MAXN' then the id on its own line."""
    found = _POWER_MODE.search(text)
    if found is None:
        return None, None
    after = text[found.end():].split()
    return found.group(1).strip(), int(after[0]) if after and after[0].isdigit() else None


def parse_jetson_clocks(text: str) -> dict:
    """From `jetson_clocks --show`: whether the GPU and every online CPU run with MinFreq == MaxFreq
    (what jetson_clocks sets), and the GPU's frequencies."""
    cpus = [tuple(map(int, _FREQS.search(line).groups())) for line in text.splitlines()
            if re.match(r"\s*cpu\d+:", line) and "Online=1" in line and _FREQS.search(line)]
    gpu_line = next((line for line in text.splitlines() if line.strip().startswith("GPU") and _FREQS.search(line)), None)
    gpu = tuple(map(int, _FREQS.search(gpu_line).groups())) if gpu_line else None
    gpu_pinned = gpu is not None and gpu[0] == gpu[1]
    cpus_pinned = bool(cpus) and all(low == high for low, high, _ in cpus)
    return {"pinned": gpu_pinned and cpus_pinned, "gpu_pinned": gpu_pinned, "cpus_pinned": cpus_pinned,
            "gpu_hz": dict(zip(("min", "max", "current"), gpu)) if gpu else None, "online_cpus": len(cpus)}


# ---- board state --------------------------------------------------------------------------------

@dataclass
class JetsonState:
    model: str | None = None
    power_mode: str | None = None
    power_mode_id: int | None = None
    clocks_pinned: bool | None = None          # None: could not be read (jetson_clocks --show needs root)
    clocks: dict | None = None
    problems: list[str] = field(default_factory=list)


def _query(command: list[str]) -> tuple[str | None, str | None]:
    """(output, None) or (None, why it failed)."""
    if shutil.which(command[0]) is None:
        return None, f"{command[0]} not found"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"{' '.join(command)}: {error}"
    if done.returncode != 0:
        return None, f"{' '.join(command)} failed ({(done.stderr or done.stdout).strip()[:120] or done.returncode})"
    return done.stdout, None


def jetson_state() -> JetsonState:
    state = JetsonState()
    if DEVICE_MODEL.is_file():
        state.model = DEVICE_MODEL.read_text(errors="replace").strip("\x00\n ")
    text, problem = _query(["nvpmodel", "-q"])
    if text is not None:
        state.power_mode, state.power_mode_id = parse_nvpmodel(text)
    else:
        state.problems.append(problem)
    text, problem = _query(["jetson_clocks", "--show"])
    if text is not None:
        state.clocks = parse_jetson_clocks(text)
        state.clocks_pinned = state.clocks["pinned"]
        if state.power_mode is None:
            state.power_mode, state.power_mode_id = parse_nvpmodel(text)
    else:
        state.problems.append(problem + " (run prunefx with sudo, or check the clocks yourself)")
    return state


class TegrastatsSampler:
    """`with TegrastatsSampler(100): run()` samples tegrastats every 100 ms in a background process for
    the duration of the block; `summary()` gives mean/max board power and GPU load over that time."""

    def __init__(self, interval_ms: int = 100, executable: str = "tegrastats"):
        self.interval_ms, self.executable = interval_ms, executable
        self.samples: list[dict] = []
        self.problem: str | None = None
        self._process = None
        self._reader = None

    def __enter__(self):
        if shutil.which(self.executable) is None:
            self.problem = f"{self.executable} not found: no power samples"
            return self
        self._process = subprocess.Popen([self.executable, "--interval", str(self.interval_ms)],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            self.samples.append(parse_tegrastats_line(line))

    def __exit__(self, *exc):
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._reader.join(timeout=5)
        return False

    def summary(self) -> dict:
        power = [sample["total_mw"] for sample in self.samples if sample["total_mw"] is not None]
        load = [sample["gpu_load"] for sample in self.samples if sample["gpu_load"] is not None]
        sources = {sample["total_source"] for sample in self.samples if sample["total_source"]}
        return {"samples": len(self.samples), "interval_ms": self.interval_ms,
                "mean_mw": statistics.fmean(power) if power else None, "max_mw": max(power) if power else None,
                "total_source": ", ".join(sorted(sources)) or None,
                "gpu_load_mean": statistics.fmean(load) if load else None, "problem": self.problem}
