"""A process started in a folder that was deleted since (a shell left in a removed build folder) cannot
import torch: its native libraries stop the process with a fatal error naming no folder. prunefx checks
first, on import of this module (the first thing prunefx/__init__.py does, before torch is imported), and
says what is wrong in one line (exit 2)."""

from __future__ import annotations

import os
import sys

EXIT_USER_ERROR = 2


def check_working_folder() -> None:
    try:
        os.getcwd()
    except FileNotFoundError:
        sys.stderr.write("prunefx: error: the current folder no longer exists (it was deleted after this shell "
                         "entered it): cd to an existing folder and run again\n")
        raise SystemExit(EXIT_USER_ERROR) from None


check_working_folder()
