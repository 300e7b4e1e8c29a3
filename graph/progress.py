"""Progress bars of long work (a calibrated channel choice, a latency table, a budget search): tqdm on stderr.

`progress` None shows a bar only on a terminal (never in a log, a pipe or a notebook's captured stream);
True or False force it. No bar is drawn where there is no stderr at all (`2>&-`): tqdm would fail on its
first write. The bar is cleared when the work is done: the command's summary follows it."""

from __future__ import annotations

import sys

from tqdm import tqdm


def shown(progress: bool | None) -> bool:
    """Whether a bar is drawn: as `progress` says, on a terminal when it is None, never without a stderr."""
    stream = sys.stderr
    if stream is None:
        return False
    if progress is not None:
        return progress
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):  # closed, or a stand-in without isatty
        return False


def progress_bar(description: str, total: int | None, *, unit: str, progress: bool | None) -> tqdm:
    """`total` None: a count without an end (a search's measurements), drawn "DESC (UNITs: 3) [00:41, ...]"."""
    count_only = None if total is not None else f"{{desc}} ({unit}s: {{n_fmt}}) [{{elapsed}}{{postfix}}]"
    return tqdm(total=total, desc=description, unit=unit, leave=False, dynamic_ncols=True, bar_format=count_only,
                disable=not shown(progress))
