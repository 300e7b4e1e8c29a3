"""The entries used last, by key: what a measurement keeps of the models it meets (built engines, compiled or
prepared models, exported files), each of which holds GPU memory or disk."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


class LastUsed:
    """The `keep` entries used last, by key: a search meets hundreds of candidates, so only the dense model (used
    by every measurement) and the few candidates met last stay. `released(entry)` runs after an entry is dropped
    (remove its file); `freed()` once the dropped entry is no longer referenced from here, so that what it held
    can be handed back (an engine's or a CUDA graph's GPU memory)."""

    def __init__(self, keep: int = 2, released: Callable[[object], object] | None = None,
                 freed: Callable[[], object] | None = None):
        self.keep, self.released, self.freed, self.entries = keep, released, freed, OrderedDict()
        self.made = self.dropped = 0

    def get(self, key, make: Callable[[], object]):
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        while len(self.entries) >= self.keep:
            self._drop_oldest()
        self.entries[key] = value = make()
        self.made += 1
        return value

    def rekey(self, change: Callable[[object, object], tuple[object, object]]) -> None:
        """Each entry (key, value) replaced by `change(key, value)`, in the same order: what is kept stays."""
        self.entries = OrderedDict(change(key, value) for key, value in self.entries.items())

    def clear(self) -> None:
        """Drop every entry (a measurement done with: what they hold goes back now, not when it is collected)."""
        while self.entries:
            self._pop_oldest()
        if self.freed is not None:
            self.freed()

    def _drop_oldest(self) -> None:
        self._pop_oldest()
        if self.freed is not None:
            self.freed()

    def _pop_oldest(self) -> None:
        _, entry = self.entries.popitem(last=False)
        self.dropped += 1
        if self.released is not None:
            self.released(entry)
        del entry  # the last reference held here: freed() can hand its memory back
