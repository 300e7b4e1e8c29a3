"""A channel cut that tells which elements survived, and the optimizer state carried across it.

Channel removal gives every sliced tensor a new Parameter; rebuilding the optimizer on them would restart
momentum, which costs accuracy when cuts come every few dozen steps. So prunefx's Trainer and a user's own
loop (prunefx/interop/recovery.py) slice every state tensor shaped like its parameter to the elements that
survived. Which survived is read off the cut itself: it runs on tensors holding their own flat indices
(exact in floating point, scaled by 2^-64); a tensor too large for exact indices in its dtype (over 2^24
elements in float32) is cut as it is, and its optimizer state restarts. See docs/algorithms.md,
'Recovery in your own loop'.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prunefx.graph import Program
from prunefx.graph.attributes import set_tensor
from prunefx.graph.held_signals import signals_held

# Probes hold index * 2^-64: exact (a power of two only moves the exponent, and 2^-64 is far above float32's
# smallest normal number, 2^-126), and small enough that the network stays finite on them (activations
# shrink towards 0 instead of overflowing), which the cut's verification checks.
_PROBE_SCALE = 2.0 ** -64


def _indexable(tensor: torch.Tensor) -> bool:
    """Whether every flat index of `tensor` is exact as a probe: float32 or float64, and integers up to
    2 / eps (2^24 in float32) are exact."""
    return tensor.dtype in (torch.float32, torch.float64) and tensor.numel() <= 2 / torch.finfo(tensor.dtype).eps


def cut_tracking_indices(program: Program, cut: Callable[[Program], object]) -> tuple[Program, dict[str, torch.Tensor]]:
    """Run `cut` on a copy of `program` and return the cut copy with, per tensor name, the flat indices of the
    original's elements that survived. `program` is left as it was whatever `cut` raises."""
    pruned = program.clone()
    originals = {name: tensor for name, tensor in named_tensors(program.module) if _indexable(tensor)}
    for name, tensor in originals.items():
        probe = torch.arange(tensor.numel(), dtype=tensor.dtype, device=tensor.device).reshape(tensor.shape)
        set_tensor(pruned.module, name, probe * _PROBE_SCALE)
    cut(pruned)
    kept = {}
    present = dict(named_tensors(pruned.module))
    for name, original in originals.items():
        if name not in present:  # no longer read by the graph
            continue
        index = (present[name].detach() / _PROBE_SCALE).round().long()
        kept[name] = index.flatten()
        set_tensor(pruned.module, name, original.detach().flatten()[kept[name]].reshape(index.shape))
    return pruned, kept


def named_tensors(module: torch.nn.Module):
    yield from module.named_parameters()
    yield from module.named_buffers()


def carry_optimizer(optimizer: torch.optim.Optimizer, before: dict[str, torch.nn.Parameter],
                    after: dict[str, torch.nn.Parameter], kept: dict[str, torch.Tensor]) -> None:
    """Swap `before`'s parameters for `after`'s (same names) in `optimizer`'s groups, slicing their state
    by `kept` (flat indices of the old elements that survived); parameters gone leave the optimizer, a
    state that cannot be sliced (no indices and a new shape) restarts. Everything is worked out first: an
    error or an interrupt on the way leaves the optimizer as it was, never half carried."""
    names = {id(parameter): name for name, parameter in before.items()}
    groups: list[list] = []
    states: dict[torch.Tensor, dict] = {}
    replaced: list[torch.Tensor] = []
    for group in optimizer.param_groups:
        carried = []
        for parameter in group["params"]:
            name = names.get(id(parameter))
            if name is None:  # not the model's (an extra parameter of the caller's): left alone
                carried.append(parameter)
                continue
            replaced.append(parameter)
            new = after.get(name)
            if new is None:
                continue
            carried.append(new)
            sliced = _sliced_state(optimizer.state.get(parameter) or {}, parameter, new, kept.get(name))
            if sliced:
                states[new] = sliced
        groups.append(carried)
    with signals_held():
        for group, carried in zip(optimizer.param_groups, groups):
            group["params"] = carried
        for parameter in replaced:
            optimizer.state.pop(parameter, None)
        optimizer.state.update(states)


def carry_state(old: torch.optim.Optimizer, new: torch.optim.Optimizer, before: dict[str, torch.nn.Parameter],
                after: dict[str, torch.nn.Parameter], kept: dict[str, torch.Tensor]) -> None:
    """Give `new` (an optimizer built on `after`'s parameters) the state `old` held for `before`'s
    parameters of the same names, sliced by `kept` as in carry_optimizer."""
    held = {id(parameter) for group in new.param_groups for parameter in group["params"]}
    for name, parameter in after.items():
        previous = before.get(name)
        if previous is None or id(parameter) not in held:
            continue
        state = old.state.get(previous)
        if state:
            sliced = _sliced_state(state, previous, parameter, kept.get(name))
            if sliced:
                new.state[parameter] = sliced


def _sliced_state(state: dict, old: torch.Tensor, new: torch.Tensor, index: torch.Tensor | None) -> dict:
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.shape != old.shape or old.shape == new.shape:
            out[key] = value  # scalars (Adam's step) and states of untouched parameters
        elif index is not None:
            out[key] = value.flatten()[index.to(value.device)].reshape(new.shape).clone()
        else:
            return {}
    return out
