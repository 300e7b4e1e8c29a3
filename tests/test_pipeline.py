"""Pipeline verification and failure reports; YAML recipes spell the same pipeline."""

import dataclasses

import pytest
import torch
from torch import nn

import prunefx
from prunefx.graph import capture
from prunefx.graph.errors import PrunefxError
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.pass_config import PassConfig
from prunefx.passes.core.pipeline import Pipeline, PipelineError
from prunefx.passes.core.recipe import RecipeError, load_recipe, pipeline_from_spec
from prunefx.passes.core.registry import PASSES
from prunefx.passes.core.result import Result
from prunefx.passes.fold_batchnorm import fold_batchnorm
from prunefx.passes.remove_channels import RemoveChannelsConfig
from prunefx.passes.training.config import TrainConfig


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


@graph_pass(config=None, in_place=True, exact=True)
def claims_exact_but_is_not(program, /, *, config=None):
    weight = program.module.state_dict()["0.weight"]
    weight.mul_(2)
    return Result(program, modified=True)


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


def _randomised_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Batch norms far from the identity, or a fold that forgot one would go unseen."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor in (module.weight, module.bias, module.running_mean):
                    tensor.copy_(torch.randn(tensor.shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
    return model.eval()


class _ToFloat32(torch.nn.Module):
    def forward(self, x):
        return x.float()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_an_exact_pass_on_a_half_precision_program_is_checked_to_its_rounding(dtype):
    # the float32 tolerance (1e-4 of the outputs) refused every fold of a float16 or bfloat16 Program, blaming the
    # pass; a pass that is wrong is still refused
    import torchvision

    model = _randomised_norms(torchvision.models.resnet18(num_classes=10)).to(dtype)
    program = capture(model, torch.randn(1, 3, 32, 32, dtype=dtype))
    assert Pipeline([fold_batchnorm]).run(program).stats()["fold_batchnorm"]["folded"] == 20
    # the same with its outputs cast to float32 at the end: the rounding happened before the cast
    widened = capture(torch.nn.Sequential(model, _ToFloat32()), torch.randn(1, 3, 32, 32, dtype=dtype))
    assert Pipeline([fold_batchnorm]).run(widened).stats()["fold_batchnorm"]["folded"] == 20
    with pytest.raises(PipelineError, match="promised an exact rewrite"):
        Pipeline([claims_exact_but_is_not]).run(capture(_program().module.to(dtype), torch.randn(1, 3, 8, 8,
                                                                                                  dtype=dtype)))


@graph_pass(config=None, in_place=True)
def triples_the_weights(program, /, *, config=None):
    program.module.state_dict()["0.weight"].mul_(3)
    return Result(program, modified=True)


def test_an_exact_pass_is_checked_against_the_outputs_of_the_program_it_was_given():
    """The reference is the previous pass's result (whose check ran it), not the model the Pipeline started with."""
    result = Pipeline([triples_the_weights, fold_batchnorm]).run(_program())  # exact after the change
    assert result.stats()["fold_batchnorm"]["folded"] == 1
    with pytest.raises(PipelineError, match="promised an exact rewrite"):
        Pipeline([triples_the_weights, claims_exact_but_is_not]).run(_program())


def test_each_verified_pass_runs_the_model_once(monkeypatch):
    """One run for the first exact pass's reference, then one per pass: the check's run is the exactness
    comparison's and the next pass's reference."""
    from prunefx.graph.program import Program

    runs = []
    run_example = Program.run_example

    def counted(self):
        runs.append(self.name)
        return run_example(self)

    monkeypatch.setattr(Program, "run_example", counted)
    Pipeline([fold_batchnorm, identity_pass, fold_batchnorm]).run(_program())
    assert len(runs) == 1 + 3


def test_a_pass_that_is_not_checked_for_exactness_runs_with_no_stale_reference_held(monkeypatch):
    """The outputs a check ran are kept as the next exact pass's reference only: a training pass after an exact one
    ran with them held (on a GPU, a segmentation model's outputs at its batch: hundreds of MB, for nothing)."""
    import gc
    import weakref

    from prunefx.passes.core import pipeline

    ran, alive_during = [], []
    verified_outputs = pipeline.verified_outputs

    def tracked(*args, **kwargs):
        outputs = verified_outputs(*args, **kwargs)
        ran.extend(weakref.ref(tensor) for tensor in outputs or [])
        return outputs

    def looks(program, /, *, config=None):  # not exact: its check needs no reference
        gc.collect()
        alive_during.append(sum(ref() is not None for ref in ran))
        return Result(program, modified=False)

    monkeypatch.setattr(pipeline, "verified_outputs", tracked)
    Pipeline([fold_batchnorm, looks]).run(_program())
    assert ran and alive_during == [0]


def test_the_exactness_check_runs_the_model_in_full_float32_and_leaves_the_process_s_setting(monkeypatch):
    """On a GPU, cuDNN's default TF32 moves a convolution's output by about 1e-3: a folded batch norm (its weights
    rounded otherwise than the unfolded ones) read as an inexact rewrite outside `on_device`. Both runs the check
    compares are in full float32, whatever the process set; its setting reads as before afterwards."""
    from prunefx.graph.program import Program

    seen = []
    run_example = Program.run_example

    def recorded(self):
        seen.append((torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32))
        return run_example(self)

    monkeypatch.setattr(Program, "run_example", recorded)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # a user's (or a library's) TF32
    try:
        Pipeline([fold_batchnorm]).run(_program())
        after = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(previous)
    assert seen == [("highest", False)] * 2 and after == ("medium", True)


def test_recipe_builds_the_same_pipeline(tmp_path):
    recipe = tmp_path / "fold.yaml"
    recipe.write_text("name: fold\nverify: full\npasses:\n  - fold_batchnorm: {}\n")
    pipeline = load_recipe(recipe)
    assert pipeline.names == ["fold_batchnorm"] and pipeline.verify == "full" and pipeline.__name__ == "fold"
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


# --- the typed pass contract (passes/core/pass_config.py) ------------------------------------------------

@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_shipped_pass_declares_a_config_dataclass_and_its_in_place_behaviour(name):
    function = PASSES[name]
    config_class = function.contract.config
    assert dataclasses.is_dataclass(config_class) and issubclass(config_class, PassConfig)
    assert config_class.owner == name and function.contract.in_place in (True, False)
    for field in dataclasses.fields(config_class):  # every option says what it is for
        if field.name not in {f.name for f in dataclasses.fields(TrainConfig)}:
            assert field.metadata.get("help"), f"{name}.{field.name} has no help"


@pytest.mark.parametrize("name, key, value, message", [
    ("remove_channels", "round_to", "8", "'round_to' must be an integer"),
    ("remove_channels", "compensate", "yes", "'compensate' must be true or false or null"),
    ("remove_channels", "keep", "conv1", "'keep' must be a list"),
    ("remove_channels", "macs", True, "'macs' must be a fraction in \\(0, 1\\]"),
    ("fold_batchnorm", "anything", 1, "unknown option 'anything'"),
    ("comb_channels", "keep", [1, 2], "'keep' must be a list"),
    ("merge_blocks", "min_speedup", float("inf"), "'min_speedup' must be a finite number"),
    ("merge_blocks", "measure", 3, "'measure' must be a function or null"),
    ("sparsify_nm", "sequential", 1, "'sequential' must be true or false"),
    ("linearize_blocks", "rank", "best", "'rank' must be one of damage, damage_per_mac"),
    ("recalibrate_batchnorm", "max_batches", 2.5, "'max_batches' must be an integer or null"),
])
def test_a_mistyped_value_is_one_line_naming_the_pass_and_the_key(name, key, value, message):
    base = {"remove_channels": {"macs": 0.5}, "linearize_blocks": {"count": 1}}.get(name, {})
    with pytest.raises(PrunefxError, match=f"step 1 \\('{name}'\\): {name}: {message}") as caught:
        Pipeline([(PASSES[name], {**base, key: value})])
    assert "\n" not in str(caught.value)


def test_defaults_live_in_the_config_class():
    config = RemoveChannelsConfig.parse({"macs": 0.5})
    assert (config.round_to, config.max_ratio, config.ranking, config.damping) == (8, 0.8, "global", 0.01)
    assert config.resolved() == ("l2", False)  # no calibration data: magnitudes
    with_data = RemoveChannelsConfig.parse({"macs": 0.5, "calibration": [torch.zeros(1)]})
    assert with_data.resolved() == ("obs", True)  # data given: the best one-shot path
    chosen = RemoveChannelsConfig.parse({"macs": 0.5, "importance": "l1", "calibration": [torch.zeros(1)]})
    assert chosen.resolved() == ("l1", False)  # an explicit choice is kept


def test_passes_declare_the_inputs_a_caller_injects():
    assert RemoveChannelsConfig.parse({"macs": 0.5}).needed_inputs() == {"calibration": "calibration"}
    assert RemoveChannelsConfig.parse({"macs": 0.5, "importance": "l2"}).needed_inputs() == {}
    assert RemoveChannelsConfig.parse({"macs": 0.5, "importance": "l2", "compensate": True}).needed_inputs() \
        == {"calibration": "calibration"}
    distill_inputs = PASSES["distill"].config_class.parse({"steps": 1}).needed_inputs(given=["teacher"])
    assert distill_inputs == {"data": "train", "eval_data": "val", "task": "task"}
    assert PASSES["sparsify_nm"].config_class.parse({}).needed_inputs() == {}
    assert PASSES["sparsify_nm"].config_class.parse({"criterion": "cap"}).needed_inputs() \
        == {"calibration": "labelled_calibration"}
    assert PASSES["merge_blocks"].config_class.parse({}).needed_inputs() == {"measure": "measure"}


@graph_pass(config=None, in_place=True)
def returns_a_copy_but_says_in_place(program, /, *, config=None):
    return Result(program.clone(), modified=False)


@graph_pass(config=None, in_place=False)
def rewrites_its_input_but_says_not_in_place(program, /, *, config=None):
    return Result(program, modified=False)


@pytest.mark.parametrize("broken", [returns_a_copy_but_says_in_place, rewrites_its_input_but_says_not_in_place])
def test_a_pass_that_breaks_its_in_place_declaration_is_named(broken):
    with pytest.raises(PipelineError, match=f"pass '{broken.__name__}' failed: declares in_place"):
        Pipeline([fold_batchnorm, broken]).run(_program())


def test_the_callers_program_is_untouched_by_an_in_place_pass():
    program = _program()
    before = {name: tensor.clone() for name, tensor in program.state_dict().items()}
    nodes = [node.name for node in program.graph.nodes]
    Pipeline([fold_batchnorm]).run(program)
    assert [node.name for node in program.graph.nodes] == nodes
    assert all(torch.equal(before[name], tensor) for name, tensor in program.state_dict().items())


def test_a_recipe_with_a_wrong_type_in_its_last_pass_is_refused_before_anything_runs(tmp_path):
    recipe = tmp_path / "late.yaml"
    recipe.write_text("passes:\n  - fold_batchnorm\n  - remove_channels: {macs: 0.5}\n"
                      "  - distill: {epochs: two, lr: 0.01}\n")
    with pytest.raises(PipelineError, match="step 3 \\('distill'\\): distill: 'epochs' must be an integer or null, "
                                            "not 'two' \\(no pass has run\\)"):
        load_recipe(recipe)


@pytest.mark.parametrize("late, refusal", [
    ("prune_while_training: {macs: 0.5, steps: 10, interval: 60}",
     "step 2 \\('prune_while_training'\\): prune_while_training: 10 training steps cannot hold 5 pruning events "
     "every 60 steps \\(needs at least 300\\) \\(no pass has run\\)"),
    ("distill: {steps: 5, warmup_steps: 10}",
     "step 2 \\('distill'\\): warmup_steps=10 is not below the run's 5 training steps.* \\(no pass has run\\)"),
])
def test_a_schedule_the_steps_cannot_hold_is_refused_before_an_earlier_pass_trains(tmp_path, late, refusal):
    """Visible in the config when it gives steps: refused when the recipe is read, not after hours of training."""
    recipe = tmp_path / "late.yaml"
    recipe.write_text(f"passes:\n  - distill: {{steps: 3}}\n  - {late}\n")
    with pytest.raises(PipelineError, match=refusal):
        load_recipe(recipe)


def test_an_unknown_width_option_of_a_budget_pass_lists_the_options_it_takes():
    """remove_channels' options are width options too; the error names the key the user wrote, not the pass
    that checks it."""
    for spec, prefix in (({"choose_for_budget": {"speedup": 2.0, "width": {"bogus": 1}}}, "choose_for_budget: 'width': "),
                         ({"prune_to_budget": {"speedup": 2.0, "bogus": 1}}, "prune_to_budget: ")):
        with pytest.raises(PipelineError) as refused:
            pipeline_from_spec({"passes": [spec]})
        message = str(refused.value)
        known = message.split("(known: ")[1].split(")")[0].split(", ")
        assert f"{prefix}unknown option 'bogus'" in message
        assert "prune_to_budget" not in message or spec.get("prune_to_budget")  # a nested width names no other pass
        assert {"importance", "ranking", "max_ratio", "round_to", "tolerance"} <= set(known) and "strict" not in known


def test_a_recipe_file_names_its_pipeline_by_its_stem_unless_it_names_one(tmp_path):
    (tmp_path / "quick.yaml").write_text("passes:\n  - fold_batchnorm\n")
    (tmp_path / "named.yaml").write_text("name: mine\npasses:\n  - fold_batchnorm\n")
    assert load_recipe(tmp_path / "quick.yaml").__name__ == "quick"
    assert load_recipe(tmp_path / "named.yaml").__name__ == "mine"


def test_a_pass_twice_with_tensor_data_runs_each_step_on_its_own_config():
    """Two steps of one pass whose configs hold tensors (calibration batches): each step gets its own parsed
    config, found by position, never by comparing configs (tensors do not compare to one bool)."""
    from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm

    program = _program()
    first, second = [(torch.randn(1, 3, 8, 8),)], [(torch.randn(1, 3, 8, 8) + 5,)]
    result = Pipeline([(recalibrate_batchnorm, {"data": first}), (recalibrate_batchnorm, {"data": second})],
                      verify="shapes").run(program)
    assert [name for name, _ in result.steps] == ["recalibrate_batchnorm", "recalibrate_batchnorm"]
    oracle = Pipeline([(recalibrate_batchnorm, {"data": second})], verify="shapes").run(program)
    for mine, theirs in zip(result.program.module.buffers(), oracle.program.module.buffers()):
        torch.testing.assert_close(mine, theirs)  # the second step's statistics, from its own batches


def test_a_configs_default_is_read_from_its_class_without_parsing_a_target():
    """`default` reads the field's default (remove_channels' 8), where a parse would need a target first."""
    assert RemoveChannelsConfig.default("round_to") == RemoveChannelsConfig.parse({"macs": 0.5}).round_to == 8
    assert RemoveChannelsConfig.default("keep") == RemoveChannelsConfig.parse({"macs": 0.5}).keep


@pytest.mark.parametrize("call, message", [
    (lambda program, model: Pipeline([fold_batchnorm]).run(model), "takes a prunefx Program"),
    (lambda program, model: Pipeline(fold_batchnorm), "a list of steps"),
    (lambda program, model: prunefx.to_module(model, program), "takes a prunefx Program and the torch.nn.Module"),
    (lambda program, model: prunefx.capture("resnet", torch.randn(1, 3, 8, 8)), "not str"),
    (lambda program, model: prunefx.count(model), "count takes a prunefx Program"),
    (lambda program, model: prunefx.graph.verify("model.pt2"), "verify takes .*prunefx.load"),
    (lambda program, model: prunefx.meet_budget(model, speedup=2.0), "meet_budget takes a prunefx Program"),
    (lambda program, model: prunefx.passes.remove_channels(model, config={"macs": 0.5}),
     "remove_channels takes a prunefx Program"),  # a pass called directly, outside a Pipeline
    (lambda program, model: prunefx.passes.fold_batchnorm("model.pt2"), "fold_batchnorm takes .*prunefx.load"),
])
def test_the_api_given_the_wrong_kind_of_object_says_so_in_one_line(call, message):
    """Not an AttributeError from deep inside: a PrunefxError naming what was expected."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    program = prunefx.capture(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(PrunefxError, match=message) as raised:
        call(program, model)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("key, value", [("data", "/etc"), ("teacher", 5), ("eval_data", "val")])
def test_what_a_caller_hands_a_training_pass_cannot_be_text_or_a_number_in_a_recipe(tmp_path, key, value):
    """It would fail only when the pass ran, after the passes before it had (compress: after the dense model's
    evaluation, minutes on real data)."""
    recipe = tmp_path / "given.yaml"
    recipe.write_text(f"passes:\n  - fold_batchnorm\n  - distill: {{steps: 3, {key}: {value}}}\n")
    with pytest.raises(PipelineError, match=f"distill: '{key}' is an object the caller gives .* \\(no pass has run\\)"):
        load_recipe(recipe)
