"""runtime/measure/last_used.py: the entries a measurement keeps, and the memory of those it drops."""

from __future__ import annotations

import weakref

from prunefx.runtime.measure.last_used import LastUsed


class _Engine:
    """Stands in for a built engine or a captured CUDA graph: memory handed back only once unreferenced."""

    def __init__(self, name: str):
        self.name = name


def test_the_oldest_entry_goes_and_is_unreferenced_when_its_memory_is_handed_back():
    references, released, alive_when_freed = {}, [], []
    cache = LastUsed(keep=2, released=lambda entry: released.append(entry.name),
                     freed=lambda: alive_when_freed.append(sorted(n for n, ref in references.items() if ref())))
    for name in ("dense", "a", "dense", "b"):
        entry = cache.get(name, lambda name=name: _Engine(name))
        references.setdefault(name, weakref.ref(entry))
        del entry
    assert list(cache.entries) == ["dense", "b"] and (cache.made, cache.dropped) == (3, 1)
    assert released == ["a"] and alive_when_freed == [["dense"]]  # "a" was gone before its memory was freed
