"""The compact form in which a cache holds a layer input's Hessian between its readers (PackedHessian): the
upper triangle in the activations' precision, on the host, in a temporary file once the cache holds enough."""

from __future__ import annotations

import tempfile

import torch

from prunefx.graph.numerics.symmetric_product import fill_upper_from_lower

CACHE_IN_MEMORY = 1 << 24  # bytes of packed Hessians a cache holds in memory; the rest wait in temporary files


class PackedHessian:
    """H's upper triangle, row after row, in the precision of the activations it was summed from (float32
    for a float32 model): a quarter of H in float64, what a cache holds between its readers (the `obs`
    importance reads H as gathered, the compensation later reads it from here). Rounding the float64 sum
    once to float32 moves H as little as the float32 rounding of the activations themselves did; summing
    in float32 is what would not do (graph/channels/saliency.py).

    The triangle waits in host memory whatever device H was gathered on (a GPU's memory is for the work: a
    ResNet-50's cache would hold hundreds of MB there until the compensation reads it), and `unpack` gives H
    back on that device; the packing runs on the host too, row by row, where a row's copy costs no kernel
    launch. `spill`: the triangle waits in an anonymous temporary file (deleted with this object) instead of
    memory, read back by `unpack`: a ViT-L's cache holds 0.95 GB until the compensation reads it, at the
    moment the `obs` elimination needs most memory."""

    def __init__(self, hessian: torch.Tensor, dtype: torch.dtype, *, spill: bool = False):
        size = hessian.shape[0]
        self.size, self.dtype, self.device = size, dtype, hessian.device
        hessian = hessian.cpu()
        data = torch.empty(size * (size + 1) // 2, dtype=dtype)
        for row, start in enumerate(self._starts()):
            data[start:start + size - row] = hessian[row, row:]
        self.data: torch.Tensor | None = data
        self.file = None
        if spill:
            try:
                self.file = tempfile.TemporaryFile(prefix="prunefx-hessian-")
                self.file.write(data.numpy().data)
                self.data = None
            except OSError:  # no room in the temporary folder: memory it is
                self.file = None

    @property
    def bytes_in_memory(self) -> int:
        return 0 if self.data is None else self.data.numel() * self.data.element_size()

    def _starts(self) -> list[int]:
        """Where each row's part (from the diagonal on) starts in `data`."""
        size, start, starts = self.size, 0, []
        for row in range(size):
            starts.append(start)
            start += size - row
        return starts

    def _packed(self) -> torch.Tensor:
        if self.data is not None:
            return self.data
        self.file.seek(0)
        return torch.frombuffer(bytearray(self.file.read()), dtype=self.dtype)

    def unpack(self) -> torch.Tensor:
        """H in float64, symmetric, on the device it was gathered on."""
        size, data = self.size, self._packed()
        hessian = torch.empty((size, size), dtype=torch.float64)
        for row, start in enumerate(self._starts()):  # rows, not columns too: a column's write is strided
            hessian[row, row:] = data[start:start + size - row]
        return fill_upper_from_lower(hessian.mT).mT.to(self.device)


def packed_for(hessian: torch.Tensor, dtype: torch.dtype, cache: dict) -> PackedHessian:
    """H packed for `cache`, in a temporary file once the cache holds CACHE_IN_MEMORY bytes in memory."""
    held = sum(entry[0].bytes_in_memory for entry in cache.values()
               if isinstance(entry, tuple) and isinstance(entry[0], PackedHessian))
    return PackedHessian(hessian, dtype, spill=held >= CACHE_IN_MEMORY)
