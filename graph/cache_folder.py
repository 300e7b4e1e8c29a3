"""The one folder prunefx caches in: latency tables, TensorRT engines and timings, generated scenes. Each kind has
a sub-folder of its own; deleting the folder only costs the time to make its contents again."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$PRUNEFX_CACHE_DIR, else $XDG_CACHE_HOME/prunefx, else ~/.cache/prunefx. $PRUNEFX_CACHE, the name the
    scene cache alone read once, is read when PRUNEFX_CACHE_DIR is not set."""
    explicit = os.environ.get("PRUNEFX_CACHE_DIR") or os.environ.get("PRUNEFX_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prunefx"
