"""The pass contract (passes/core/contract.py) enforced by the Pipeline, composite passes verified inside,
the registry users extend, channel rules that refuse a silent override, and a light `import prunefx.graph`."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import subprocess
import sys
from typing import ClassVar

import pytest
import torch

import prunefx
from prunefx.graph import capture
from prunefx.graph.analysis_record import LinearizeRecord
from prunefx.graph.channels.rules import RULES, channel_rule, remove_channel_rule
from prunefx.graph.errors import PrunefxError
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.pass_config import PassConfig, option
from prunefx.passes.core.pipeline import Pipeline, PipelineError
from prunefx.passes.core.recipe import load_recipe
from prunefx.passes.core.registry import get_pass, register_pass, registered_passes, unregister_pass
from prunefx.passes.core.result import Result
from prunefx.passes.fold_batchnorm import fold_batchnorm
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.passes.remove_channels import remove_channels


def _program():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 4, 1))
    with torch.no_grad():
        model[1].running_var.fill_(4.0)
    return capture(model.eval(), torch.randn(1, 3, 8, 8), name="tiny")


@graph_pass(config=None, in_place=True, exact=True)
def fold_batchnorm_that_moves_outputs(program, /, *, config=None):
    """Stands in for fold_batchnorm inside quantize_int8: claims exactness, doubles a weight."""
    with torch.no_grad():
        program.module.state_dict()["0.weight"].mul_(2)
    return Result(program, modified=True)


def test_a_composite_pass_failing_inside_is_reported_with_the_inner_pass_named(monkeypatch):
    quantize_module = importlib.import_module("prunefx.passes.quantize_int8")  # the package's name is the pass
    monkeypatch.setattr(quantize_module, "fold_batchnorm", fold_batchnorm_that_moves_outputs)
    config = {"calibration": [torch.randn(1, 3, 8, 8)]}
    with pytest.raises(PipelineError) as caught:
        Pipeline([fold_batchnorm, (quantize_int8, config)]).run(_program())
    assert caught.value.failed == "quantize_int8 > fold_batchnorm_that_moves_outputs"
    assert caught.value.ran_before == ["fold_batchnorm"]
    message = str(caught.value)
    assert message.startswith("pass 'quantize_int8' failed: pass 'fold_batchnorm_that_moves_outputs' failed: "
                              "promised an exact rewrite")
    assert "\n" not in message
    with pytest.raises(PipelineError) as bare:  # called outside any Pipeline, the inner pass is verified too
        quantize_int8(_program(), config=config)
    assert bare.value.failed == "fold_batchnorm_that_moves_outputs"


def test_a_pipeline_is_a_pass_and_a_step_of_another():
    inner = Pipeline([fold_batchnorm], name="fold_only")
    assert inner.contract.exact and inner.contract.in_place is False
    program = _program()
    result = inner(program)
    assert result.modified and result.stats["fold_batchnorm"]["folded"] == 1
    assert result.program is not program
    outer = Pipeline([inner]).run(_program())
    assert outer.stats()["fold_only"]["fold_batchnorm"]["folded"] == 1
    assert not any(node.target is torch.ops.aten.batch_norm.default for node in outer.program.graph.nodes)


@graph_pass(config=None, in_place=True)
def writes_a_record_it_does_not_declare(program, /, *, config=None):
    program.analysis.linearize = LinearizeRecord()
    return Result(program, modified=False)


def test_a_pass_that_writes_an_undeclared_analysis_field_is_named():
    with pytest.raises(PipelineError, match="pass 'writes_a_record_it_does_not_declare' failed: changed the "
                                            "analysis record 'linearize'"):
        Pipeline([writes_a_record_it_does_not_declare], verify="none").run(_program())


def test_a_plain_function_calling_a_declared_pass_may_change_what_that_pass_writes():
    def narrower(program, /, *, config=None):  # a user's own step around remove_channels
        return remove_channels(program, config={"macs": 0.7, "importance": "l2", "round_to": 1, "strict": False})

    result = Pipeline([narrower], verify="none").run(_program())
    assert result.program.analysis.kept_channels is not None
    nested = Pipeline([Pipeline([narrower], verify="none")], verify="none").run(_program())  # nor the Pipeline
    assert nested.program.analysis.kept_channels is not None


def test_a_contract_names_only_fields_of_the_analysis_record():
    with pytest.raises(ValueError, match="'channel_group' is not a field of the Analysis record"):
        graph_pass(config=None, in_place=True, writes=("channel_group",))


@pytest.fixture
def registered():
    names = []
    yield names
    for name in names:
        unregister_pass(name)


def test_a_user_pass_registered_in_python_runs_from_a_recipe(tmp_path, registered):
    @graph_pass(config=None, in_place=True)
    def scale_last_bias(program, /, *, config=None):
        with torch.no_grad():
            program.module.state_dict()["3.bias"].add_(1.0)
        return Result(program, modified=True)

    register_pass(scale_last_bias)
    registered.append("scale_last_bias")
    assert "scale_last_bias" in registered_passes() and get_pass("scale_last_bias") is scale_last_bias
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("passes:\n  - fold_batchnorm\n  - scale_last_bias\n")
    program = _program()
    before = program.run_example()
    result = load_recipe(recipe).run(program)
    # oracle: the dense model's output, plus the 1.0 the user's pass added to the last layer's bias
    assert [name for name, _ in result.steps] == ["fold_batchnorm", "scale_last_bias"]
    torch.testing.assert_close(result.program.run_example(), before + 1.0, rtol=1e-4, atol=1e-4)


def test_the_registry_refuses_silent_replacement_and_removal_of_shipped_passes(registered):
    def fold_batchnorm(program, /, *, config=None):  # same name as a shipped pass
        return Result(program, modified=False)

    with pytest.raises(PrunefxError, match="a shipped pass is already registered as 'fold_batchnorm'"):
        register_pass(fold_batchnorm)
    with pytest.raises(PrunefxError, match="'fold_batchnorm' is a shipped pass; it cannot be removed"):
        unregister_pass("fold_batchnorm")
    with pytest.raises(PrunefxError, match="unknown pass 'never_registered'"):
        unregister_pass("never_registered")
    register_pass(fold_batchnorm, replace=True)
    assert get_pass("fold_batchnorm").function is fold_batchnorm
    unregister_pass("fold_batchnorm")  # the shipped pass comes back
    assert get_pass("fold_batchnorm") is prunefx.passes.fold_batchnorm


def test_every_pass_file_registers_its_pass_and_the_package_exports_it():
    """passes/*.py holds the passes and nothing else: each file defines the pass of its name, registered as
    shipped where it is defined, and prunefx.passes exports it; infrastructure lives in the subpackages."""
    import pkgutil
    from pathlib import Path

    import prunefx.passes as package
    from prunefx.passes.core import registry
    from prunefx.passes.core.shipped import SHIPPED_PASSES

    files = {info.name for info in pkgutil.iter_modules([str(Path(package.__file__).parent)]) if not info.ispkg}
    assert files == set(SHIPPED_PASSES)  # the table the package and the registry import them by
    for name in files:
        assert getattr(package, name) is importlib.import_module(f"prunefx.passes.{name}").__dict__[name]
        assert name in package.__all__ and get_pass(name) is registry._SHIPPED[name]


def test_overriding_a_shipped_channel_rule_needs_the_flag():
    relu = torch.ops.aten.relu.default
    shipped = RULES[relu]

    def my_relu(ctx, node):
        return list(ctx.labels(node.args[0]))

    with pytest.raises(PrunefxError, match="prunefx ships a channel rule for aten.relu.default; pass "
                                           "override=True"):
        channel_rule(relu)(my_relu)
    assert RULES[relu] is shipped
    try:
        channel_rule(relu, override=True)(my_relu)
        assert RULES[relu] is my_relu
    finally:
        remove_channel_rule(relu)
    assert RULES[relu] is shipped


@pytest.mark.slow  # a fresh interpreter imports torch: seconds on a loaded machine
def test_importing_the_graph_layer_loads_no_onnx_runtime():
    code = ("import sys, prunefx.graph, prunefx.passes; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('onnx', 'onnxruntime', 'onnx_graphsurgeon', 'onnxscript', 'tensorrt')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.slow  # captures and prunes a ResNet-20
def test_the_cli_verbosity_sets_the_level_of_prunefx_log_records(tmp_path, capsys):
    from prunefx.cli import main

    command = ["prune", "prunefx:resnet20", "--input-shape", "1x1x28x28", "--macs", "0.5"]
    assert main(["-v", *command, "-o", str(tmp_path / "loud")]) == 0
    loud = capsys.readouterr().err
    assert "prunefx: pass remove_channels: modified=True" in loud
    assert "prunefx: remove_channels: " in loud and "of the MACs kept" in loud


@pytest.mark.parametrize("flags, shown", [([], {"warning"}), (["-q"], set()), (["-v"], {"warning", "info"}),
                                          (["-vv"], {"warning", "info", "debug"})])
def test_the_cli_flags_choose_which_prunefx_records_reach_stderr(flags, shown, capsys):
    import logging

    from prunefx.cli import _logging_to_stderr, build_parser

    args = build_parser().parse_args([*flags, "demo"])
    logger = logging.getLogger("prunefx.passes.core.pipeline")
    with _logging_to_stderr(args):
        for level in ("debug", "info", "warning"):
            getattr(logger, level)("a %s record", level)
    err = capsys.readouterr().err
    assert {level for level in ("debug", "info", "warning") if f"prunefx: a {level} record" in err} == shown


def test_the_pipeline_parses_each_config_once_and_hands_the_pass_the_parsed_config():
    """A pass in a Pipeline receives its parsed config (its options as fields, defaults filled in); a bare call
    with a mapping still works, and parsing a parsed config hands it back as it is."""
    seen = []

    @dataclasses.dataclass
    class EchoConfig(PassConfig):
        owner: ClassVar[str] = "echo"
        times: int = option(2, help="how often")

    @graph_pass(config=EchoConfig, in_place=True)
    def echo(program, /, *, config=None):
        seen.append(config)
        return Result(program, modified=False, stats={"times": EchoConfig.parse(config).times})

    program = _program()
    Pipeline([(echo, {"times": 3})]).run(program)
    assert isinstance(seen[-1], EchoConfig) and seen[-1].times == 3
    assert echo(program, config={"times": 4}).stats == {"times": 4} and seen[-1] == {"times": 4}
    assert EchoConfig.parse(seen[0]) is seen[0]


def test_no_pass_turns_its_parsed_config_back_into_a_mapping():
    """Passes read their options as fields: `.as_dict()` is the config machinery's own (pass_config.py)."""
    from pathlib import Path

    root = Path(prunefx.passes.__file__).parent
    offenders = [f"{path.relative_to(root)}:{node.lineno}" for path in sorted(root.rglob("*.py"))
                 if path.name != "pass_config.py"
                 for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "as_dict"]
    assert offenders == []


def test_passes_core_holds_infrastructure_only():
    """No pass's config or facts in passes/core/: they live beside their pass (passes/budget/, passes/removal/,
    passes/sparsity/)."""
    from pathlib import Path

    from prunefx.passes.core import registry
    from prunefx.passes.core.shipped import SHIPPED_PASSES

    core = Path(registry.__file__).parent
    names = {path.stem for path in core.glob("*.py")}
    assert not any(shipped in name for name in names for shipped in SHIPPED_PASSES), sorted(names)
