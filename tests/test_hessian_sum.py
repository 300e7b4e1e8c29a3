"""H = X^T X summed over batches, their rows buffered and multiplied a block at a time, equals the
float64 matrix product summed batch by batch, whether the buffer is flushed by its row count, its
bytes or at the end; the rows are kept exactly while they are few enough, and dropped past that."""

import numpy as np
import pytest
import torch

from prunefx.graph.gram_sum import Float64Rows, GramSum

BATCH_ROWS = (3, 2100, 40, 1, 5000)


def _batches(columns: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(columns)
    return [torch.randn(rows, columns, generator=generator) for rows in BATCH_ROWS]


@pytest.mark.parametrize("columns", [1, 7, 130, 512, 1100])
def test_the_buffered_sum_equals_the_summed_products(columns):
    batches = _batches(columns)
    total = GramSum()
    for x in batches:
        total.add(x)
    hessian = total.finish()
    expected = sum(x.double().t() @ x.double() for x in batches)
    assert hessian.dtype == torch.float64 and hessian.is_contiguous()
    torch.testing.assert_close(hessian, expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(hessian, hessian.t(), rtol=1e-12, atol=1e-12)
    assert total.rows == sum(BATCH_ROWS) and total.kept_rows() is None


@pytest.mark.parametrize(("keep_up_to", "kept"), [(sum(BATCH_ROWS), True), (sum(BATCH_ROWS) - 1, False)])
def test_the_rows_are_kept_while_there_are_few_enough(keep_up_to, kept):
    batches = _batches(9)
    total = GramSum(keep_up_to=keep_up_to)
    for x in batches:
        total.add(x)
    hessian = total.finish()
    rows = total.kept_rows()
    if not kept:
        assert rows is None
        return
    assert rows.dtype == torch.float64
    assert torch.equal(rows, torch.cat(batches).double())  # every row, in order, unrounded
    torch.testing.assert_close(rows.t() @ rows, hessian, rtol=1e-12, atol=1e-12)


def test_without_their_product_kept_rows_form_no_hessian_until_there_are_too_many():
    batches = _batches(9)
    few = GramSum(keep_up_to=sum(BATCH_ROWS), gram_of_kept=False)
    for x in batches:
        few.add(x)
    assert few.finish() is None
    assert torch.equal(few.kept_rows(), torch.cat(batches).double())
    many = GramSum(keep_up_to=3000, gram_of_kept=False)  # crossed at the fourth batch: the product is due
    for x in batches:
        many.add(x)
    expected = sum(x.double().t() @ x.double() for x in batches)
    torch.testing.assert_close(many.finish(), expected, rtol=1e-12, atol=1e-12)
    assert many.kept_rows() is None


def test_sums_sharing_one_staging_buffer_equal_sums_of_their_own():
    """Two sums of different widths interleaved over one Float64Rows, as a chunk of iter_hessians runs them: each
    equals the summed float64 products of its own batches, and the buffer is reused, not made per product."""
    narrow, wide, staging = _batches(7), _batches(130), Float64Rows()
    sums = {7: GramSum(staging=staging), 130: GramSum(staging=staging)}
    buffers = set()
    for x, y in zip(narrow, wide):
        sums[7].add(x)
        sums[130].add(y)
        buffers.add(None if staging.buffer is None else staging.buffer.data_ptr())
    for columns, batches in ((7, narrow), (130, wide)):
        expected = sum(x.double().t() @ x.double() for x in batches)
        torch.testing.assert_close(sums[columns].finish(), expected, rtol=1e-12, atol=1e-12)
    assert len(buffers - {None}) <= 2  # made once, and again only where more rows came than it held


def test_joined_rows_are_the_float64_rows_in_order():
    pieces = [torch.randn(rows, 5) for rows in (3, 1, 4)]
    staging = Float64Rows()
    assert torch.equal(staging.joined(pieces), torch.cat(pieces).double())
    held = staging.buffer.data_ptr()
    assert torch.equal(staging.joined(pieces[:2]), torch.cat(pieces[:2]).double()) and staging.buffer.data_ptr() == held


@pytest.mark.parametrize("columns", [5, 200])  # one block; four blocks of 64 columns and a last one
def test_the_symmetric_trace_is_the_trace_of_the_whole_product(columns):
    """trace(M S M^T) from S's upper blocks, read once (graph/numerics/symmetric_product.py); oracle: numpy's
    product of the three matrices."""
    from prunefx.graph.numerics.symmetric_product import symmetric_trace

    generator = torch.Generator().manual_seed(columns)
    matrix = torch.randn(7, columns, generator=generator, dtype=torch.float64)
    half = torch.randn(columns, columns, generator=generator, dtype=torch.float64)
    symmetric = half + half.t()
    expected = float(np.trace(matrix.numpy() @ symmetric.numpy() @ matrix.numpy().T))
    assert symmetric_trace(matrix, symmetric) == pytest.approx(expected, rel=1e-12)
