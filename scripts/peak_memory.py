"""Where a prunefx command reaches its peak memory: the command runs in this process while a thread samples the
resident set every few milliseconds and, each time it reaches a new high, keeps the main thread's stack (the
library's frames). Prints the peak, where it was first reached, and the highest resident set inside each of the
library's functions that were on the stack at some high.

    .venv/bin/python scripts/peak_memory.py prune timm:vit_large_patch16_224 --macs 0.5 --calibrate imagenet-sample -o DIR
    (--timeline anywhere: also the resident set and the innermost library frame every second)
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("graph", "passes", "runtime", "prunefx")
PAGE = 4096


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 1e6


def library_frames(frame) -> list[str]:
    """`file:function` of the library's frames on the stack of `frame`, outermost first."""
    found = []
    for entry in traceback.extract_stack(frame):
        path = Path(entry.filename).resolve()
        if path.is_relative_to(ROOT) and path.relative_to(ROOT).parts[0] in LIBRARY:
            found.append(f"{path.relative_to(ROOT).as_posix()}:{entry.name}")
    return found


class Sampler(threading.Thread):
    """Samples the resident set; at each new high (by 10 MB or more), the main thread's library frames."""

    def __init__(self, main_thread: int, period: float = 0.005):
        super().__init__(daemon=True)
        self.main_thread, self.period = main_thread, period
        self.peak, self.peak_stack = 0.0, []
        self.highest_in: dict[str, float] = {}
        self.timeline: list[tuple[float, float, str]] = []  # (seconds, MB, innermost library frame) every second
        self.running = True

    def run(self) -> None:
        started, noted = time.perf_counter(), -1.0
        while self.running:
            rss = resident_mb()
            now = time.perf_counter() - started
            if now - noted >= 1.0:
                stack = self._main_stack()
                self.timeline.append((now, rss, stack[-1] if stack else "-"))
                noted = now
            if rss > self.peak + 10:
                stack = self._main_stack()
                self.peak, self.peak_stack = rss, stack
                for name in stack:
                    self.highest_in[name] = max(self.highest_in.get(name, 0.0), rss)
            time.sleep(self.period)

    def _main_stack(self) -> list[str]:
        frame = sys._current_frames().get(self.main_thread)
        return library_frames(frame) if frame is not None else []


def main(argv: list[str], *, timeline: bool = False) -> int:
    from prunefx.cli import main as prunefx_main

    sampler = Sampler(threading.get_ident())
    sampler.start()
    started = time.perf_counter()
    code = prunefx_main(argv)
    sampler.running = False
    sampler.join()
    print(f"\nexit {code} after {time.perf_counter() - started:.1f} s; peak resident set {sampler.peak:.0f} MB, "
          "first reached in:")
    print("\n".join(f"  {name}" for name in sampler.peak_stack) or "  (no library frame)")
    if timeline:
        for seconds, rss, where in sampler.timeline:
            print(f"  {seconds:6.0f} s {rss:7.0f} MB  {where}")
    print("highest resident set inside each function on the stack at a high (MB):")
    for name, rss in sorted(sampler.highest_in.items(), key=lambda item: -item[1])[:25]:
        print(f"  {rss:7.0f}  {name}")
    return code


if __name__ == "__main__":
    sys.exit(main([argument for argument in sys.argv[1:] if argument != "--timeline"], timeline="--timeline" in sys.argv))
