"""Pipeline verification and failure reports; YAML recipes spell the same pipeline."""

import pytest
import torch

from prunefx.graph import capture
from prunefx.graph.errors import PrunefxError
from prunefx.passes.fold_batchnorm import fold_batchnorm
from prunefx.passes.pipeline import Pipeline, PipelineError
from prunefx.passes.recipe import RecipeError, load_recipe
from prunefx.passes.registry import PASSES
from prunefx.passes.result import Result


def _program():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    with torch.no_grad():
        model[1].running_var.fill_(4.0)
    return capture(model.eval(), torch.randn(1, 3, 8, 8), name="tiny")


def identity_pass(program, /, *, config=None):
    return Result(program, modified=False)


def breaks_output_shape(program, /, *, config=None):
    output = next(n for n in program.graph.nodes if n.op == "output")
    with program.graph.inserting_before(output):
        sliced = program.graph.call_function(torch.ops.aten.slice.Tensor, (output.args[0][0], 1, 0, 2))
    output.args = ((sliced,),)
    program.recompile()
    return Result(program, modified=True)


def claims_exact_but_is_not(program, /, *, config=None):
    weight = program.module.state_dict()["0.weight"]
    weight.mul_(2)
    return Result(program, modified=True)


claims_exact_but_is_not.exact = True


def test_pipeline_runs_passes_in_order_and_leaves_input_untouched():
    program = _program()
    result = Pipeline([identity_pass, fold_batchnorm]).run(program)
    assert [name for name, _ in result.steps] == ["identity_pass", "fold_batchnorm"]
    assert result.modified and result.stats()["fold_batchnorm"]["folded"] == 1
    assert any(n.target is torch.ops.aten.batch_norm.default for n in program.graph.nodes)


def test_failure_names_failing_pass_and_those_before():
    with pytest.raises(PipelineError) as caught:
        Pipeline([identity_pass, fold_batchnorm, breaks_output_shape]).run(_program())
    assert caught.value.failed == "breaks_output_shape"
    assert caught.value.ran_before == ["identity_pass", "fold_batchnorm"]
    assert "output shapes" in str(caught.value)


def test_exactness_promise_is_checked_numerically():
    with pytest.raises(PipelineError, match="promised an exact rewrite"):
        Pipeline([claims_exact_but_is_not]).run(_program())


def test_recipe_builds_the_same_pipeline(tmp_path):
    recipe = tmp_path / "fold.yaml"
    recipe.write_text("name: fold\nverify: full\npasses:\n  - fold_batchnorm: {}\n")
    pipeline = load_recipe(recipe)
    assert pipeline.names == ["fold_batchnorm"] and pipeline.verify == "full"
    assert pipeline.run(_program()).stats()["fold_batchnorm"]["folded"] == 1


@pytest.mark.parametrize("text, message", [
    ("passes:\n  - no_such_pass\n", "unknown pass 'no_such_pass'"),
    ("passes: fold_batchnorm\n", "'passes' list"),
    ("passes:\n  - fold_batchnorm: 3\n", "must be a mapping"),
    ("passes: [\n", "not valid YAML"),
    ("verify: sometimes\npasses: []\n", "verify must be one of"),
])
def test_bad_recipes_give_clear_errors(tmp_path, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(PrunefxError, match=message):
        load_recipe(recipe)
    with pytest.raises(RecipeError, match="no such recipe"):
        load_recipe(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_shipped_pass_is_a_function_of_the_package_and_refuses_unknown_keys(name):
    import prunefx.passes as package

    function = PASSES[name]
    assert getattr(package, name) is function and callable(function)
    with pytest.raises(PrunefxError, match=f"step 1 \\('{name}'\\).*misspelt_key") as caught:
        Pipeline([(function, {"misspelt_key": 1})])  # refused when the pipeline is built, before any run
    assert "\n" not in str(caught.value)


def test_stats_keep_every_run_of_a_repeated_pass():
    calls = []

    def counting(program, /, *, config=None):
        calls.append(config["tag"])
        return Result(program, modified=False, stats={"tag": config["tag"]})

    result = Pipeline([(counting, {"tag": "a"}), (fold_batchnorm, {}), (counting, {"tag": "b"}),
                       (counting, {"tag": "c"})], verify="none").run(_program())
    assert calls == ["a", "b", "c"]
    stats = result.stats()
    assert [stats[k]["tag"] for k in ("counting", "counting#2", "counting#3")] == ["a", "b", "c"]
    assert "fold_batchnorm" in stats
