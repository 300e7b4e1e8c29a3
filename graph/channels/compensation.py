"""Second-order compensation of removed input channels (the OBS / least-squares update, as in CAP and
SparseGPT, applied to whole input channels).

Before removed columns are sliced away, each layer reading them gets M_K' = M_K + M_R H_RK (H_KK + lam I)^-1
(H = X^T X of its input on the calibration data, in the dense network): the ridge solution that changes its
output least, solved in float64 (by Woodbury where rows are few). Grouped and depthwise convolutions, other
convolutions, shared weights and layers that lose every input are skipped with the reason. The derivation,
the consumers, the cost and the non-goals: see docs/algorithms.md, 'Compensation'.
"""

from __future__ import annotations

import numpy as np
import torch

from prunefx.graph.attributes import get_tensor
from prunefx.graph.channels.analysis import ChannelAnalysis
from prunefx.graph.host_to_device import on_device_at_once
from prunefx.graph.layer_hessians import LayerRows, iter_hessians, release
from prunefx.graph.layer_inputs import Consumer, InputSpec, find_consumers
from prunefx.graph.numerics.cholesky_inverse import symmetric_inverse_
from prunefx.graph.numerics.low_rank_inverse import low_rank_damped_inverse
from prunefx.graph.numerics.semidefinite_solve import semidefinite_solve
from prunefx.graph.numerics.symmetric_product import symmetric_trace
from prunefx.graph.progress import progress_bar

# --- the update ------------------------------------------------------------------------------------------

def second_order_update(matrix: torch.Tensor, hessian: torch.Tensor | None, removed: np.ndarray,
                        damping: float, *, energy: float | None = None,
                        rows: LayerRows | None = None) -> tuple[torch.Tensor, dict]:
    """M_K' = M_K + M_R H_RK (H_KK + lam I)^-1 with lam = damping * mean(diag H), in float64.

    Returns the new matrix (removed columns unchanged: slicing drops them) and the layer-output error
    on the calibration data, relative to the output energy trace(M H M^T), without and with the update:
    the error of a change D of the columns is trace(D H D^T). `energy`: trace(M H M^T) when the caller
    has it (see energy_key). Without H (not formed: iter_hessians' from_rows), from the kept
    calibration `rows`."""
    # the kept and removed columns' indices from the host's mask, in one copy: no read of a device mask
    kept, gone = on_device_at_once([np.flatnonzero(~removed), np.flatnonzero(removed)], matrix.device)
    energy = output_energy(matrix, hessian, rows) if energy is None else energy
    lam = damping_term(hessian, damping, rows)
    if lam is None:  # the input is zero on all calibration data: nothing to compensate, nothing lost
        return matrix, {"error_without": 0.0, "error_with": 0.0}
    if hessian is None:
        found = _update_from_rows(matrix, rows.kept.to(matrix.device), kept, gone, lam)
        if found is not None:
            return found[0], {"error_without": found[1] / max(energy, 1e-300),
                              "error_with": found[2] / max(energy, 1e-300)}
        hessian = rows.gram()
    h_kk = hessian[kept[:, None], kept]
    h_kk.diagonal().add_(lam)
    m_r = matrix[:, gone]
    # H_KR M_R^T [kept, outputs] as the transpose of M_R H_RK: column-major, the order LAPACK's solve reads and
    # writes, so the solve copies nothing and its result and rhs share one order (_dot)
    rhs = (m_r @ hessian[gone[:, None], kept]).mT
    factor, info = torch.linalg.cholesky_ex(h_kk)
    # damping 0 on rank-deficient inputs: least squares picks a solution where Cholesky cannot
    solved = int(info) == 0
    delta = torch.cholesky_solve(rhs, factor) if solved else semidefinite_solve(h_kk, rhs)
    updated = matrix.clone()
    updated[:, kept] += delta.t()
    without = symmetric_trace(m_r, hessian[gone[:, None], gone])  # trace(M_R H_RR M_R^T)
    # an exact solve has (H_KK + lam I) delta = rhs: the product with the whole block is not needed
    with_update = float(_error_with(without, delta, rhs, rhs if solved else h_kk @ delta, lam))  # one read
    return updated, {"error_without": without / max(energy, 1e-300),
                     "error_with": with_update / max(energy, 1e-300)}


def _update_from_rows(matrix: torch.Tensor, x: torch.Tensor, kept: torch.Tensor, gone: torch.Tensor,
                      lam: float) -> tuple[torch.Tensor, float, float] | None:
    """second_order_update from the calibration rows X [k, n] (k far below n) by the Woodbury identity,
    (X_K^T X_K + lam I)^-1 = (I - X_K^T (lam I + X_K X_K^T)^-1 X_K) / lam: a k x k factorisation and
    products with X instead of n x n ones. The new matrix and the errors ||X_R M_R^T||^2 without and
    ||X_K D^T - X_R M_R^T||^2 with the update; None where lam I + X_K X_K^T does not factor."""
    if lam <= 0:  # damping 0: the identity above divides by it; the full Hessian's solve serves
        return None
    x_k, x_r = x[:, kept], x[:, gone]
    lost = x_r @ matrix[:, gone].t()                    # X_R M_R^T: the output the removed columns gave
    rhs = x_k.t() @ lost                                # H_KR M_R^T
    core = x_k @ x_k.t()
    core.diagonal().add_(lam)
    factor, info = torch.linalg.cholesky_ex(core)
    if int(info) != 0:
        return None
    delta = (rhs - x_k.t() @ torch.cholesky_solve(x_k @ rhs, factor)) / lam   # D^T: [kept, outputs]
    updated = matrix.clone()
    updated[:, kept] += delta.t()
    return updated, float(lost.square().sum()), float((x_k @ delta - lost).square().sum())


def output_energy(matrix: torch.Tensor, hessian: torch.Tensor | None, rows: LayerRows | None = None) -> float:
    """trace(M H M^T): the squared layer output (without bias) summed over the calibration data; as
    ||X M^T||^2 from the calibration rows where they were kept (fewer rows than columns: the cheaper
    product); else as the sum of H * M^T M over its upper block triangle, half the work of M H."""
    if rows is not None and rows.kept is not None:
        return float((rows.kept.to(matrix.device) @ matrix.t()).square().sum())
    assert hessian is not None, "neither H nor its rows"
    return symmetric_trace(matrix, hessian)


def energy_key(weight: str) -> tuple[str, str]:
    """The key under which the `obs` importance leaves a layer's output energy in the Hessian cache it
    shares with the compensation (same module, weights and batches): the compensation of that layer
    then skips one product with its whole H."""
    return ("output_energy", weight)


def damping_term(hessian: torch.Tensor | None, damping: float, rows: LayerRows | None = None) -> float | None:
    """lam = damping * mean(diag H), or None when H is zero (the input is zero on all calibration data);
    from the kept calibration `rows` when H was not formed (iter_hessians' from_rows)."""
    if hessian is None:
        assert rows is not None and rows.kept is not None, "neither H nor its rows"
        scale = float(rows.kept.square().sum()) / rows.kept.shape[1]
    else:
        scale = float(hessian.diagonal().mean())
    return damping * scale if scale > 0 else None


def damped_inverse(hessian: torch.Tensor, damping: float) -> torch.Tensor | None:
    """(H + lam I)^-1 in float64 (None when H is zero). With damping 0 on a rank-deficient H, the
    smallest jitter (1e-10, 1e-8, ... of mean(diag H)) that makes it positive definite is added."""
    lam = damping_term(hessian, damping)
    if lam is None:
        return None
    scale = float(hessian.diagonal().mean())
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4):
        damped = hessian + (lam + jitter * scale) * eye
        if symmetric_inverse_(damped):
            return damped
    return torch.linalg.pinv(hessian + lam * eye, hermitian=True)


def lean_damped_inverse(hessian: torch.Tensor | None, damping: float,
                        rows: LayerRows | None = None, *, overwrite: bool = False) -> torch.Tensor | None:
    """damped_inverse's (H + lam I)^-1, bit for bit, in one working copy of H (the
    factor and the inverse overwrite it) instead of an identity, its multiple, their sum, the factor
    and the inverse: a U-Net decoder conv reading 12k columns has a 1.2 GB H in float64; with `overwrite`
    (the caller needs H no more), in H itself. Same jitters; its pinv fallback is left to it. Where the
    calibration `rows` H was summed over were kept (far fewer of them than columns), by the Woodbury
    identity instead (graph/numerics/low_rank_inverse.py): equal to rounding; H may then be None (not
    formed)."""
    lam = damping_term(hessian, damping, rows)
    if lam is None:
        return None
    if rows is not None and rows.kept is not None:
        low_rank = low_rank_damped_inverse(rows.kept, lam)
        if low_rank is not None:
            return low_rank
        if hessian is None:  # no damping: the identity does not hold
            hessian = rows.gram()
    scale = float(hessian.diagonal().mean())
    work = hessian if overwrite and hessian.is_contiguous() else torch.empty_like(hessian).copy_(hessian)
    diagonal = hessian.diagonal().clone()
    for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4):
        work.diagonal().copy_(diagonal).add_(lam + jitter * scale)
        if symmetric_inverse_(work):  # else `work` is left as it was, to try the next jitter
            return work
    work.diagonal().copy_(diagonal)  # H as it came
    return damped_inverse(work, damping)


def _error_with(without: float, delta: torch.Tensor, rhs: torch.Tensor, damped_delta: torch.Tensor,
                lam: float) -> torch.Tensor:
    """trace(C H C^T) of the change C = [D on K, -M_R on R] from the blocks the update already holds
    (delta = D^T, rhs = H_KR M_R^T, damped_delta = (H_KK + lam I) delta), not from a product with the whole
    H: trace(D H_KK D^T) - 2 trace(D H_KR M_R^T) + trace(M_R H_RR M_R^T). On the device (0-d), read once."""
    kept_part = _dot(delta, damped_delta) - lam * _dot(delta, delta)
    return (kept_part - 2.0 * _dot(delta, rhs) + without).clamp_min(0.0)


def _dot(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The sum of left * right (0-d, on their device), as one dot product: no temporary of their size (a ViT-L
    MLP's [2048, 1024]) where both are in one order, row- or column-major."""
    if left.mT.is_contiguous() and right.mT.is_contiguous():
        left, right = left.mT, right.mT
    return torch.vdot(left.reshape(-1), right.reshape(-1))


def compensate_removed_inputs(module: torch.fx.GraphModule, analysis: ChannelAnalysis, removed_classes: set[int],
                              batches, *, damping: float = 0.01, hessians: dict | None = None,
                              progress: bool | None = None) -> dict:
    """Update the weights of every consumer of `removed_classes` (before they are sliced away) and return
    statistics: the layers compensated with their relative output errors on the calibration data, and
    the layers skipped with their reasons. `hessians`: a cache shared with the `obs` importance (see
    iter_hessians), whose last reader this is: its Hessians are dropped from it, those of the layers that
    lose nothing at once, the others as they are used. `progress`: a bar over the layers (graph/progress.py)."""
    consumers, skipped = find_consumers(module, analysis, removed_classes)
    by_spec: dict[InputSpec, list[Consumer]] = {}
    for consumer in consumers:
        by_spec.setdefault(consumer.spec, []).append(consumer)
    updates, layers = {}, {}
    # Every H comes from the dense network: the updates are stored only once all are computed, or at once
    # where every H is in the cache already (no activation is read after an update).
    release(hessians, by_spec)
    at_once = hessians is not None and all(spec in hessians for spec in by_spec)
    with progress_bar("compensating", len(consumers), unit="layer", progress=progress) as bar:
        for spec, hessian, rows in iter_hessians(module, list(by_spec), batches, cache=hessians, from_rows=True,
                                                 consume=True, as_cached=True):
            for consumer in by_spec[spec]:
                matrix = consumer.matrix(module).to((rows.kept if hessian is None else hessian).device)
                energy = hessians.get(energy_key(consumer.weight)) if hessians is not None else None
                updated, errors = second_order_update(matrix, hessian, consumer.removed_columns, damping,
                                                      energy=energy, rows=rows)
                # in the weight's own dtype (what `store` writes), not float64: when held until every update is
                # computed, a model whose every layer is compensated is held once more, not twice
                updated = updated.to(get_tensor(module, consumer.weight).dtype)
                if at_once:
                    consumer.store(module, updated)
                else:
                    updates[consumer.node] = (consumer, updated)
                drawn = {} if rows.drawn_from is None else {"rows_drawn_from": rows.drawn_from}
                layers[consumer.node] = {"layer": consumer.node, "weight": consumer.weight, "rows": rows.count, **drawn,
                                         "columns": int(consumer.removed_columns.size),
                                         "columns_removed": int(consumer.removed_columns.sum()), **errors}
                bar.update()
    for consumer, matrix in updates.values():
        consumer.store(module, matrix)
    layers = [layers[c.node] for c in consumers]
    return {"damping": damping, "compensated": layers, "skipped": skipped,
            "images": sum(int(b[0].shape[0]) for b in batches)}
