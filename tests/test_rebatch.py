"""Rebatching: a program captured (and pruned, trained) at one batch size, cut down to a smaller one."""

import pytest
import torch

from prunefx.graph import PrunefxError, capture, verify
from prunefx.graph.rebatch import rebatch
from prunefx.models import build_model
from prunefx.passes.remove_channels import remove_channels

# (model, input shape at batch 4): CNNs, a channel shuffle, a segmentation net, ViTs with class tokens.
CASES = [
    ("prunefx:resnet20", (4, 1, 28, 28)),
    ("prunefx:mobilenetv2_small", (4, 1, 28, 28)),
    ("prunefx:vit_tiny_fmnist", (4, 1, 28, 28)),
    ("torchvision:shufflenet_v2_x0_5", (4, 3, 64, 64)),
    ("torchvision:lraspp_mobilenet_v3_large", (4, 3, 64, 64)),
    ("timm:deit_tiny_patch16_224", (4, 3, 224, 224)),
]


def _program(ref, shape):
    torch.manual_seed(0)
    spec = build_model(ref, image_size=shape[-1] if ref.startswith("timm") else None)
    return capture(spec.module.eval(), torch.randn(shape), name=ref).eval()


def _first(output):
    return output["out"] if isinstance(output, dict) else output


@pytest.mark.slow
@pytest.mark.parametrize("ref, shape", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("batch", [1, 3])
def test_rebatched_outputs_equal_the_first_items(ref, shape, batch):
    program = _program(ref, shape)
    inputs = torch.randn(shape)
    expected = _first(program(inputs))
    smaller = rebatch(program, batch)
    got = _first(smaller(inputs[:batch]))
    assert got.shape == (batch, *expected.shape[1:])
    torch.testing.assert_close(got, expected[:batch], rtol=1e-4, atol=1e-5)
    assert smaller.example_inputs[0].shape[0] == batch
    verify(smaller)  # re-exports at the new batch size
    assert _first(program(inputs)).shape[0] == 4  # the original is untouched


def test_a_pruned_program_rebatches_and_survives_save_and_load(tmp_path):
    program = _program("prunefx:resnet20", (8, 1, 28, 28))
    remove_channels(program, config={"macs": 0.5, "round_to": 4})
    inputs = torch.randn(8, 1, 28, 28)
    single = rebatch(program, 1)
    loaded = type(program).load(single.save(tmp_path / "single.pt2"))
    torch.testing.assert_close(loaded(inputs[:1]), program(inputs)[:1], rtol=1e-4, atol=1e-5)


def test_a_larger_batch_is_refused():
    with pytest.raises(PrunefxError, match="only a smaller batch"):
        rebatch(_program("prunefx:resnet20", (2, 1, 28, 28)), 4)


def test_training_mode_is_refused():
    program = _program("prunefx:resnet20", (2, 1, 28, 28)).train()
    with pytest.raises(PrunefxError, match="training mode"):
        rebatch(program, 1)


def test_window_partitions_that_fold_the_batch_are_refused_with_a_reason():
    program = _program("torchvision:swin_t", (2, 3, 64, 64))
    with pytest.raises(PrunefxError, match="cannot change the batch size of torchvision:swin_t"):
        rebatch(program, 1)
