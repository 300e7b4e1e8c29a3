"""The exact `obs` channel choice (obs_steps exact) and the compensated weights stay what they were when
the references in tests/data/obs_reference_*.pt were written: a speed-up of the
second-order math must not change its results. Same pruned shapes (the same number of channels per
layer), the same obs scores and the same sampled weights within rtol 1e-4: channels chosen
differently would move the sampled rows of the layers that are not compensated (the stem) and of all
that are. The fast elimination (the default) chooses other channels: it is held to the exact one's
output error on held-out inputs instead.

The cases: calibrated `obs` pruning with compensation of a torchvision ResNet-18 and a timm ViT-Tiny
(random weights, fixed seeds); the digest: the obs scores of every group, and per tensor of the pruned
model its shape, sum, absolute sum and 256 entries at fixed positions. Run this file as a script to
rewrite the references from the code in the tree (only when a change of the results is intended)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from prunefx.graph import capture
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.channels.importance import channel_importance
from prunefx.passes.remove_channels import remove_channels

DATA = Path(__file__).parent / "data"
SAMPLES = 256


def _resnet18() -> torch.nn.Module:
    import torchvision
    return torchvision.models.resnet18(weights=None)


def _vit_tiny() -> torch.nn.Module:
    import timm
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8)


CASES = {"resnet18": (_resnet18, 32), "vit_tiny": (_vit_tiny, 32)}


def _case(name: str):
    """The captured model of case `name` and its calibration batches (fixed seeds)."""
    make, size = CASES[name]
    torch.manual_seed(0)
    model = make().eval()
    program = capture(model, torch.randn(4, 3, size, size)).eval()
    return program, [(torch.randn(4, 3, size, size),) for _ in range(2)]


def _pruned(program, calibration, steps: str):
    return remove_channels(program.clone(), config={"macs": 0.5, "importance": "obs", "compensate": True,
                                                     "calibration": calibration, "obs_steps": steps})


def run_case(name: str) -> dict:
    """The digest of the exact obs scores and of the pruned, compensated model of case `name`."""
    program, calibration = _case(name)
    combing = find_channel_groups(program.module)
    scores = channel_importance(program.module, combing, "obs", calibration=calibration, obs_steps="exact").scores
    result = _pruned(program, calibration, "exact")
    digest: dict = {"scores": [torch.as_tensor(s, dtype=torch.float64) for s in scores], "tensors": {}}
    generator = torch.Generator().manual_seed(0)
    for key, tensor in sorted(result.program.module.state_dict().items()):
        flat = tensor.detach().reshape(-1).double()
        at = torch.randint(0, max(flat.numel(), 1), (min(SAMPLES, flat.numel()),), generator=generator)
        digest["tensors"][key] = {"shape": tuple(tensor.shape), "sum": float(flat.sum()),
                                  "abs": float(flat.abs().sum()), "at": at, "values": flat[at].clone()}
    return digest


RTOL = 1e-4

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _close(actual: torch.Tensor, expected: torch.Tensor, scale: float) -> None:
    # entries near zero (a compensated weight that cancels) are compared at rtol of the largest entry
    torch.testing.assert_close(actual.double(), expected.double(), rtol=RTOL, atol=RTOL * scale)


@pytest.mark.parametrize("case", sorted(CASES))
def test_obs_choice_and_compensation_match_the_reference(case):
    pytest.importorskip("timm" if case.startswith("vit") else "torchvision")
    expected = torch.load(DATA / f"obs_reference_{case}.pt")
    actual = run_case(case)
    assert len(actual["scores"]) == len(expected["scores"])
    for got, want in zip(actual["scores"], expected["scores"]):
        assert got.shape == want.shape
        _close(got, want, float(want.abs().max()))
    assert sorted(actual["tensors"]) == sorted(expected["tensors"])
    for key, want in expected["tensors"].items():
        got = actual["tensors"][key]
        assert got["shape"] == want["shape"], key
        largest = float(want["values"].abs().max()) if want["values"].numel() else 0.0
        _close(got["values"], want["values"], largest)
        assert got["abs"] == pytest.approx(want["abs"], rel=RTOL), key
        assert got["sum"] == pytest.approx(want["sum"], rel=RTOL, abs=RTOL * want["abs"]), key


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_fast_elimination_keeps_the_exact_output_error(case):
    """obs_steps fast prunes to the same MACs as exact, with an output error on held-out inputs (relative to
    the dense output) within a small factor of exact's."""
    pytest.importorskip("timm" if case.startswith("vit") else "torchvision")
    program, calibration = _case(case)
    held_out = torch.randn(calibration[0][0].shape, generator=torch.Generator().manual_seed(1))
    dense = program(held_out)
    errors, macs = {}, {}
    for steps in ("exact", "fast"):
        result = _pruned(program, calibration, steps)
        errors[steps] = float((result.program(held_out) - dense).norm() / dense.norm())
        macs[steps] = result.facts.macs_kept
    assert macs["fast"] == pytest.approx(macs["exact"], abs=0.03)
    assert errors["fast"] <= 1.15 * errors["exact"], errors


if __name__ == "__main__":
    for case in sys.argv[1:] or list(CASES):
        digest = run_case(case)
        for entry in digest["tensors"].values():  # the positions are drawn again when compared: not stored
            entry.pop("at")
            entry["values"] = entry["values"].float()
        digest["scores"] = [scores.float() for scores in digest["scores"]]
        torch.save(digest, DATA / f"obs_reference_{case}.pt")
        print("wrote", DATA / f"obs_reference_{case}.pt")
