"""What a module made from its subgraph (subgraph_module.py) returns: the structure its dense original returned.

The graph computes the one tensor the rest of the model reads. The module's callers may expect more around it:
Hugging Face attention returns `(output, weights)` with the weights None, a stage `(tokens, height, width)`, a
backbone a model output class. The structure of one watched call of the dense model (passed_tensors.py) is kept,
its other entries as they were there (None, sizes of the fixed image): where it holds other tensors, which the
graph does not compute, the bare tensor is returned and the proof decides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree


@dataclass(frozen=True)
class ReturnedLike:
    spec: pytree.TreeSpec
    leaves: tuple    # the dense call's entries, the tensor's place None
    place: int       # where the tensor goes

    @classmethod
    def of(cls, output) -> ReturnedLike | None:
        """The shape of `output` around its one tensor; None for a bare tensor or a structure of several."""
        if output is None or isinstance(output, torch.Tensor):
            return None
        leaves, spec = pytree.tree_flatten(output)
        places = [index for index, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        if len(places) != 1:
            return None
        return cls(spec, tuple(None if index == places[0] else leaf for index, leaf in enumerate(leaves)), places[0])

    def around(self, tensor: torch.Tensor):
        """`tensor` in the dense call's structure."""
        leaves = list(self.leaves)
        leaves[self.place] = tensor
        return pytree.tree_unflatten(leaves, self.spec)
