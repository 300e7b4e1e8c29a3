"""The Hessians H = X^T X of layer inputs (graph/layer_inputs.py, InputSpec) on calibration data, in
float64, gathered a bounded number of bytes of H at a time in one staged pass over the data
(graph/staged_run.py), one running sum per layer input (graph/gram_sum.py); where a layer input has few
calibration rows, the rows themselves (LayerRows), from which its callers can work instead of H; a cache
shared between H's readers holds it packed (graph/packed_hessian.py).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import torch

from prunefx.graph.activations import within_budget
from prunefx.graph.gram_sum import Float64Rows, GramSum, most_rows
from prunefx.graph.layer_inputs import InputSpec
from prunefx.graph.packed_hessian import packed_for
from prunefx.graph.staged_run import StagedRun

_HESSIAN_BUDGET = 1 << 28  # bytes of float64 Hessians held at once (256 MiB)

log = logging.getLogger(__name__)
KEEP_ROWS = 0.5  # X is kept beside H while it has at most this many rows per column (see LayerRows)


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
        cache[spec] = (None if hessian is None else packed_for(hessian, total.stored_dtype(), cache), host_rows, device)
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


def gather_hessians(module: torch.fx.GraphModule, specs: list[InputSpec], batches) -> dict[InputSpec, tuple]:
    """(H, LayerRows) of every spec over all batches (see iter_hessians), all held at once."""
    return {spec: (hessian, rows) for spec, hessian, rows in iter_hessians(module, specs, batches)}


def _columns(module: torch.fx.GraphModule, spec: InputSpec) -> int:
    node = next(n for n in module.graph.nodes if n.name == spec.source)
    channels = int(node.meta["val"].shape[1 if spec.kernel else -1])
    return channels * (spec.kernel[0] * spec.kernel[1] if spec.kernel else 1)
