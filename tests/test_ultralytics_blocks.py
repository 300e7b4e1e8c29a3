"""Pruned Ultralytics split blocks pickle and load again, also from checkpoints that name their classes in
prunefx.interop.ultralytics_bridge, where they were defined before they had a module of their own."""

from __future__ import annotations

import pickle

import pytest
import torch

block = pytest.importorskip("ultralytics.nn.modules.block")


def _pruned_c2f():
    from prunefx.interop.ultralytics_blocks import pruned_class

    torch.manual_seed(0)
    module = block.C2f(16, 16, 1).eval()
    module.__class__ = pruned_class(block.C2f)
    module.split_sizes = (8, 8)
    return module


def test_a_pruned_block_pickles_and_loads_with_its_own_forward():
    module, x = _pruned_c2f(), torch.randn(1, 16, 8, 8)
    again = pickle.loads(pickle.dumps(module))
    assert type(again).__name__ == "PrunedC2f" and torch.equal(again(x), module(x))


def test_a_checkpoint_naming_the_bridge_module_loads():
    module, x = _pruned_c2f(), torch.randn(1, 16, 8, 8)
    data = pickle.dumps(module)
    old = data.replace(b"prunefx.interop.ultralytics_blocks", b"prunefx.interop.ultralytics_bridge")
    assert old != data
    assert torch.equal(pickle.loads(old)(x), module(x))
