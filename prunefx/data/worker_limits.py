"""How many DataLoader worker processes a run starts: what was asked, within what the machine carries.

`--workers 1000000` would start processes until the system refuses (a fork bomb where no process limit
is set), and workers under a small open-file limit (`ulimit -n 32`) hang the loader after "Too many open
files" (each batch a worker hands over is a shared-memory file descriptor). So the count is capped at the
cores this process may run on, and at what the open-file limit leaves room for (the `prunefx` command raises
the soft limit towards the hard one first, as the system allows any process to; the library leaves the process's
limit as it is); each cap is said once, on prunefx's log.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource

_log = logging.getLogger(__name__)
# Open files the main process keeps for itself (torch, the data set's files, the outputs), and those each
# worker holds: its pipes and the shared-memory descriptors of the batches it prefetches (4 by default).
FILES_FOR_THE_PROCESS = 256
FILES_PER_WORKER = 32
_WANTED_FILES = 4096


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform (macOS)
        return os.cpu_count() or 1


def open_file_limit() -> int:
    """The soft RLIMIT_NOFILE, as the process has it: a library leaves it alone (code that waits on file
    descriptors with select() cannot take one above 1024); the command raises it (raise_open_file_limit)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_file_limit() -> None:
    """The soft RLIMIT_NOFILE raised towards the hard limit, as any process may: what the `prunefx` command does
    at its start, so that a default soft limit of 1024 leaves room for its data workers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _WANTED_FILES if hard == resource.RLIM_INFINITY else min(hard, _WANTED_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def bounded_workers(asked: int) -> int:
    """`asked` workers, at most one per usable core and as many as the open-file limit leaves room for."""
    if asked <= 0:
        return 0
    cores = usable_cores()
    workers = min(asked, cores)
    if workers < asked:
        _say_once(f"--workers {asked} capped at {workers}: the cores this process may run on")
    files = open_file_limit()
    if files != resource.RLIM_INFINITY:
        room = max(0, (files - FILES_FOR_THE_PROCESS) // FILES_PER_WORKER)
        if room < workers:
            _say_once(f"{workers} workers capped at {room}: the open-file limit is {files} (ulimit -n); "
                      f"each worker needs about {FILES_PER_WORKER}"
                      + ("; images are decoded in the main process" if room == 0 else ""))
            workers = room
    return workers


@functools.cache
def _say_once(message: str) -> None:
    _log.warning(message)
