"""Shape propagation: every node's `meta['val']` recomputed with fake tensors (no memory, no kernels).

Parameters and buffers stay real tensors (the mode converts them on the fly instead of copying them), so an
in-place update in the graph reaches the real one: a training-mode batch norm's `num_batches_tracked += 1` is
one element, computed for real. Buffers are put back by value: checking or loading a graph never moves its
statistics.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from prunefx.graph.model_state import values_kept


def propagate_shapes(module: torch.fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with torch.no_grad(), values_kept(module.buffers()):
        FakeTensorProp(module, mode=mode).propagate(*inputs)
