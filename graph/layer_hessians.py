"""The Hessians H = X^T X of layer inputs (graph/layer_inputs.py, InputSpec) on calibration data, in
float64, gathered a bounded number of bytes of H at a time in one staged pass over the data
(graph/staged_run.py); where a layer input has few calibration rows, the rows themselves (LayerRows),
from which its callers can work instead of H; and the compact form in which a cache holds H between
its readers (PackedHessian).
"""

from __future__ import annotations

import logging
import math
import tempfile
import zlib
from dataclasses import dataclass

import torch

from prunefx.graph.activations import within_budget
from prunefx.graph.layer_inputs import InputSpec
from prunefx.graph.numerics.symmetric_product import add_upper_gram, fill_upper_from_lower, mirror_upper
from prunefx.graph.staged_run import StagedRun

_HESSIAN_BUDGET = 1 << 28  # bytes of float64 Hessians held at once (256 MiB)
# Summing H costs rows x columns^2 multiply-adds: a segmentation head's 3x3 convolution over 2048 channels at
# 32x32 reads 18432 columns on 1024 rows an image, 5e13 multiply-adds for 256 images (most of an hour on two
# cores). Where a layer input's sum would cost more than GRAM_BUDGET, each batch gives at most its share of that
# cost's rows (most_rows: MIN_ROWS_PER_COLUMN a column at least; the elimination already works from fewer,
# KEEP_ROWS), drawn at random and scaled so that their product stands for the batch's: H is an unbiased estimate
# of the sum over every row, as its readers take it (the obs scores and the compensation do not depend on its
# scale, but a reader that damps by an absolute amount would).
GRAM_BUDGET = 10**12
MIN_ROWS_PER_COLUMN = 2

log = logging.getLogger(__name__)
KEEP_ROWS = 0.5  # X is kept beside H while it has at most this many rows per column (see LayerRows)
CACHE_IN_MEMORY = 1 << 24  # bytes of packed Hessians a cache holds in memory; the rest wait in temporary files


@dataclass(frozen=True)
class LayerRows:
    """How many calibration rows a layer input's H was summed over, and those rows X [count, columns]
    (float64) when there are at most KEEP_ROWS per column (ResNet-50's last 3x3 convs: 980 rows of 4608
    columns from 20 images): H then has low rank, and its damped inverse (Woodbury) and a layer's output
    energy ||X M^T||^2 cost a fraction of what they cost from H."""

    count: int
    kept: torch.Tensor | None = None
    drawn_from: int | None = None  # the rows there were, where `count` of them were drawn (GRAM_BUDGET)

    def gram(self) -> torch.Tensor:
        """H = X^T X from the kept rows, for a caller that needs H itself."""
        assert self.kept is not None, "the rows were not kept"
        return self.kept.t() @ self.kept


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


def _packed(hessian: torch.Tensor, dtype: torch.dtype, cache: dict) -> PackedHessian:
    """H packed for `cache`, in a temporary file once the cache holds CACHE_IN_MEMORY bytes in memory."""
    held = sum(entry[0].bytes_in_memory for entry in cache.values()
               if isinstance(entry, tuple) and isinstance(entry[0], PackedHessian))
    return PackedHessian(hessian, dtype, spill=held >= CACHE_IN_MEMORY)


def iter_hessians(module: torch.fx.GraphModule, specs: list[InputSpec], batches, *, cache: dict | None = None,
                  from_rows: bool = False, consume: bool = False, as_cached: bool = False):
    """(spec, H, LayerRows) for every spec over all batches, in float64, in the graph order of the layers:
    the specs are taken in chunks of at most _HESSIAN_BUDGET bytes of H, and one staged pass over the data
    (graph/staged_run.py) runs the graph a chunk's layers further at a time, so a chunk's Hessians are
    yielded before the next is gathered and a caller that drops them holds one chunk at a time.
    `from_rows`: the caller works from the rows where they are kept, and H is None there (not formed).

    `cache` (a dict spec -> (PackedHessian, LayerRows, the device they were gathered on), for the same module,
    weights and batches) shares Hessians between callers (the `obs` importance and the compensation that
    follows it): those found in it are not gathered again (and are yielded first), and those gathered are
    stored in it, packed, on the host.
    Callers must not modify H or the rows. `consume`: the caller is the cache's last reader, and each entry
    is dropped from it as it is yielded (and none is stored). `as_cached`: H gathered afresh is rounded as
    the cache holds it, so that the caller's results do not depend on whether a cache was filled."""
    if cache is not None:
        found = [spec for spec in specs if spec in cache]
        specs = [spec for spec in specs if spec not in cache]
        for spec in found:
            yield (spec, *_cached(cache.pop(spec) if consume else cache[spec], from_rows))
        if consume:
            cache = None
    if not specs:
        return
    columns = {spec: _columns(module, spec) for spec in specs}
    staged = StagedRun(module, batches)
    reading: dict[str, list[InputSpec]] = {}  # source -> its specs: a source is run once, in one chunk
    for spec in sorted(specs, key=lambda spec: staged.position(spec.source)):
        reading.setdefault(spec.source, []).append(spec)
    cost = {source: sum(8 * columns[spec] ** 2 for spec in found) for source, found in reading.items()}
    for sources in within_budget(list(reading), cost.__getitem__, _HESSIAN_BUDGET):
        chunk = [spec for source in sources for spec in reading[source]]
        staging = Float64Rows()  # one buffer for the chunk's sums, which multiply one after another
        sums = {spec: GramSum(int(KEEP_ROWS * columns[spec]), gram_of_kept=not from_rows,
                              most_rows=most_rows(columns[spec]), batches=len(batches),
                              seed=zlib.crc32(spec.source.encode()), staging=staging) for spec in chunk}
        for values in staged.advance(sources):
            for spec in chunk:
                sums[spec].add(spec.rows(values[spec.source]))
        values = None  # the last batch's activations, no longer needed
        for spec in chunk:  # every product made before a caller holds the first H (no name here keeps a sum)
            sums[spec].flush()
        staging.release()
        for spec in chunk:
            # this frame keeps no reference to H while the caller holds it: a ViT-L MLP's H is 134 MB
            yield spec, *_finished(sums.pop(spec), spec, cache, as_cached)


def _finished(total: GramSum, spec: InputSpec, cache: dict | None, as_cached: bool) -> tuple:
    """(H, LayerRows) of a finished sum, stored in `cache` when there is one (see iter_hessians)."""
    hessian, rows = total.finish(), LayerRows(total.rows, total.kept_rows(), total.drawn_from())
    if rows.drawn_from is not None:
        log.info("the Hessian of %s's input: %d of its %d rows drawn at random (%d columns)", spec.source,
                 rows.count, rows.drawn_from, total.columns)
    if cache is not None:  # the rows wait on the host as the packed H does (PackedHessian)
        device = next((tensor.device for tensor in (hessian, rows.kept) if tensor is not None), torch.device("cpu"))
        host_rows = rows if device.type == "cpu" or rows.kept is None else LayerRows(rows.count, rows.kept.cpu(),
                                                                                      rows.drawn_from)
        cache[spec] = (None if hessian is None else _packed(hessian, total.stored_dtype(), cache), host_rows, device)
    if as_cached and hessian is not None:
        hessian = hessian.to(total.stored_dtype()).double()
    return hessian, rows


def _cached(entry: tuple, from_rows: bool) -> tuple:
    """(H, LayerRows) from a cache entry: H unpacked, or formed from the rows for a caller that needs it."""
    packed, rows, device = entry
    if rows.kept is not None and rows.kept.device != device:
        rows = LayerRows(rows.count, rows.kept.to(device), rows.drawn_from)
    if packed is not None:
        return packed.unpack(), rows
    return (None if from_rows else rows.gram()), rows


def release(cache: dict | None, keep) -> None:
    """Drop every Hessian of `cache` whose spec is not in `keep` (its last reader needs only those)."""
    if cache is not None:
        for spec in [key for key in cache if isinstance(key, InputSpec) and key not in keep]:
            del cache[spec]


_PRODUCT_ROWS = 2048   # rows gathered before one product: a deep layer gives few rows per batch (49 per image)
_PRODUCT_BYTES = 1 << 24  # ... or this many bytes of them, so that wide layers do not hold many batches


class Float64Rows:
    """Batches of rows joined into one float64 matrix in a buffer kept between calls, grown as needed: a new
    matrix of each product's rows (32 MB for a ViT-L MLP's 4096 columns) is fresh memory whose pages the
    system maps on first write, which took as long as the conversion itself."""

    def __init__(self):
        self.buffer: torch.Tensor | None = None

    def joined(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """The rows of `pieces` ([rows, columns] each) one after another, float64; valid until the next call."""
        count, columns, device = sum(piece.shape[0] for piece in pieces), pieces[0].shape[1], pieces[0].device
        if self.buffer is None or self.buffer.numel() < count * columns or self.buffer.device != device:
            self.buffer = None  # the old one freed before the new one is made
            self.buffer = torch.empty(count * columns, dtype=torch.float64, device=device)
        rows = self.buffer[:count * columns].view(count, columns)
        start = 0
        for piece in pieces:
            rows[start:start + piece.shape[0]].copy_(piece)
            start += piece.shape[0]
        return rows

    def release(self) -> None:
        """Free the buffer (the next call makes one again)."""
        self.buffer = None


class GramSum:
    """The running X^T X (float64) of a layer input, batch by batch. Rows are gathered in a buffer until
    there are _PRODUCT_ROWS of them (or _PRODUCT_BYTES), then multiplied at once: a product over few rows
    (ResNet-50's last convolutions see 49 per image) runs far below matrix-product speed. Added in place:
    `H + x.t() @ x` would hold another copy of a matrix that reaches 1.2 GB for a wide layer (a U-Net
    decoder's first conv reads 12384 columns); only the upper block triangle is summed
    (graph/numerics/symmetric_product.py).

    The rows themselves (float64) are kept while there are at most `keep_up_to` of them; without
    `gram_of_kept`, their product is put off until there are more, and never formed if there are not
    (a caller that works from the rows).

    `most_rows` over `batches` batches: a batch with more rows than its share gives that many, drawn at random (a
    generator seeded with `seed`) and scaled by sqrt(its rows / drawn), so that H (and the kept rows' product)
    stands for every row (see GRAM_BUDGET). `staging`: where rows that are not kept are made float64 for their
    product, shared by sums that multiply one after another (Float64Rows)."""

    def __init__(self, keep_up_to: int = 0, *, gram_of_kept: bool = True, most_rows: int | None = None,
                 batches: int = 1, seed: int = 0, staging: Float64Rows | None = None):
        self.rows, self.seen, self.columns, self.gram, self.source_dtype = 0, 0, 0, None, torch.float32
        self.pending: list[torch.Tensor] = []
        self.keep_up_to, self.gram_of_kept = keep_up_to, gram_of_kept
        self.kept: list[torch.Tensor] | None = [] if keep_up_to > 0 else None
        self.share = None if most_rows is None else math.ceil(most_rows / max(batches, 1))  # rows a batch gives
        self.generator = torch.Generator().manual_seed(seed)
        self.staging = staging if staging is not None else Float64Rows()

    def add(self, x: torch.Tensor) -> None:
        """Add one batch's rows X [rows, columns]."""
        self.seen, self.columns = self.seen + x.shape[0], x.shape[1]
        x = self._drawn(x)
        self.rows += x.shape[0]
        self.source_dtype = x.dtype
        if self.rows > self.keep_up_to and self.kept is not None:
            kept, self.kept = self.kept, None
            if not self.gram_of_kept:  # too many rows to keep after all: their product is due
                for rows in kept:
                    self.gram = add_upper_gram(self.gram, rows)
        self.pending.append(x.detach())
        if (sum(rows.shape[0] for rows in self.pending) >= _PRODUCT_ROWS
                or sum(rows.numel() * rows.element_size() for rows in self.pending) >= _PRODUCT_BYTES):
            self.flush()

    def finish(self) -> torch.Tensor | None:
        """H; None when no row was added, or the rows were kept without their product."""
        self.flush()
        return None if self.gram is None else mirror_upper(self.gram)

    def drawn_from(self) -> int | None:
        """How many rows there were, where fewer were drawn; None where every row was summed."""
        return self.seen if self.rows < self.seen else None

    def _drawn(self, x: torch.Tensor) -> torch.Tensor:
        if self.share is None or x.shape[0] <= self.share:
            return x
        drawn = torch.randperm(x.shape[0], generator=self.generator)[:self.share].sort().values
        return x[drawn.to(x.device)] * math.sqrt(x.shape[0] / self.share)

    def stored_dtype(self) -> torch.dtype:
        """The precision a cache holds H in: float64 for float64 activations, float32 otherwise."""
        return torch.float64 if self.source_dtype == torch.float64 else torch.float32

    def kept_rows(self) -> torch.Tensor | None:
        """All rows added, float64 [rows, columns], when they were kept (after finish; drawn ones scaled)."""
        return torch.cat(self.kept) if self.kept else None

    def flush(self) -> None:
        """Multiply the rows gathered so far (add does once there are enough of them, finish at the end)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        if self.kept is None:
            x = self.staging.joined(pending)
        else:
            x = torch.cat(pending).double()
            self.kept.append(x)
            if not self.gram_of_kept:
                return
        self.gram = add_upper_gram(self.gram, x)


def most_rows(columns: int) -> int:
    """The rows a layer input's H is summed over at most: GRAM_BUDGET's worth, MIN_ROWS_PER_COLUMN at least."""
    return max(MIN_ROWS_PER_COLUMN * columns, GRAM_BUDGET // columns**2)


def gather_hessians(module: torch.fx.GraphModule, specs: list[InputSpec], batches) -> dict[InputSpec, tuple]:
    """(H, LayerRows) of every spec over all batches (see iter_hessians), all held at once."""
    return {spec: (hessian, rows) for spec, hessian, rows in iter_hessians(module, specs, batches)}


def _columns(module: torch.fx.GraphModule, spec: InputSpec) -> int:
    node = next(n for n in module.graph.nodes if n.name == spec.source)
    channels = int(node.meta["val"].shape[1 if spec.kernel else -1])
    return channels * (spec.kernel[0] * spec.kernel[1] if spec.kernel else 1)
