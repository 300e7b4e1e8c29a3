"""The allow-list of graph-node operators a `.pt2` may call (graph/safety/functional_ops.py), against every op
torch registers and every op our captured models use.

Oracle: each registered overload's schema read directly here (an argument annotated as written, an
`out` tag, no returns) and torch's own list of side-effectful functions, not the module's helpers."""

from __future__ import annotations

import pytest
import torch
from torch.fx.node import _side_effectful_functions

from prunefx.graph import capture
from prunefx.graph.safety.functional_ops import (
    check_writes,
    is_in_place,
    named_in_place,
    refusal,
    refused_nodes,
    writes_keyword_argument,
)
from prunefx.models import build_model


def _aten_overloads():
    for qualified in sorted(torch._C._dispatch_get_all_op_names()):
        namespace, _, rest = qualified.partition("::")
        name, _, overload = rest.partition(".")
        if namespace != "aten":
            continue
        try:
            op = getattr(getattr(torch.ops.aten, name), overload or "default")
        except (AttributeError, RuntimeError):
            continue
        yield op


def _named_out(overload: str) -> bool:
    """torchgen's naming of out= overloads ('out', 'Scalar_out'), the oracle where torch has no Tag.out (2.11)."""
    return overload == "out" or overload.endswith("_out")


def _written_arguments(op) -> list[str]:
    return [a.name for a in op._schema.arguments if a.alias_info is not None and a.alias_info.is_write]


# the checks torch.export inserts, which can only raise: the only ops without returns a file may call
ADMITTED_CHECKS = {"aten._assert_tensor_metadata.default", "aten._assert_async.default"}


def test_every_mutating_out_or_side_effect_op_torch_registers_is_refused():
    checked, admitted = 0, set()
    for op in _aten_overloads():
        name = f"torch.ops.{op}"
        written = _written_arguments(op)
        out = torch.Tag.out in op.tags if hasattr(torch.Tag, "out") else _named_out(op._schema.overload_name)
        effectful = out or not op._schema.returns or op in _side_effectful_functions
        if effectful or (written and written != ["self"]):
            if refusal(name) is None:
                admitted.add(str(op))
            checked += 1
        elif written:  # in-place on its first argument: admitted by name, judged by where it writes
            assert is_in_place(op) or refusal(name) is not None, name
    assert admitted == ADMITTED_CHECKS
    assert checked > 1000  # torch registers thousands of out= overloads alone


def test_a_program_with_a_dtype_cast_saves_and_loads(tmp_path):
    """torch.export checks every `.float()` with `_assert_tensor_metadata`, which returns nothing: refused, it
    made the model.pt2 of any model with a cast a file prunefx wrote and could not read back."""
    from prunefx.graph import Program

    class Casts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).float().softmax(1)

    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    program = capture(Casts().eval(), x)
    assert "aten._assert_tensor_metadata.default" in {str(n.target) for n in program.graph.nodes}
    loaded = Program.load(program.save(tmp_path / "casts.pt2"))
    torch.testing.assert_close(loaded(x), program(x), rtol=0, atol=0)


@pytest.mark.skipif(not hasattr(torch.Tag, "out"), reason="torch 2.11 has no out/inplace tags to check against")
def test_the_schema_rules_used_on_torch_2_11_agree_with_the_tags_of_later_torch():
    """torch 2.11 lacks Tag.out and Tag.inplace, so functional_ops reads the schema there; on a torch that has
    the tags, the schema rule for out= equals the tag on every overload, and the naming rule for in-place differs
    only on ops that write nothing but their first argument (so check_writes judges them) or on list kernels
    it refuses."""
    overloads = list(_aten_overloads())
    assert [str(op) for op in overloads if writes_keyword_argument(op) != (torch.Tag.out in op.tags)] == []
    for op in overloads:
        if named_in_place(op) and torch.Tag.inplace not in op.tags:
            assert _written_arguments(op) == ["self"], op
        elif torch.Tag.inplace in op.tags and not named_in_place(op):
            assert str(op._schema.arguments[0].type) != "Tensor", op
    assert len(overloads) > 2000


@pytest.mark.parametrize("name", [
    "torch.ops.aten.from_file.default", "torch.ops.aten.save.default", "torch.ops.aten._print.default",
    "torch.ops.aten.manual_seed.default", "torch.ops.aten.fill_.Scalar_out", "torch.ops.aten.add.out",
    "torch.ops.aten.set_.source_Tensor", "torch.ops.aten.record_stream.default",
    "torch.ops.c10d.allreduce_.default", "torch.ops.profiler._record_function_enter.default",
    "torch.ops.higher_order.cond", "torch.ops.aten.no_such_op.default", "torch.os.system", "builtins.eval",
    "_operator.pow", "_operator.setitem",
])
def test_known_effects_are_refused_in_one_phrase(name):
    why = refusal(name)
    assert why is not None and "\n" not in why


class _Block(torch.nn.Module):
    """Convolutions with in-place activations, a residual add, batch norm, attention and layer norm: the
    op families our model zoo captures."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.act = torch.nn.ReLU(inplace=True)
        self.layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, activation="gelu")
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        y = self.act(y + y.flip(3))
        tokens = self.layer(y.flatten(2).transpose(1, 2))
        return self.head(torch.nn.functional.hardswish(tokens.mean(1)))


def test_nothing_a_captured_model_uses_is_refused():
    program = capture(_Block().eval(), torch.randn(1, 3, 8, 8))
    assert refused_nodes(program.graph) == []
    assert check_writes(program.to_exported()) is None


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["prunefx:resnet20", "torchvision:mobilenet_v2", "timm:deit_tiny_patch16_224"])
def test_nothing_a_zoo_model_uses_is_refused(reference):
    spec = build_model(reference, image_size=32)
    shape = spec.default_input_shape if reference.startswith("prunefx") else (1, 3, 32, 32)
    program = capture(spec.module.eval(), torch.randn(shape), name=reference)
    assert refused_nodes(program.graph) == []


class _WritesItsWeight(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x + self.weight


def test_an_in_place_write_into_a_parameter_is_refused():
    exported = torch.export.export(_WritesItsWeight(), (torch.randn(4),))
    graph = exported.graph
    weight = next(n for n in graph.nodes if n.op == "placeholder")
    add = next(n for n in graph.nodes if n.op == "call_function")
    with graph.inserting_before(add):
        view = graph.call_function(torch.ops.aten.view.default, (weight, [4]))
        graph.call_function(torch.ops.aten.mul_.Scalar, (view, 0.0))
    why = check_writes(exported)
    assert why is not None and "writes into" in why
