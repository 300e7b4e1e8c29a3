"""What goes with one grid factor class (a head: its head dims; a nested grid's factors and theirs), found by
following only the grid slices that class indexes. Sweeping every grid until nothing changes reaches the same
fixpoint, but asked once per factor class of a ViT-L (about two thousand heads and head dims) that was a second
and a half of `prune`, and once per candidate of a latency search on a Swin most of the search.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from prunefx.graph.channels.labels import distinct

if TYPE_CHECKING:  # the analysis builds one of these on demand (ChannelAnalysis.factor_slices)
    from prunefx.graph.channels.analysis import ChannelAnalysis


class FactorSlices:
    def __init__(self, analysis: ChannelAnalysis):
        self.classes = analysis.classes
        # class -> the element labels of each grid slice one of its factor indices selects
        self.slices: dict[int, list[np.ndarray]] = defaultdict(list)
        for grid in analysis.space.grids:
            for axis, factor in enumerate(grid.factors):
                moved = np.moveaxis(grid.elements, axis, 0)
                for index, cls in enumerate(self.classes[factor].tolist()):
                    self.slices[cls].append(moved[index])
        self.factor_classes = np.array(sorted(self.slices), dtype=np.int64)
        self._removed: dict[int, np.ndarray] = {}

    @functools.cached_property
    def taking_along(self) -> np.ndarray:
        """The factor classes whose removal takes other classes along (a head its head dims): a flattened
        channel is a factor whose slice is itself alone."""
        return np.array([cls for cls in self.factor_classes.tolist() if self.removed_with(cls).size > 1],
                        dtype=np.int64)

    def removed_with(self, cls: int) -> np.ndarray:
        """The classes that go when `cls` goes, itself included, sorted (found once per class)."""
        if cls not in self._removed:
            self._removed[cls] = self._closure(cls)
        return self._removed[cls]

    def _closure(self, cls: int) -> np.ndarray:
        found, waiting = {cls}, [cls]
        while waiting:
            for labels in self.slices.get(waiting.pop(), ()):
                for inner in distinct(self.classes[labels]).tolist():
                    if inner not in found:
                        found.add(inner)
                        waiting.append(inner)
        return np.array(sorted(found), dtype=np.int64)
