"""The running sum H = X^T X of a layer input's rows, in float64, batch by batch (GramSum): rows buffered and
multiplied a block at a time, kept while they are few, and drawn at random past a cost budget (GRAM_BUDGET).
graph/layer_hessians.py runs one sum per layer input over the calibration data."""

from __future__ import annotations

import math

import torch

from prunefx.graph.numerics.symmetric_product import add_upper_gram, mirror_upper

# Summing H costs rows x columns^2 multiply-adds: a segmentation head's 3x3 convolution over 2048 channels at
# 32x32 reads 18432 columns on 1024 rows an image, 5e13 multiply-adds for 256 images (most of an hour on two
# cores). Where a layer input's sum would cost more than GRAM_BUDGET, each batch gives at most its share of that
# cost's rows (most_rows: MIN_ROWS_PER_COLUMN a column at least; the elimination already works from fewer,
# KEEP_ROWS), drawn at random and scaled so that their product stands for the batch's: H is an unbiased estimate
# of the sum over every row, as its readers take it (the obs scores and the compensation do not depend on its
# scale, but a reader that damps by an absolute amount would).
GRAM_BUDGET = 10**12
MIN_ROWS_PER_COLUMN = 2

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
