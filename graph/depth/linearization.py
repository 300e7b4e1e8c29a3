"""Graph rewrites that take non-linearities out of blocks (UPDP's pruned form).

- `blend_activation`: `act(x)` becomes `lerp(act(x), x, l) = (1 - l) * act(x) + l * x`, with `l` a
  0-dim buffer that a training schedule raises from 0 to 1. At `l = 0` the network is unchanged; at
  `l = 1` torch's lerp returns `x` exactly (it computes `end - (end - start) * (1 - l)` for `l >= 0.5`).
- `remove_activation`: `act(x)` becomes `x` at once (the abrupt form, and one-shot depth pruning).
- `strip_finished_blends`: every blend whose `l` is exactly 1 becomes `x`, dropping the activation and
  the buffer, so the block is affine and the merge pass can fold it. Blends below 1 stay.

In-place activations (`relu_`, `hardtanh_`) become their out-of-place forms before blending: a blend
reads `x` after `act` ran, which an in-place activation would have overwritten.
The blend buffers are listed in `program.analysis.linearize.blends` ({buffer: block name}).
"""

from __future__ import annotations

import torch

from prunefx.graph.attributes import delete_unused_tensors, free_name, get_tensor, set_tensor
from prunefx.graph.in_place_writes import out_of_place, writers_of
from prunefx.graph.placement import module_device

aten = torch.ops.aten

_OUT_OF_PLACE = {
    aten.relu_.default: aten.relu.default, aten.hardtanh_.default: aten.hardtanh.default,
    aten.gelu_.default: aten.gelu.default, aten.silu_.default: aten.silu.default,
    aten.hardswish_.default: aten.hardswish.default, aten.leaky_relu_.default: aten.leaky_relu.default,
    aten.elu_.default: aten.elu.default, aten.mish_.default: aten.mish.default,
}


def _copy_meta(source: torch.fx.Node, target: torch.fx.Node) -> None:
    for key in ("val", "tensor_meta", "nn_module_stack", "stack_trace"):
        if key in source.meta:
            target.meta[key] = source.meta[key]


def blend_activation(module: torch.fx.GraphModule, activation: torch.fx.Node, buffer: str) -> torch.fx.Node:
    """Replace the uses of `activation` by `lerp(activation, x, module.<buffer>)`; return the lerp node."""
    activation.target = _OUT_OF_PLACE.get(activation.target, activation.target)
    x = activation.args[0]
    graph = module.graph
    with graph.inserting_after(activation):
        weight = graph.get_attr(buffer)
    with graph.inserting_after(weight):
        blend = graph.call_function(aten.lerp.Tensor, (activation, x, weight))
    activation.replace_all_uses_with(blend, delete_user_cb=lambda user: user is not blend)
    _copy_meta(activation, blend)
    return blend


def new_blend_buffer(module: torch.fx.GraphModule, block_name: str) -> str:
    """Register a 0-dim float buffer holding l = 0 under a name derived from the block; return its target."""
    wanted = "linearize_" + "".join(c if c.isalnum() else "_" for c in block_name)
    target = free_name(module, wanted)
    set_tensor(module, target, torch.zeros((), dtype=torch.float32, device=module_device(module)), parameter=False)
    return target


def remove_activation(module: torch.fx.GraphModule, activation: torch.fx.Node) -> None:
    """Replace `act(x)` by `x` (its users read `x` directly) and erase the activation. A user that wrote in place
    into the activation's output (`a = relu(h); a += 1`) would write into `x`, which others may read after it:
    it becomes its out-of-place form, or reads a copy of `x` where torch has none."""
    x = activation.args[0]
    for writer in writers_of(activation):
        replacement = out_of_place(writer.target)
        if replacement is not None:
            writer.target = replacement
        else:
            with module.graph.inserting_before(writer):
                copy = module.graph.call_function(aten.clone.default, (x,))
            _copy_meta(x, copy)
            writer.replace_input_with(activation, copy)
    activation.replace_all_uses_with(x)
    module.graph.erase_node(activation)


def set_blends(module: torch.fx.GraphModule, buffers, value: float) -> None:
    """Set every blend buffer in `buffers` to `value` (clamped to [0, 1])."""
    value = min(1.0, max(0.0, float(value)))
    for buffer in buffers:
        get_tensor(module, buffer).fill_(value)


def strip_finished_blends(program) -> list[str]:
    """Turn every blend whose l is exactly 1 into the identity; return the buffers that went away."""
    record = program.analysis.linearize
    if record is None:
        return []
    blends = record.blends
    module = program.module
    finished = [buffer for buffer in blends if float(get_tensor(module, buffer)) == 1.0]
    if not finished:
        return []
    for node in list(module.graph.nodes):
        if node.op == "call_function" and node.target is aten.lerp.Tensor and node.args[2].op == "get_attr" \
                and node.args[2].target in finished:
            _strip(module, node)
    delete_unused_tensors(module)
    program.recompile()
    for buffer in finished:
        record.stripped[buffer] = blends.pop(buffer)
    return finished


def _strip(module: torch.fx.GraphModule, blend: torch.fx.Node) -> None:
    activation, x, weight = blend.args
    blend.replace_all_uses_with(x)
    module.graph.erase_node(blend)
    for node in (activation, weight):
        if not node.users:
            module.graph.erase_node(node)
