"""Unlabelled images are scored by agreement with the dense model (prunefx/data/unlabelled.py): its labels are
its own predictions, computed once per batch and read again at every later evaluation."""

import torch

from prunefx.data.batches import IGNORED_LABEL
from prunefx.data.tensor_samples import tensor_batches
from prunefx.data.unlabelled import REAL_IMAGE, DenseLabels
from prunefx.graph import capture


def test_the_dense_models_labels_are_its_predictions_computed_once_per_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    dense = capture(model, torch.randn(4, 3, 8, 8), name="tiny").eval()
    images = torch.randn(10, 3, 8, 8)  # 3 batches of 4, the last padded with 2 copies labelled -1
    loader = tensor_batches(images, torch.full((10,), REAL_IMAGE), 4, shuffle=False)
    labels = DenseLabels(loader, dense)
    runs = []
    labels.dense.module.register_forward_hook(lambda module, inputs, output: runs.append(1))
    passes = [[label for _, label in labels] for _ in range(3)]
    assert len(runs) == 3  # one run per batch, on the first pass only
    with torch.no_grad():
        predicted = model(images).argmax(1)  # the oracle: the user's module itself
    expected = torch.cat([predicted, torch.full((2,), IGNORED_LABEL)])
    for labelled in passes:
        assert torch.equal(torch.cat(labelled), expected) and all(batch.dtype == torch.int64 for batch in labelled)
