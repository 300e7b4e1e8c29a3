"""Copies of the tensors a call is given, for code that may write into its arguments (a user's module starting
with `ReLU(inplace=True)`, an in-place operator run again): the caller's tensors stay as they were."""

from __future__ import annotations

import torch
import torch.utils._pytree as pytree


def tensor_copies(tree):
    """`tree` (a tuple, a dict, nested) with every tensor leaf cloned; other leaves as they are."""
    return pytree.tree_map(lambda leaf: leaf.clone() if isinstance(leaf, torch.Tensor) else leaf, tree)
