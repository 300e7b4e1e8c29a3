"""The Hessians H = X^T X of layer inputs (graph/layer_inputs.py, InputSpec) on calibration data, in
float64, gathered in passes over the data that hold a bounded number of bytes of H; and, where a layer
input has few calibration rows, the rows themselves (LayerRows), from which its callers can work
instead of H.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunefx.graph.activations import run_tapped, tap_nodes, within_budget
from prunefx.graph.layer_inputs import InputSpec
from prunefx.graph.numerics.symmetric_product import add_upper_gram, mirror_upper

_HESSIAN_BUDGET = 1 << 29  # bytes of float64 Hessians held at once (512 MiB)
KEEP_ROWS = 0.5  # X is kept beside H while it has at most this many rows per column (see LayerRows)


@dataclass(frozen=True)
class LayerRows:
    """How many calibration rows a layer input's H was summed over, and those rows X [count, columns]
    (float64) when there are at most KEEP_ROWS per column (ResNet-50's last 3x3 convs: 980 rows of 4608
    columns from 20 images): H then has low rank, and its damped inverse (Woodbury) and a layer's output
    energy ||X M^T||^2 cost a fraction of what they cost from H."""

    count: int
    kept: torch.Tensor | None = None

    def gram(self) -> torch.Tensor:
        """H = X^T X from the kept rows, for a caller that needs H itself."""
        assert self.kept is not None, "the rows were not kept"
        return self.kept.t() @ self.kept


def iter_hessians(module: torch.fx.GraphModule, specs: list[InputSpec], batches, *, cache: dict | None = None,
                  from_rows: bool = False):
    """(spec, H, LayerRows) for every spec over all batches, in float64: the specs are taken in chunks of
    at most _HESSIAN_BUDGET bytes of H, one pass over the data per chunk, and a chunk's Hessians are
    yielded before the next is gathered, so a caller that drops them holds one chunk at a time.
    `from_rows`: the caller works from the rows where they are kept, and H is None there (not formed).

    `cache` (a dict spec -> (H, LayerRows), for the same module, weights and batches) shares Hessians
    between callers (the `obs` importance and the compensation that follows it): those found in it are
    not gathered again, and those gathered are stored in it (then all are held). Callers must not modify
    H or the rows."""
    if cache is not None:
        for spec in specs:
            if spec in cache:
                hessian, rows = cache[spec]
                if hessian is None and not from_rows:  # gathered for a caller that worked from the rows
                    hessian = rows.gram()
                yield spec, hessian, rows
        specs = [spec for spec in specs if spec not in cache]
    columns = {spec: _columns(module, spec) for spec in specs}
    # With a cache every H is held anyway: one pass over the data for all of them, not one per chunk.
    budget = _HESSIAN_BUDGET if cache is None else sum(8 * columns[spec] ** 2 for spec in specs)
    for chunk in within_budget(specs, lambda spec: 8 * columns[spec] ** 2, budget):
        sources = sorted({spec.source for spec in chunk})
        tapped, position = tap_nodes(module, sources), {name: index for index, name in enumerate(sources)}
        sums = {spec: GramSum(int(KEEP_ROWS * columns[spec]), gram_of_kept=not from_rows) for spec in chunk}
        for batch in batches:
            values = run_tapped(tapped, batch)
            for spec in chunk:
                sums[spec].add(spec.rows(values[position[spec.source]]))
        for spec in chunk:
            total = sums.pop(spec)
            hessian, rows = total.finish(), LayerRows(total.rows, total.kept_rows())
            if cache is not None:
                cache[spec] = (hessian, rows)
            yield spec, hessian, rows


_PRODUCT_ROWS = 2048   # rows gathered before one product: a deep layer gives few rows per batch (49 per image)
_PRODUCT_BYTES = 1 << 24  # ... or this many bytes of them, so that wide layers do not hold many batches


class GramSum:
    """The running X^T X (float64) of a layer input, batch by batch. Rows are gathered in a buffer until
    there are _PRODUCT_ROWS of them (or _PRODUCT_BYTES), then multiplied at once: a product over few rows
    (ResNet-50's last convolutions see 49 per image) runs far below matrix-product speed. Added in place:
    `H + x.t() @ x` would hold another copy of a matrix that reaches 1.2 GB for a wide layer (a U-Net
    decoder's first conv reads 12384 columns); only the upper block triangle is summed
    (graph/numerics/symmetric_product.py).

    The rows themselves (float64) are kept while there are at most `keep_up_to` of them; without
    `gram_of_kept`, their product is put off until there are more, and never formed if there are not
    (a caller that works from the rows)."""

    def __init__(self, keep_up_to: int = 0, *, gram_of_kept: bool = True):
        self.rows, self.gram = 0, None
        self.pending: list[torch.Tensor] = []
        self.keep_up_to, self.gram_of_kept = keep_up_to, gram_of_kept
        self.kept: list[torch.Tensor] | None = [] if keep_up_to > 0 else None

    def add(self, x: torch.Tensor) -> None:
        """Add one batch's rows X [rows, columns]."""
        self.rows += x.shape[0]
        if self.rows > self.keep_up_to and self.kept is not None:
            kept, self.kept = self.kept, None
            if not self.gram_of_kept:  # too many rows to keep after all: their product is due
                for rows in kept:
                    self.gram = add_upper_gram(self.gram, rows)
        self.pending.append(x.detach())
        if (sum(rows.shape[0] for rows in self.pending) >= _PRODUCT_ROWS
                or sum(rows.numel() * rows.element_size() for rows in self.pending) >= _PRODUCT_BYTES):
            self._multiply_pending()

    def finish(self) -> torch.Tensor | None:
        """H; None when no row was added, or the rows were kept without their product."""
        self._multiply_pending()
        return None if self.gram is None else mirror_upper(self.gram)

    def kept_rows(self) -> torch.Tensor | None:
        """All rows added, float64 [rows, columns], when they were kept (after finish)."""
        return torch.cat(self.kept) if self.kept else None

    def _multiply_pending(self) -> None:
        if not self.pending:
            return
        x = torch.cat(self.pending).double()
        self.pending = []
        if self.kept is not None:
            self.kept.append(x)
            if not self.gram_of_kept:
                return
        self.gram = add_upper_gram(self.gram, x)


def gather_hessians(module: torch.fx.GraphModule, specs: list[InputSpec], batches) -> dict[InputSpec, tuple]:
    """(H, LayerRows) of every spec over all batches (see iter_hessians), all held at once."""
    return {spec: (hessian, rows) for spec, hessian, rows in iter_hessians(module, specs, batches)}


def _columns(module: torch.fx.GraphModule, spec: InputSpec) -> int:
    node = next(n for n in module.graph.nodes if n.name == spec.source)
    channels = int(node.meta["val"].shape[1 if spec.kernel else -1])
    return channels * (spec.kernel[0] * spec.kernel[1] if spec.kernel else 1)
