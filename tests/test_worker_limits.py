"""`--workers` within what the machine carries (prunefx/data/worker_limits.py): capped at the usable cores
and at what the open-file limit leaves room for, and said so; never a fork bomb nor a loader that hangs
after "Too many open files"."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys

import pytest
import torch

from prunefx.data.batches import StaticBatches
from prunefx.data.worker_limits import FILES_FOR_THE_PROCESS, FILES_PER_WORKER, bounded_workers

pytestmark = pytest.mark.faults


def test_a_million_workers_are_capped_at_the_cores_and_said(caplog):
    cores = len(os.sched_getaffinity(0))
    with caplog.at_level(logging.WARNING, logger="prunefx"):
        loader = StaticBatches(torch.utils.data.TensorDataset(torch.zeros(4, 1), torch.zeros(4)), 2,
                               shuffle=False, num_workers=1_000_000)
    assert loader.num_workers == bounded_workers(cores) <= cores
    assert f"--workers 1000000 capped at {cores}" in caplog.text
    assert bounded_workers(0) == 0


@pytest.mark.parametrize("files", [64, FILES_FOR_THE_PROCESS + FILES_PER_WORKER])
def test_a_small_open_file_limit_leaves_room_or_decodes_in_the_main_process(files):
    """In a process whose soft and hard limits are `files` (what `ulimit -n` sets): it cannot raise them."""

    def limited():
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

    done = subprocess.run([sys.executable, "-c", "from prunefx.data.worker_limits import bounded_workers; "
                           "print(bounded_workers(2))"], preexec_fn=limited, capture_output=True, text=True,
                          timeout=120)
    expected = max(0, (files - FILES_FOR_THE_PROCESS) // FILES_PER_WORKER)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == min(expected, 2, len(os.sched_getaffinity(0)))
    assert f"the open-file limit is {files}" in done.stderr


def test_a_data_worker_whose_parent_went_away_prints_no_traceback(monkeypatch, capsys):
    """SIGTERM to `compress --workers 2`: a worker's thread finding the connection to its parent gone printed a
    ConnectionResetError traceback under the one-line message; other errors in a worker still show."""
    import threading

    from prunefx.data.batches import seed_worker
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    seed_worker(0)
    for error in (ConnectionResetError("reset by peer"), ValueError("a transform's own bug")):
        try:
            raise error
        except Exception as caught:
            arguments = threading.ExceptHookArgs((type(caught), caught, caught.__traceback__, None))
            threading.excepthook(arguments)
    printed = capsys.readouterr().err
    assert "ConnectionResetError" not in printed and "ValueError: a transform's own bug" in printed


def test_the_library_leaves_the_open_file_limit_as_found_and_the_command_raises_it():
    """A loader with workers made by the library keeps the process's soft limit (code that waits with select()
    takes no descriptor above 1024); `prunefx` itself raises it towards the hard limit, at its start."""

    def limited():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 8192))

    script = ("import resource, torch\n"
              "from prunefx.data.batches import StaticBatches\n"
              "StaticBatches(torch.utils.data.TensorDataset(torch.zeros(4, 1), torch.zeros(4)), 2, shuffle=False, "
              "num_workers=1)\n"
              "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
              "from prunefx.data.worker_limits import raise_open_file_limit\n"
              "raise_open_file_limit()\n"
              "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    done = subprocess.run([sys.executable, "-c", script], preexec_fn=limited, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1024", "4096"]
