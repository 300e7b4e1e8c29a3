"""Tensors put into a module by name, at every place the tensor they replace is reached (a weight shared by two
modules, or under two names, stays one tensor): a parameter stays a parameter with its requires_grad, a buffer a
buffer, a plain tensor attribute an attribute."""

from __future__ import annotations

import torch
from torch import nn


def put_tensors(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Each of `tensors` (a copy, on the device of the one it replaces) in place of the model's tensor of its name,
    wherever that one is reached."""
    places = _places(module)
    for target, tensor in tensors.items():
        owner_path, _, attribute = target.rpartition(".")
        owner = module.get_submodule(owner_path)
        old = getattr(owner, attribute)
        value = tensor.detach().to(old.device).clone()
        for place_owner, place_attribute in places.get(id(old), [(owner, attribute)]):
            _put(place_owner, place_attribute, old, value)


def _places(module: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """Every (owner, attribute) at which each tensor of `module` is reached, keyed by the tensor's id."""
    places: dict[int, list[tuple[nn.Module, str]]] = {}
    for owner in module.modules():
        for attribute, tensor in (*owner._parameters.items(), *owner._buffers.items()):
            if tensor is not None:
                places.setdefault(id(tensor), []).append((owner, attribute))
    return places


def _put(owner: nn.Module, attribute: str, old: torch.Tensor, value: torch.Tensor) -> None:
    if attribute in owner._parameters:
        owner._parameters[attribute] = nn.Parameter(value, requires_grad=old.requires_grad)
    elif attribute in owner._buffers:
        owner._buffers[attribute] = value
    else:
        setattr(owner, attribute, value)
