"""H = X^T X summed over batches, their rows buffered and multiplied a block at a time, equals the
float64 matrix product summed batch by batch, whether the buffer is flushed by its row count, its
bytes or at the end."""

import pytest
import torch

from prunefx.graph.layer_inputs import _accumulate, _finish


@pytest.mark.parametrize("columns", [1, 7, 130, 512, 1100])
def test_the_buffered_sum_equals_the_summed_products(columns):
    generator = torch.Generator().manual_seed(columns)
    batches = [torch.randn(rows, columns, generator=generator) for rows in (3, 2100, 40, 1, 5000)]
    total: list = [0, None, []]
    for x in batches:
        _accumulate(total, x)
    hessian = _finish(total)
    expected = sum(x.double().t() @ x.double() for x in batches)
    assert hessian.dtype == torch.float64 and hessian.is_contiguous()
    torch.testing.assert_close(hessian, expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(hessian, hessian.t(), rtol=1e-12, atol=1e-12)
