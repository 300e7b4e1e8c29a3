"""PRUNEFX_DEBUG: whether the user asked to see what prunefx keeps quiet (torch's prints and warnings,
ONNX Runtime's log, the traceback of an internal error)."""

from __future__ import annotations

import os

# the spellings of "no" a shell user writes for a flag: PRUNEFX_DEBUG=0 must not turn debugging on
_OFF = {"", "0", "false", "no", "off"}


def debug_requested() -> bool:
    return os.environ.get("PRUNEFX_DEBUG", "").strip().lower() not in _OFF
