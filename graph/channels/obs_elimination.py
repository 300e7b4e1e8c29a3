"""The greedy, correlation-aware OBS elimination behind the `obs` importance (graph/channels/saliency.py has
the formulas, the normalisation and the costs): the loop over a group's channels, each step scoring every channel
alive on the layers that read the group (obs_layer_state.py), removing the cheapest, and updating the layers.
"""

from __future__ import annotations

import numpy as np
import torch

from prunefx.graph.channels.obs_layer_state import ErrorTerm, LayerState


def read_terms(terms: list[ErrorTerm], size: int, carried=()) -> tuple[np.ndarray, list[float]]:
    """The errors of a step summed per channel over its terms, in their order (a float sum depends on it), and the
    `carried` values (device scalars or floats: the step before's increase) as floats; every device value read to
    the host in one copy: on a GPU each read waits for the device's queue."""
    on_device = [term for term in terms if term.energy is not None]
    parts = [value for term in on_device for value in (term.values, term.usable.reshape(1).double())]
    parts += [value.reshape(1).double() for value in carried if isinstance(value, torch.Tensor)]
    read = torch.cat(parts).cpu().numpy() if parts else np.zeros(0)
    errors, at = np.zeros(size), 0
    for term in terms:
        if term.energy is None:
            errors[term.channels] += term.values
            continue
        count = term.channels.size
        values, usable = read[at:at + count], bool(read[at + count])
        at += count + 1
        if not usable:
            values = term.exact().cpu().numpy()
        errors[term.channels] += np.maximum(values, 0.0) / term.energy
    values = []
    for value in carried:
        if isinstance(value, torch.Tensor):
            value, at = float(read[at]), at + 1
        values.append(float(value))
    return errors, values


STEP_SHARE = 32  # each step removes alive // STEP_SHARE channels at once (at least one)


def eliminate(size: int, layers: list[LayerState], *, steps: str = "exact",
              removable: int | None = None) -> np.ndarray | None:
    """Greedy elimination: remove the channels whose removal (with compensation) adds the least relative
    error over all `layers`, update the layers, repeat; a channel's score is the total error once it is
    gone, so scores rise in elimination order. The last of a step's batch scores the exact joint error,
    the others share the step's increase in proportion to their single-channel errors.

    Batches (`steps`): exact, one channel at a time while fewer than 64 are left, before that the
    alive // 32 cheapest at once (a 512-wide group in ~150 steps instead of 512); fast, the same schedule
    until `removable` channels are gone (no plan removes more of the group: its width floor), then the rest
    in one last joint step, whose order only ranks channels no plan removes: the same choice in fewer steps.
    Coarser batches would change the choice, and cost one-shot accuracy.

    None where a removal's block of an inverse Hessian did not factor (singular: its updates are not ones), read
    once at the end (LayerState.remove): the caller scores the group otherwise."""
    scores = np.zeros(size)
    alive = np.ones(size, dtype=bool)
    total, removed = 0.0, 0
    scored = None  # the step before: (its channels, its increase, unread, their single errors)
    while alive.any():
        errors, increases = read_terms([term for layer in layers for term in layer.error_terms(alive)], size,
                                       () if scored is None else (scored[1],))  # one read a step
        if scored is not None:
            total = _score(scores, total, scored[0], increases[0], scored[2])
        errors[~alive] = np.inf
        count = _batch(int(alive.sum()), removed, steps, removable)
        chosen = np.argsort(errors, kind="stable")[:count]
        # the fast path's last step reads nothing afterwards: its joint error, without the updates
        final = steps == "fast" and count == int(alive.sum())
        alive[chosen] = False  # before the removal: the layers downdate what is left
        increase = sum(layer.joint_error(chosen.tolist()) if final else layer.remove(chosen.tolist(), alive)
                       for layer in layers)
        scored = (chosen, increase, errors[chosen])
        removed += count
    if scored is not None:
        _score(scores, total, scored[0], float(scored[1]), scored[2])
    return scores if all_factored(layers) else None


def all_factored(layers: list[LayerState]) -> bool:
    """Whether every removal's block factored in every layer, in one read."""
    flags = [layer.factored for layer in layers if layer.factored is not None]
    return not flags or bool(torch.stack(flags).all())


def _score(scores: np.ndarray, total: float, chosen: np.ndarray, increase: float, single: np.ndarray) -> float:
    """Score a step's channels: the last the total after the step, the others a share of its increase in
    proportion to their single errors. Returns the new total."""
    shares = np.cumsum(single) / single.sum() if single.sum() > 0 else np.arange(1, chosen.size + 1) / chosen.size
    scores[chosen] = total + increase * shares
    return total + increase


def _batch(alive: int, removed: int, steps: str, removable: int | None) -> int:
    """How many channels the next elimination step removes (see eliminate)."""
    batch = max(alive // STEP_SHARE, 1)
    if steps == "exact" or removable is None:
        return batch
    # fast: the exact schedule up to the width floor, then everything left in one step
    return alive if removed >= removable else min(batch, removable - removed)
