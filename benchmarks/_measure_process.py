"""Run one command and write its wall time and peak resident memory as JSON (what benchmarks/tool_speed.py
runs each case through).

Why a process of its own: Linux charges a process, at exec, with the peak memory of the image it replaced,
so a command started straight from a benchmark that has imported torch would report at least the
benchmark's own peak. Started from this small stdlib-only launcher, the command reports its own (and that
of the processes it waited for: os.wait4's ru_maxrss). Past the timeout the command's whole process group
is killed and the result says so.

    python -S benchmarks/_measure_process.py RESULT.json TIMEOUT_S COMMAND...
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time


def measure(command: list[str], timeout: float) -> dict:
    start = time.perf_counter()
    child = subprocess.Popen(command, start_new_session=True)  # its own group: killed with what it started
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended just now
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        _, status, usage = os.wait4(child.pid, 0)  # Popen.wait would not hand back the resource usage
    finally:
        timer.cancel()
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": time.perf_counter() - start, "peak_rss_kib": usage.ru_maxrss,  # KiB on Linux
            "exit_code": child.returncode, "timed_out": expired.is_set()}


def main(argv: list[str]) -> int:
    result_path, timeout, command = argv[0], float(argv[1]), argv[2:]
    measured = measure(command, timeout)  # first: a command that cannot start leaves no result file
    with open(result_path, "w") as result:
        json.dump(measured, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
