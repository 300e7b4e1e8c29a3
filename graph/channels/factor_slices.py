"""What goes with one grid factor class (a head: its head dims; a nested grid's factors and theirs), found by
following only the grid slices that class indexes. removal.expand_mask reaches the same fixpoint for any
mask but sweeps every grid until nothing changes: asked once per factor class of a ViT-L (about two
thousand heads and head dims) that was a second and a half of `prune`.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

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

    def removed_with(self, cls: int) -> np.ndarray:
        """The classes that go when `cls` goes, itself included, sorted: expand_mask of that one class."""
        found, waiting = {cls}, [cls]
        while waiting:
            for labels in self.slices.get(waiting.pop(), ()):
                for inner in np.unique(self.classes[labels]).tolist():
                    if inner not in found:
                        found.add(inner)
                        waiting.append(inner)
        return np.array(sorted(found), dtype=np.int64)
