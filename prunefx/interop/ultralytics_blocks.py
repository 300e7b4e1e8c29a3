"""Ultralytics' blocks at pruned widths, for the write-back (prunefx/interop/write_back.py): the resizers of
YOLO's split blocks and Detect head, and the classes of pruned split blocks.

C2f (and C3k2, its subclass) split `cv1`'s output into two halves with `chunk(2)`, C2PSA with
`split((c, c))`: the channel removal prunes each half by its own importance (the graph splits into segments,
graph/channels/rules_reshape.py), so the halves end up of different widths, which neither eager forward can
express. Their pruned modules become `PrunedC2f`, `PrunedC3k2`, `PrunedC2PSA`: subclasses whose only change
is a forward splitting at the pruned widths (`split_sizes`); the classes are made on first use and found by
name (this module's `__getattr__`, and prunefx/interop/ultralytics_bridge.py's for checkpoints that name that
module), so a pickled pruned model (Ultralytics' own checkpoints: best.pt, last.pt) loads again where prunefx
is installed. Ultralytics is imported only when a resizer is registered or a class is asked for.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunefx.interop.module_resizers import ResizeError, register_module_resizer, resize_attributes

_SPLIT_BLOCKS = ("C2f", "C3k2", "C2PSA")
_PREFIX = "Pruned"
_CLASSES: dict[str, type] = {}


def _c2f_forward(self, x: torch.Tensor) -> torch.Tensor:
    y = list(self.cv1(x).split(self.split_sizes, 1))
    y.extend(m(y[-1]) for m in self.m)
    return self.cv2(torch.cat(y, 1))


def _c2psa_forward(self, x: torch.Tensor) -> torch.Tensor:
    a, b = self.cv1(x).split(self.split_sizes, dim=1)
    return self.cv2(torch.cat((a, self.m(b)), 1))


def pruned_class(base: type) -> type:
    """The subclass of an Ultralytics split block whose forward splits at `split_sizes`."""
    name = _PREFIX + base.__name__
    if name not in _CLASSES:
        forward = _c2psa_forward if base.__name__ == "C2PSA" else _c2f_forward
        # Ultralytics' ONNX export switches C2f to `forward_split`: both split at the pruned widths.
        _CLASSES[name] = type(name, (base,), {"forward": forward, "forward_split": forward, "__module__": __name__,
                                              "__qualname__": name,
                                              "__doc__": f"{base.__name__} with halves of pruned widths."})
    return _CLASSES[name]


def __getattr__(name: str):
    # pickle finds classes by module and name: make a pruned block class when a checkpoint asks for it
    # (the split blocks and their subclasses, such as YOLOv10's C2fCIB).
    if name.startswith(_PREFIX):
        from ultralytics.nn.modules import block
        base = getattr(block, name[len(_PREFIX):], None)
        if isinstance(base, type) and any(cls.__name__ in _SPLIT_BLOCKS for cls in base.__mro__):
            return pruned_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _first_conv_width(module: nn.Module) -> int:
    """Input channels of the first convolution inside `module` (what the second half feeds)."""
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ResizeError(f"{type(module).__name__} holds no convolution")
    if conv.groups > 1 and conv.groups == conv.in_channels:  # depthwise (CIB): its groups are not reset yet
        return int(conv.weight.shape[0] // (conv.out_channels // conv.groups))
    return int(conv.weight.shape[1] * conv.groups)


def _split_block(module: nn.Module, changes) -> None:
    """Halves of `cv1`'s output: the second feeds `m[0]`, the first is the rest."""
    total = int(module.cv1.conv.weight.shape[0])
    second = _first_conv_width(module.m[0] if isinstance(module.m, nn.ModuleList) else module.m)
    if not 0 < second < total:
        raise ResizeError(f"cannot split {total} channels of {type(module).__name__}.cv1 around {second}")
    module.split_sizes = (total - second, second)
    module.c = second
    if not type(module).__name__.startswith(_PREFIX):
        module.__class__ = pruned_class(type(module))


def _detect_head(module: nn.Module, changes) -> None:
    """A Detect head's own sizes; and where it trains a one-to-one branch (YOLOv10, YOLO26) that the captured
    forward did not run, that branch made again as a copy of the pruned one-to-many branch (as Ultralytics
    builds it), so that it takes the pruned features; training then teaches it again."""
    resize_attributes(module, changes)
    for name in [name for name in module._modules if name.startswith("one2one_")]:  # cv2, cv3, and a task's cv4
        many, one = getattr(module, name[len("one2one_"):], None), getattr(module, name)
        if many is None or one is None:
            continue
        if [p.shape for p in many.parameters()] != [p.shape for p in one.parameters()]:
            setattr(module, name, copy.deepcopy(many))


def register_resizers() -> None:
    """Register the resizers of YOLO's blocks with the write-back (imports ultralytics)."""
    from ultralytics.nn.modules import block, head
    for name in _SPLIT_BLOCKS:
        if hasattr(block, name):
            register_module_resizer(getattr(block, name), _split_block)
    register_module_resizer(head.Detect, _detect_head)
