"""Sizes matched by value alone, set back one at a time where the write-back's proof fails.

The default resizer (module_resizers.py) sets each integer attribute whose value equals a size the channel
removal rewrote. A value may match by chance: BEiT's relative-position window of 4 beside its 4 heads. Where a
failing module has no subgraph to stand in for it (subgraph_fallback.py), its matched attributes are tried as they
were in the dense model, one at a time, the one tried before made pruned again: the others were matched right.
"""

from __future__ import annotations

from torch import nn


class SetBack:
    """The attributes of `module`'s modules set by matching values (`matched`: path -> name -> dense value), and
    those now set back to it."""

    def __init__(self, module: nn.Module, matched: dict[str, dict[str, object]]):
        self.module, self.matched = module, matched
        self.applied: dict[str, dict[str, object]] = {}  # path -> the attribute set back -> its pruned value
        self._tried: dict[str, int] = {}  # path -> how many of its attributes were set back in turn

    def next(self, scope: str | None) -> bool:
        """The module at `scope` with its next matched attribute set back, the one before pruned again: whether
        there was one."""
        if scope is None or scope not in self.matched:
            return False
        owner, names, done = self.module.get_submodule(scope), list(self.matched[scope]), self._tried.get(scope, 0)
        if done > len(names):  # each tried, and the last made pruned again
            return False
        if done:
            previous = names[done - 1]
            setattr(owner, previous, self.applied[scope].pop(previous))
        self._tried[scope] = done + 1
        if done == len(names):
            return False
        attribute = names[done]
        self.applied.setdefault(scope, {})[attribute] = getattr(owner, attribute)
        setattr(owner, attribute, self.matched[scope][attribute])
        return True

    def last(self) -> list[str]:
        """The module set back last, if any: one failing after another's attribute was set back may need that
        one's next attribute instead."""
        return list(self.applied)[-1:]

    def undo(self) -> None:
        """Every attribute pruned again, as before the first was set back."""
        for scope, values in self.applied.items():
            for attribute, value in values.items():
                setattr(self.module.get_submodule(scope), attribute, value)
        self.applied.clear()
        self._tried.clear()

    def described(self) -> list[str]:
        return [f"'{scope}.{attribute}' as in the dense model" for scope, values in self.applied.items()
                for attribute in values]
