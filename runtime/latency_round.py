"""One timing round of runtime/latency.py's compare_rounds in a process of its own (`processes=True`).

    python -m prunefx.runtime.latency_round REQUEST ANSWER

REQUEST holds two pickles written by the calling prunefx process: its `sys.path` (so that the makers'
functions import here as they did there), then the round's task; the blocks go to ANSWER. Both files live in
a temporary folder the caller made for this round, so nothing else's pickles are read.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from prunefx.runtime.latency import timing_round


def main(request: str, answer: str) -> int:
    with open(request, "rb") as file:
        sys.path[:0] = [entry for entry in pickle.load(file) if entry not in sys.path]
        task = pickle.load(file)
    Path(answer).write_bytes(pickle.dumps(timing_round(*task)))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
