"""Progress bars of long graph work (a calibrated channel choice, its compensation): tqdm on stderr.

`progress` None shows a bar only on a terminal (never in a log, a pipe or a notebook's captured stream);
True or False force it. The bar is cleared when the work is done: the command's summary follows it."""

from __future__ import annotations

from tqdm import tqdm


def progress_bar(description: str, total: int, *, unit: str, progress: bool | None) -> tqdm:
    return tqdm(total=total, desc=description, unit=unit, leave=False, dynamic_ncols=True,
                disable=None if progress is None else not progress)
