"""Shared fixtures for the test suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunefx.graph.attributes import get_tensor
from prunefx.graph.channel_removal import expand_removed


def _zero_channels(program, combing, removed: set[int]) -> None:
    """Zero every slice of every tensor that the removed classes touch (after expanding them over the
    grids they control), so that removing them afterwards must not change the outputs. Running
    variances become 1 instead, so that a batch norm maps the zeroed channels to exactly zero."""
    analysis = combing.analysis
    gone = np.array(sorted(expand_removed(analysis, set(removed))), dtype=np.int64)
    for node in program.graph.nodes:
        if node.op != "get_attr":
            continue
        tensor = get_tensor(program.module, node.target)
        for dim, labels in enumerate(analysis.node_labels[node]):
            mask = np.isin(analysis.classes[labels], gone)
            if mask.any():
                with torch.no_grad():
                    tensor.index_fill_(dim, torch.from_numpy(np.flatnonzero(mask)),
                                       1.0 if "running_var" in node.target else 0.0)


@pytest.fixture(scope="session")
def zero_channels():
    """The function `zero_channels(program, combing, removed)` (see `_zero_channels`). Session-scoped
    since it is stateless, so hypothesis tests can use it without the function-scoped-fixture check."""
    return _zero_channels


@pytest.fixture
def one_thread():
    """Tests on tiny inputs: one intra-op thread is as fast, and on a busy machine a spinning thread
    pool makes each forward pass a hundred times slower. The caller's thread count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
