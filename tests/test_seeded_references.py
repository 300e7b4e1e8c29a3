"""A model reference builds the same random weights every time (seed 0), and leaves the caller's random
state as it found it."""

import pytest
import torch

from prunefx.models.references import build_model


def _weights(reference):
    return build_model(reference).module.state_dict()


def test_one_reference_is_one_model_and_the_callers_random_state_is_kept():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first, second = _weights("prunefx:resnet20"), _weights("prunefx:resnet20")
    assert torch.equal(torch.random.get_rng_state(), before)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    torch.manual_seed(7)  # the caller's seed does not reach the builder
    third = _weights("prunefx:resnet20")
    assert all(torch.equal(first[name], third[name]) for name in first)
    assert any(first[name].float().std() > 0 for name in first if name.endswith("weight"))


def test_the_callers_gpu_seed_is_kept():
    """torch.manual_seed seeds every GPU too (queued until the process starts CUDA): the builder's seed 0 must
    not become the caller's GPU seed."""
    torch.manual_seed(123)
    if torch.cuda.is_initialized():
        before = torch.cuda.get_rng_state_all()
        build_model("prunefx:resnet20")
        assert all(torch.equal(now, then) for now, then in zip(torch.cuda.get_rng_state_all(), before))
        return
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)  # where torch queues a seed before CUDA starts
    if tracker is None:
        pytest.skip(f"torch {torch.__version__} queues GPU seeds elsewhere")
    queued = tracker.get_calls()
    build_model("prunefx:resnet20")
    assert tracker.get_calls() == queued
