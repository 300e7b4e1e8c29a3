"""The entries used last, by key: what a measurement keeps of the models it meets (built engines, compiled or
prepared models, exported files), each of which holds GPU memory or disk."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


class LastUsed:
    """The `keep` entries used last, by key: a search meets hundreds of candidates, so only the dense model (used
    by every measurement) and the few candidates met last stay. `released(entry)` runs after an entry is
    dropped (hand its memory back, remove its file)."""

    def __init__(self, keep: int = 2, released: Callable[[object], object] | None = None):
        self.keep, self.released, self.entries = keep, released, OrderedDict()
        self.made = self.dropped = 0

    def get(self, key, make: Callable[[], object]):
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        while len(self.entries) >= self.keep:
            _, entry = self.entries.popitem(last=False)
            self.dropped += 1
            if self.released is not None:
                self.released(entry)
        self.entries[key] = value = make()
        self.made += 1
        return value
