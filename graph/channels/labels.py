"""Channel labels: the bookkeeping behind dependency analysis ("combing").

Every index of every dimension of every tensor in the graph gets an integer *label*. Two labels
are *tied* when removing one index forces removing the other (a residual add ties its operands'
channels, a convolution ties its input channels to its weight's dim 1, ...). Label 0 is FIXED: a
label tied to it can never be removed (graph inputs and outputs, spatial dims, selected indices,
dims an unknown operator touches).

A reshape that splits one dim into several (C -> heads x head_dim) or merges several into one
(flatten) is recorded as a *grid*: an array of labels whose shape is the factor sizes, tied
element-wise to the merged dim, and whose coordinates along axis i are the labels of factor i.
Removing a factor index removes the whole slice of the grid; grid elements are never chosen on
their own, so a pruning decision always respects the factorisation (whole heads, or the same
head-dims in every head).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FIXED = 0


def distinct(classes: np.ndarray) -> np.ndarray:
    """The distinct values of an array of class ids, sorted (np.unique's answer). By a sort: NumPy 2.3+'s
    np.unique hashes, which on a grid of a few hundred thousand distinct classes (a CondConv's expert weights)
    took 40 times as long."""
    ordered = np.sort(classes, axis=None)
    if ordered.size:
        ordered = ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]
    return ordered


@dataclass
class Grid:
    elements: np.ndarray            # labels, shape = factor sizes
    factors: list[np.ndarray]       # labels of each factor (1-D, one per grid axis)


@dataclass
class Member:
    """A dimension of a parameter or buffer: removing channel labels slices this tensor."""

    target: str
    dim: int
    labels: np.ndarray


@dataclass
class Blocker:
    """An operator without a rule (or with an unsupported form) that pinned some labels."""

    node: str
    operator: str
    reason: str
    labels: np.ndarray


@dataclass
class LabelSpace:
    next_label: int = 1
    ties: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    grids: list[Grid] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    blockers: list[Blocker] = field(default_factory=list)
    # Labels whose removal cannot be exact even when their weights are zero (they are normalised
    # or reduced together with kept channels: layer norm, softmax, mean over channels).
    inexact: list[np.ndarray] = field(default_factory=list)

    def fresh(self, size: int) -> np.ndarray:
        labels = np.arange(self.next_label, self.next_label + size, dtype=np.int64)
        self.next_label += size
        return labels

    @staticmethod
    def fixed(size: int) -> np.ndarray:
        return np.zeros(size, dtype=np.int64)

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        if a.shape != b.shape:
            raise ValueError(f"cannot tie dims of sizes {a.shape} and {b.shape}")
        self.ties.append((a, b))

    def pin(self, labels: np.ndarray, *, node: str, operator: str, reason: str) -> None:
        """Make `labels` unremovable because of `operator` (solved together with the ties)."""
        self.blockers.append(Blocker(node, operator, reason, labels))

    def grid(self, factors: list[np.ndarray]) -> np.ndarray:
        """Flat labels of the merged dim whose row-major factors are `factors`."""
        elements = self.fresh(int(np.prod([f.size for f in factors])))
        self.grids.append(Grid(elements.reshape([f.size for f in factors]), list(factors)))
        return elements
