"""Progress bars of long work (a calibrated channel choice, a latency table, a budget search): tqdm on stderr.

`progress` None shows a bar only on a terminal (never in a log, a pipe or a notebook's captured stream);
True or False force it. No bar is drawn where there is no stderr at all (`2>&-`): tqdm would fail on its
first write. The bar is cleared when the work is done: the command's summary follows it.

Off a terminal, the command line (`lines_off_terminal`) asks instead for a plain line every LINE_EVERY seconds
of work that lasts longer than that, and one when it ends: a log of a ten-minute prune says what it is doing,
and a short command's output is unchanged. A step that itself outlasts LINE_EVERY (an 18,432-column Hessian's
inverse) has its line written again as the time passes, so that a log never falls silent for longer. A library
caller gets neither unless it asks the same."""

from __future__ import annotations

import contextlib
import sys
import threading
import weakref
from collections.abc import Iterator

from tqdm import tqdm

LINE_EVERY = 30.0  # seconds between two progress lines off a terminal
_LINE = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {elapsed} elapsed, {remaining} left{postfix}"
_COUNT_LINE = "{desc}: {n_fmt} {unit}, {elapsed} elapsed{postfix}"  # a line's unit is plural: "layers"
_lines_asked = False


@contextlib.contextmanager
def lines_off_terminal(asked: bool = True) -> Iterator[None]:
    """Within the block, work whose `progress` is None writes progress lines where no bar is drawn (see above)."""
    global _lines_asked
    previous, _lines_asked = _lines_asked, asked
    try:
        yield
    finally:
        _lines_asked = previous


class _Lines:
    """A tqdm stream that turns each redraw into a line of stderr, as prunefx's log lines are written."""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line and sys.stderr is not None:
            sys.stderr.write(f"prunefx: {line}\n")

    def flush(self) -> None:
        if sys.stderr is not None:
            sys.stderr.flush()


class _LineBar(tqdm):
    """tqdm writing lines, and a thread that writes the line again while no update comes for LINE_EVERY seconds.
    The thread holds the bar weakly: a bar dropped unclosed is collected (tqdm's __del__ closes it) and the thread
    ends with it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._closed = threading.Event()
        threading.Thread(target=_beat, args=(weakref.ref(self), self._closed), name="prunefx-progress-line",
                         daemon=True).start()

    def __iter__(self):
        # tqdm's own iteration keeps the count in a local between redraws: the thread would write a stale one
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def close(self) -> None:
        self._closed.set()
        super().close()


def _beat(held: weakref.ref, closed: threading.Event) -> None:
    every = max(LINE_EVERY, 0.01)
    while not closed.wait(every):
        bar = held()
        if bar is None:
            return
        now = bar._time()
        if now - bar.last_print_t >= every and now >= bar.start_t + bar.delay:
            bar.refresh()
            bar.last_print_t = now  # an update crossing the interval now is not written twice
        del bar


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith("s") else "s")


def bar_or_lines(progress: bool | None, *, make=None, **options) -> tqdm:
    """`make(**options)` (tqdm by default, or tqdm.auto's) as a bar where `shown(progress)`, as progress lines
    where the command line asks for them, else disabled."""
    make = make or tqdm
    if shown(progress):
        return make(dynamic_ncols=True, **options)
    if progress is None and _lines_asked and sys.stderr is not None:
        counting = options.get("total") is None and not hasattr(options.get("iterable"), "__len__")
        options.update(leave=True, bar_format=_COUNT_LINE if counting else _LINE, ascii=True,
                       unit=_plural(options.get("unit", "step")))
        # position 0: a bar opened inside another (a candidate's scoring in a budget search) would otherwise move
        # the cursor up between lines; miniters 1: tqdm's monitor thread then leaves the interval alone
        return _LineBar(file=_Lines(), delay=LINE_EVERY, mininterval=LINE_EVERY, miniters=1, position=0, **options)
    return make(disable=True, **options)


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
    return bar_or_lines(progress, total=total, desc=description, unit=unit, leave=False, bar_format=count_only)
