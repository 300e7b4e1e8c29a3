"""`prunefx compress` (recipe + data -> compressed model, ONNX file, measured report) and the demo built on it."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from prunefx.cli import EXIT_USER_ERROR, main
from prunefx.compress_inputs import load_model_and_data
from prunefx.compress_options import Options
from prunefx.compression import compress
from prunefx.data import fashion_mnist
from prunefx.data.splits import DataSplits, tensor_batches
from prunefx.graph import Program, PrunefxError, capture
from prunefx.injection import CALIBRATION_BATCHES, inject, injected_keys
from prunefx.named_recipes import recipe_path, shipped_recipes
from prunefx.passes.core.recipe import pipeline_from_spec, read_recipe
from prunefx.reports.compression import json_safe
from prunefx.runtime import OnnxRuntimeSession, read_variants

torch.set_num_threads(1)

needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist.DEFAULT_ROOT.is_dir(),
    reason=f"{fashion_mnist.DEFAULT_ROOT} missing: apt-get install dataset-fashion-mnist")

BATCH = 32
TINY_RECIPE = {
    "name": "tiny",
    "passes": [
        # fisher reads gradients: compress must give it calibration batches
        {"remove_channels": {"macs": 0.5, "round_to": 4, "importance": "fisher"}},
        # the default kd_weight (0.9) distils: compress must give it the dense teacher
        {"distill": {"steps": 5, "lr": 0.01}},
    ],
}
REPORT_KEYS = {"model", "data", "recipe", "batch_size", "accuracy", "macs_before", "macs_after", "params_before",
               "params_after", "latency", "speedup", "parity", "onnx", "passes", "seconds"}
FILES = ("model.pt2", "model_train.pt2", "model.onnx", "report.json", "report.md")


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_recipe(path, spec) -> str:
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def fast_options():
    return ["--batch-size", BATCH, "--eval-batches", 2, "--runs", 3, "--threads", 1]


# --- a real run ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """One compress run of ResNet-20 on Fashion-MNIST with the tiny recipe: (output folder, report, stdout)."""
    if not fashion_mnist.DEFAULT_ROOT.is_dir():
        pytest.skip(f"{fashion_mnist.DEFAULT_ROOT} missing: apt-get install dataset-fashion-mnist")
    tmp = tmp_path_factory.mktemp("compress")
    recipe = write_recipe(tmp / "tiny.yaml", TINY_RECIPE)
    output = tmp / "out"
    stdout = io.StringIO()  # capsys is function-scoped: a module fixture reads stdout itself
    with contextlib.redirect_stdout(stdout):
        code = main(["compress", "prunefx:resnet20", "--recipe", recipe, "--data", "fashion-mnist", "-o", str(output),
                     *map(str, fast_options())])
    assert code == 0, stdout.getvalue()
    return output, json.loads((output / "report.json").read_text()), stdout.getvalue()


@pytest.mark.slow
def test_compress_writes_every_file_and_a_full_report(compressed, schema_errors):
    output, report, stdout = compressed
    assert all((output / name).is_file() for name in FILES)
    assert REPORT_KEYS <= set(report) and not schema_errors(report)  # the published shape, without a budget
    assert report["budget"] is None
    assert report["data"] == "fashion-mnist" and report["batch_size"] == BATCH and report["data_seed"] == 0
    assert report["normalisation"] == {"mean": [0.286], "std": [0.353]}  # Fashion-MNIST's own, not ImageNet's
    assert report["recipe"]["name"] == "tiny"
    assert report["macs_after"] == pytest.approx(0.5 * report["macs_before"], rel=0.03)
    assert report["params_after"] < report["params_before"]
    for when in ("before", "after"):
        for split in ("test", "val"):
            result = report["accuracy"][when][split]
            assert result["count"] == 2 * BATCH and 0 <= result["accuracy"] <= 1
    latency = report["latency"]
    assert latency["threads"] == 1 and latency["runs"] == 3 and latency["batch_size"] == 1
    assert latency["speedup"] == pytest.approx(latency["dense_ms"] / latency["compressed_ms"])
    assert report["parity"]["relative"] < 1e-4
    assert [step["pass"] for step in report["passes"]] == ["remove_channels", "distill"]
    assert report["seconds"]["total"] > 0
    # the measured speed-up as printed, whichever way three runs of a tiny model on a shared machine land
    speedup = latency["speedup"]
    said = f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"
    assert "MACs per image" in stdout and said in stdout
    assert "| MACs per image |" in (output / "report.md").read_text()
    assert ", seed 0)" in (output / "report.md").read_text()
    # where the speed-up was measured, said alike in the three places: report.json's rounds of fresh processes
    where = f"measured alternately in {latency['rounds']} fresh processes" if latency["rounds"] > 1 else \
        "measured alternately in one process"
    assert where in stdout and where in (output / "report.md").read_text()


@pytest.mark.slow  # a whole compress run (the `compressed` fixture or the CLI)
def test_compress_ends_with_the_deployment_report(compressed, png_pixels):
    """The dense and the compressed model side by side (runtime/measure/deployment_report.py), read back from
    report.json and drawn in accuracy_latency.png."""
    output, report, stdout = compressed
    assert "accuracy_latency.png" in stdout
    variants = read_variants(report)
    assert [v.name for v in variants] == ["dense", "compressed"]
    assert [v.latency_ms for v in variants] == [report["latency"]["dense_ms"], report["latency"]["compressed_ms"]]
    assert [v.accuracy for v in variants] == [report["accuracy"]["before"]["test"]["accuracy"],
                                              report["accuracy"]["after"]["test"]["accuracy"]]
    assert variants[1].macs == report["macs_after"] and variants[0].backend == "onnxruntime (batch 1, 1 thread)"
    assert report["files"]["accuracy_latency.png"] == str(output / "accuracy_latency.png")
    png_pixels(output / "accuracy_latency.png")
    markdown = (output / "report.md").read_text()
    assert "## Deployment" in markdown
    assert "| dense | onnxruntime" in markdown and "| compressed | onnxruntime" in markdown


@pytest.mark.slow  # a whole compress run (the `compressed` fixture or the CLI)
def test_every_stage_is_scored_and_timed(compressed):
    output, report, stdout = compressed
    pruning, distillation = report["stages"]
    assert [pruning["pass"], distillation["pass"]] == ["remove_channels", "distill"]
    assert pruning["macs"] == pytest.approx(0.5 * report["macs_before"], rel=0.03)
    assert distillation["macs"] == pruning["macs"]  # training keeps the pruned widths
    for stage in (pruning, distillation):
        assert stage["modified"] and stage["test"]["count"] == 2 * BATCH
        latency = stage["latency"]
        assert latency["speedup"] == pytest.approx(latency["dense_ms"] / latency["ms"])
    # the last stage is the delivered model, scored on the same batches
    assert distillation["test"]["accuracy"] == report["accuracy"]["after"]["test"]["accuracy"]
    assert "[stage 1 remove_channels]" in stdout and "[stage 2 distill]" in stdout
    assert "## After every stage" in (output / "report.md").read_text()


@pytest.mark.slow  # a whole compress run (the `compressed` fixture or the CLI)
def test_passes_get_the_data_they_need(compressed):
    _, report, _ = compressed
    pruning, distillation = report["passes"]
    assert pruning["injected"] == ["calibration"] and pruning["stats"]["importance"] == "fisher"
    assert report["calibrated_on"] == "train"
    # what the fisher pass read, in words (it was always null): the first CALIBRATION_BATCHES training batches
    assert report["calibration"] == f"{CALIBRATION_BATCHES} batches of {BATCH} images of fashion-mnist's train split"
    assert distillation["injected"] == ["data", "eval_data", "task", "teacher"]
    stats = distillation["stats"]
    assert stats["steps"] == 5
    assert stats["kd_loss"] > 0  # the teacher is the dense model, not the pruned one
    assert stats["eval"] and stats["eval"][-1]["count"] == 2 * BATCH  # eval_data: the first 2 val batches


@pytest.mark.slow  # a whole compress run (the `compressed` fixture or the CLI)
def test_onnx_file_matches_the_batch_one_program(compressed):
    output, _, _ = compressed
    program = Program.load(output / "model.pt2")
    assert tuple(program.example_inputs[0].shape) == (1, 1, 28, 28)
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = program(x).numpy()
    got = OnnxRuntimeSession(output / "model.onnx").run(x)[0]
    assert got.shape == (1, 10)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    trainable = Program.load(output / "model_train.pt2")
    assert tuple(trainable.example_inputs[0].shape) == (BATCH, 1, 28, 28)
    with torch.no_grad():  # the same weights at both batch sizes
        np.testing.assert_allclose(trainable(x.expand(BATCH, -1, -1, -1).clone())[:1].numpy(), want,
                                   rtol=1e-4, atol=1e-5)


# --- errors --------------------------------------------------------------------------------------

def _one_line_error(code, out, err) -> str:
    assert code == EXIT_USER_ERROR, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunefx compress: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_unknown_recipe_name(capsys, tmp_path):
    code, out, err = run_cli(capsys, "compress", "prunefx:resnet20", "--recipe", "no-such-recipe",
                             "--data", "fashion-mnist", "-o", tmp_path / "never")
    line = _one_line_error(code, out, err)
    assert "unknown recipe 'no-such-recipe'" in line and "cpd-macs0.5" in line
    assert not (tmp_path / "never").exists()


def test_recipe_with_an_unknown_pass(capsys, tmp_path):
    recipe = write_recipe(tmp_path / "bad.yaml", {"passes": [{"prune_everything": {"macs": 0.5}}]})
    code, out, err = run_cli(capsys, "compress", "prunefx:resnet20", "--recipe", recipe,
                             "--data", "fashion-mnist", "-o", tmp_path / "never")
    line = _one_line_error(code, out, err)
    assert "unknown pass 'prune_everything'" in line and "bad.yaml" in line


def test_a_checkpoint_dir_inside_the_output_folder_is_refused_before_any_data(capsys, tmp_path):
    """The rerun that resumes would be refused (the folder holds files prunefx did not publish) and publishing
    replaces the folder whole: refused up front, before the data is read (this data set does not exist)."""
    recipe = write_recipe(tmp_path / "in.yaml", {"passes": [{"distill": {
        "steps": 2, "checkpoint_dir": str(tmp_path / "out" / "ckpt"), "checkpoint_every": 1}}]})
    code, out, err = run_cli(capsys, "compress", "prunefx:resnet20", "--recipe", recipe, "--data", "no-such-data",
                             "-o", tmp_path / "out")
    line = _one_line_error(code, out, err)
    assert "distill's checkpoint_dir" in line and "inside the output folder" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only parent"])
def test_a_checkpoint_dir_the_run_cannot_write_is_refused_before_any_data_and_nothing_is_made(capsys, tmp_path, case):
    """Training would refuse it only when it starts, after every pass before it; checked without creating it."""
    blocker = tmp_path / "blocker"
    if case == "read-only parent":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        blocker.mkdir(mode=0o500)
        folder = blocker / "ckpt"
    else:
        blocker.write_text("not a folder")
        folder = blocker if case == "a file" else blocker / "ckpt"
    recipe = write_recipe(tmp_path / "in.yaml", {"passes": [{"distill": {
        "steps": 2, "checkpoint_dir": str(folder), "checkpoint_every": 1}}]})
    code, out, err = run_cli(capsys, "compress", "prunefx:resnet20", "--recipe", recipe, "--data", "no-such-data",
                             "-o", tmp_path / "out")
    line = _one_line_error(code, out, err)
    assert "distill's checkpoint_dir" in line and "no-such-data" not in line
    assert not folder.exists() or folder.is_file()
    assert not (tmp_path / "out").exists()


@needs_fashion_mnist
def test_the_seed_draws_the_validation_images_and_the_training_order():
    def first_images(splits, split):
        return next(iter(getattr(splits, split)))[0]

    zero, again, three = (load_model_and_data("prunefx:resnet20", "fashion-mnist", batch_size=BATCH, seed=seed)[1]
                          for seed in (0, 0, 3))
    assert (zero.train.seed, three.train.seed) == (0, 3)
    for split in ("train", "val"):
        assert torch.equal(first_images(zero, split), first_images(again, split))  # a seed repeats its draws
        assert not torch.equal(first_images(zero, split), first_images(three, split))
    assert torch.equal(first_images(zero, "test"), first_images(three, "test"))  # the test set is never drawn


def test_unknown_data(capsys, tmp_path):
    code, out, err = run_cli(capsys, "compress", "prunefx:resnet20", "--recipe", "finetune",
                             "--data", "mnist-digits", "-o", tmp_path / "never")
    assert "unknown data 'mnist-digits'" in _one_line_error(code, out, err)


@pytest.mark.slow  # a whole compress run (the `compressed` fixture or the CLI)
@needs_fashion_mnist
def test_saved_program_at_another_batch_size(capsys, compressed, tmp_path):
    output, _, _ = compressed
    code, out, err = run_cli(capsys, "compress", output / "model.pt2", "--recipe", "finetune",
                             "--data", "fashion-mnist", "--batch-size", BATCH, "-o", tmp_path / "never")
    line = _one_line_error(code, out, err)
    assert "captured for input shape 1x1x28x28" in line and "--batch-size 1" in line


def test_training_recipe_on_data_without_a_training_split(capsys, tmp_path):
    if importlib.util.find_spec("foolbox") is None:
        pytest.skip("foolbox (the 20 offline ImageNet images) is not installed")
    code, out, err = run_cli(capsys, "compress", "torchvision:mobilenet_v3_small", "--recipe", "finetune",
                             "--data", "imagenet-sample", "--batch-size", 4, "-o", tmp_path / "never")
    assert "has no training split" in _one_line_error(code, out, err)


def test_inject_fills_only_what_a_pass_needs_and_the_recipe_left_unset():
    images, labels = torch.randn(40, 3, 8, 8), torch.arange(40) % 4
    splits = DataSplits(train=tensor_batches(images, labels, 4, shuffle=True), val=None,
                        test=tensor_batches(images, labels, 4, shuffle=False), classes=tuple("abcd"),
                        input_shape=(3, 8, 8))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    dense = capture(model, torch.randn(4, 3, 8, 8), name="tiny")
    pipeline = pipeline_from_spec({"passes": [
        {"remove_channels": {"macs": 0.5, "importance": "l2"}},      # l2 reads no data
        {"remove_channels": {"macs": 0.5, "importance": "taylor"}},  # gradients: calibration
        {"remove_channels": {"macs": 0.5, "importance": "obs"}},     # layer inputs: calibration
        {"distill": {"steps": 1, "eval_data": None}},                # the recipe's own eval_data stays
        "fold_batchnorm",                                            # not in the table
    ]})
    injected, keys = inject(pipeline, dense, splits, data="random")
    assert keys == [[], ["calibration"], ["calibration"], ["data", "task", "teacher"], []]
    configs = [step.config for step in injected.steps]
    assert "calibration" not in configs[0]
    calibration = configs[1]["calibration"]
    assert len(calibration) == CALIBRATION_BATCHES and all(b[0].shape == (4, 3, 8, 8) for b in calibration)
    assert configs[2]["calibration"] is calibration
    assert configs[3]["data"] is splits.train and configs[3]["eval_data"] is None
    teacher = configs[3]["teacher"]
    assert teacher is not dense and not teacher.training
    assert not any(p.requires_grad for p in teacher.module.parameters())
    assert configs[4] == {}
    # With no importance named, remove_channels takes the best one-shot path when data is at hand
    default = pipeline_from_spec({"passes": [{"remove_channels": {"macs": 0.5}}]}).steps[0]
    assert injected_keys(default) == {"calibration": "calibration"}

    no_training = DataSplits(None, None, splits.test, splits.classes, splits.input_shape)
    with pytest.raises(PrunefxError, match="'distill' trains, but random has no training split"):
        inject(pipeline, dense, no_training, data="random")


def test_a_budget_pass_measures_with_the_threads_and_runs_the_command_line_gives(monkeypatch):
    """compress --threads 1 --runs 7: the budget's candidates are timed on 1 thread, 7 runs each (as prune's and
    depth's are), not at the defaults; the report times the result with the same settings."""
    ort_backend = importlib.import_module("prunefx.runtime.backends.ort")
    asked = []
    measurer = lambda dense, candidate: (1.0, 1.0, 0.0)  # noqa: E731 (what the pass is handed, never called)
    monkeypatch.setattr(ort_backend, "onnx_latency_pair", lambda **settings: asked.append(settings) or measurer)
    images, labels = torch.randn(8, 3, 8, 8), torch.arange(8) % 2
    splits = DataSplits(train=tensor_batches(images, labels, 4, shuffle=True), val=None,
                        test=tensor_batches(images, labels, 4, shuffle=False), classes=("a", "b"),
                        input_shape=(3, 8, 8))
    dense = capture(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten()).eval(), torch.randn(4, 3, 8, 8))
    pipeline = pipeline_from_spec({"passes": [{"prune_to_budget": {"speedup": 1.5}}]})
    injected, keys = inject(pipeline, dense, splits, data="random", options=Options(threads=1, runs=7))
    assert "latency" in keys[0] and injected.steps[0].config["latency"] is measurer
    assert [(settings["threads"], settings["runs"]) for settings in asked] == [(1, 7)]


def test_data_with_a_test_split_only_calibrates_on_the_images_it_scores_and_says_so(tmp_path):
    """imagenet-sample's case (20 test images, no other split): the calibration batches are the test images, and
    the log and report.json say so, where before the score read as held out."""
    from prunefx.named_recipes import Recipe

    torch.manual_seed(0)
    images, labels = torch.randn(16, 3, 8, 8), torch.arange(16) % 4
    splits = DataSplits(None, None, tensor_batches(images, labels, 4, shuffle=False), tuple("abcd"), (3, 8, 8))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    dense = capture(model, torch.randn(4, 3, 8, 8), name="tiny")
    spec = {"passes": [{"remove_channels": {"macs": 0.5, "round_to": 2, "importance": "obs"}}]}
    pipeline, _ = inject(pipeline_from_spec(spec), dense, splits, data="test-only")
    calibration = pipeline.steps[0].config["calibration"]
    assert torch.equal(torch.cat([batch[0] for batch in calibration]), images)  # the oracle: the test images
    lines = []
    report = compress(dense, Recipe("obs", tmp_path / "obs.yaml", spec, pipeline_from_spec(spec)), splits,
                      tmp_path / "out", data="test-only", options=Options(runs=3, threads=1, stage_reports=False),
                      log=lines.append)
    assert report["calibrated_on"] == "test"
    assert "the test score is not held out" in (tmp_path / "out" / "report.md").read_text()
    assert any("calibration reads the test images it is then scored on" in line for line in lines)


def test_a_budget_pass_lets_its_measurer_go_before_the_next_pass_runs(tmp_path, monkeypatch):
    """The measurer compress hands a budget pass holds exported files (and on a GPU the models and engines): it is
    closed once no later pass reads it, not kept through the passes after it (hours of distillation) until exit."""
    from prunefx.graph.timing import Timing
    from prunefx.named_recipes import Recipe
    from prunefx.passes.core.pipeline import Pipeline
    from prunefx.runtime.measure.speedup import PairMeasurer

    events = []

    class Held:
        def close(self):
            events.append("measurer closed")

    def two_times_faster(**settings):  # every candidate measures 2x: the search takes its first
        return PairMeasurer(lambda d, c: (2.0, 1.0, 0.0), lambda d, c: Timing(2.0, 1.0, 0.0), round_to=None,
                            held=[Held()])

    run_step = Pipeline._run_step

    def logged_step(self, step, *args):
        events.append(f"run {step.name}")
        return run_step(self, step, *args)

    monkeypatch.setattr(importlib.import_module("prunefx.runtime.backends.ort"), "onnx_latency_pair", two_times_faster)
    monkeypatch.setattr(Pipeline, "_run_step", logged_step)
    torch.manual_seed(0)
    images, labels = torch.randn(16, 3, 8, 8), torch.arange(16) % 4
    splits = DataSplits(tensor_batches(images, labels, 4, shuffle=True), None,
                        tensor_batches(images, labels, 4, shuffle=False), tuple("abcd"), (3, 8, 8))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    dense = capture(model, torch.randn(4, 3, 8, 8), name="tiny")
    spec = {"passes": [{"prune_to_budget": {"speedup": 1.5, "round_to": 2}}, {"fold_batchnorm": {}}]}
    compress(dense, Recipe("budget", tmp_path / "budget.yaml", spec, pipeline_from_spec(spec)), splits,
             tmp_path / "out", data="random", options=Options(runs=3, threads=1, stage_reports=False), log=print)
    outer = [event for event in events if event in ("run prune_to_budget", "run fold_batchnorm", "measurer closed")]
    assert outer == ["run prune_to_budget", "measurer closed", "run fold_batchnorm"], outer


def test_the_delivered_model_is_scored_on_the_test_split_once(tmp_path):
    """The last stage row scores the model compress delivers on the test batches; the final score reuses it
    (the test split was read once more for the same number)."""
    from prunefx.named_recipes import Recipe

    torch.manual_seed(0)
    reads = {"train": 0, "val": 0, "test": 0}

    def split(name, count, shuffle):
        def prepare(images):
            reads[name] += 1
            return images
        return tensor_batches(torch.randn(count, 3, 8, 8), torch.arange(count) % 4, 4, shuffle=shuffle,
                              prepare=prepare)

    splits = DataSplits(split("train", 8, True), split("val", 8, False), split("test", 16, False), tuple("abcd"),
                        (3, 8, 8))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    dense = capture(model, torch.randn(4, 3, 8, 8), name="tiny")
    spec = {"passes": [{"remove_channels": {"macs": 0.5, "round_to": 2, "importance": "l2"}}]}
    report = compress(dense, Recipe("l2", tmp_path / "l2.yaml", spec, pipeline_from_spec(spec)), splits,
                      tmp_path / "out", data="tensors", options=Options(runs=3, threads=1), log=lambda line: None)
    assert reads["test"] == 2 * 4  # the dense model and the one stage, 4 batches each
    assert report["stages"][0]["test"] == report["accuracy"]["after"]["test"]
    assert report["accuracy"]["after"]["test"]["count"] == 16 and report["accuracy"]["after"]["val"]["count"] == 8


# --- recipes -------------------------------------------------------------------------------------

def test_shipped_recipes_resolve_and_build():
    names = shipped_recipes()
    assert {"cpd-macs0.5", "prune-l2-kd-macs0.5", "prune-obs-kd-macs0.5", "finetune"} <= set(names)
    for name in names:
        assert recipe_path(name) == recipe_path(f"{name}.yaml")
        spec = read_recipe(recipe_path(name))
        assert spec["name"] == name
        pipeline = pipeline_from_spec(spec)  # every pass exists
        assert set(pipeline.names) <= {"remove_channels", "prune_while_training", "recalibrate_batchnorm", "distill",
                                       "sparsify_nm", "linearize_blocks", "merge_blocks", "quantize_int8",
                                       "choose_for_budget"}
        text = recipe_path(name).read_text()
        # every key a pass is configured with is documented in the file's comment header
        header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        for step in pipeline.steps:
            for key in step.config:
                assert key in header, (name, step.name, key)
            for key in injected_keys(step):
                assert key in header, (name, step.name, key)


def test_json_safe_statistics():
    safe = json_safe({"a": float("nan"), "b": torch.tensor([1.0, 2.0]), "c": np.int64(3), 4: (1, 2),
                      "d": torch.zeros(100), "e": print})
    assert safe == {"a": None, "b": [1.0, 2.0], "c": 3, "4": [1, 2], "d": "array of shape [100]", "e": "print"}
    json.dumps(safe, allow_nan=False)
    assert not math.isnan(json_safe(1.5))


@pytest.mark.slow  # a whole compress run (the `compressed` fixture or the CLI)
@needs_fashion_mnist
def test_a_failure_after_training_keeps_the_trained_model_beside_the_output(tmp_path, capsys, monkeypatch):
    """A refusal (exit 2) says where the model is; a fault of ours stays one (exit 3) and says it too; a second
    failed run keeps its model beside the first one's rather than over it; so does a Ctrl-C during the final
    measurement (exit 130)."""
    import prunefx.compression as compression
    from prunefx.graph.errors import PrunefxError

    failures = [PrunefxError("the exporter refused"), RuntimeError("the exporter broke"), KeyboardInterrupt()]

    def fail_after_training(*args, **kwargs):
        raise failures.pop(0)

    monkeypatch.setattr(compression, "_measure_and_write", fail_after_training)
    recipe = write_recipe(tmp_path / "tiny.yaml", {"passes": [{"distill": {"steps": 2, "lr": 0.01}}]})
    output = tmp_path / "out"
    command = ("compress", "prunefx:resnet20", "--recipe", recipe, "--data", "fashion-mnist", "-o", output,
               *fast_options())
    code, _, err = run_cli(capsys, *command)
    kept = tmp_path / "out.model_train.pt2"
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "the exporter refused" in err and str(kept) in err
    assert not output.exists()
    assert Program.load(kept).name == "prunefx:resnet20"
    first = kept.read_bytes()
    code, out, err = run_cli(capsys, *command)
    again = tmp_path / "out.model_train-2.pt2"
    assert code == 3 and "internal error: RuntimeError: the exporter broke" in err and str(again) in err
    assert kept.read_bytes() == first and Program.load(again).name == "prunefx:resnet20"
    code, out, err = run_cli(capsys, *command)
    third = tmp_path / "out.model_train-3.pt2"
    assert code == 130 and str(third) in err and Program.load(third).name == "prunefx:resnet20"  # on stderr too
    save = Program.save

    def interrupted_in_the_staging_folder(program, path, *args, **kwargs):
        if ".partial-" in str(path):  # Ctrl-C while model_train.pt2 is written into the staging folder
            raise KeyboardInterrupt
        return save(program, path, *args, **kwargs)

    monkeypatch.setattr(Program, "save", interrupted_in_the_staging_folder)
    code, out, err = run_cli(capsys, *command)
    fourth = tmp_path / "out.model_train-4.pt2"
    assert code == 130 and str(fourth) in err and Program.load(fourth).name == "prunefx:resnet20"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.model_train-2.pt2", "out.model_train-3.pt2",
                                                          "out.model_train-4.pt2", "out.model_train.pt2", "tiny.yaml"]


@pytest.mark.slow  # a whole compress run
@needs_fashion_mnist
def test_a_pass_failing_after_the_training_keeps_the_trained_model(tmp_path, capsys):
    """distill, then a quantize_int8 that fails when it runs (a node name no graph has; prune-int8's order): the
    distilled model is kept beside the output, and nothing else is written. It was lost with the run."""
    recipe = write_recipe(tmp_path / "tiny.yaml", {"passes": [{"distill": {"steps": 2, "lr": 0.01}},
                                                              {"quantize_int8": {"skip_nodes": ["conv2d_typo"]}}]})
    code, _, err = run_cli(capsys, "compress", "prunefx:resnet20", "--recipe", recipe, "--data", "fashion-mnist",
                           "-o", tmp_path / "out", *fast_options())
    kept = tmp_path / "out.model_train.pt2"
    assert code == 2 and "conv2d_typo" in err and str(kept) in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.model_train.pt2", "tiny.yaml"]
    trained = Program.load(kept)
    assert trained.name == "prunefx:resnet20" and not any("quantize" in str(node.target) for node in trained.graph.nodes)


def test_a_trained_model_is_kept_under_a_name_that_fits_beside_an_output_of_the_longest_name(tmp_path):
    """An output folder's name may take all 255 bytes a name allows; the kept model's name adds its suffix."""
    from prunefx.compression import _keep_training

    saved = tmp_path / "staging.pt2"
    saved.write_bytes(b"trained")
    kept = _keep_training(saved, tmp_path / ("b" * 250))
    assert kept.read_bytes() == b"trained" and len(kept.name) <= 255 and kept.name.endswith(".model_train.pt2")


def test_a_trained_model_is_never_kept_over_another_failed_runs(tmp_path, monkeypatch):
    """Two runs with one output failing at once: a name the other run takes after this one looked is not
    written over. The stand-in for the other run: every look at a name finds it free."""
    from prunefx.compression import _keep_training

    theirs = tmp_path / "out.model_train.pt2"
    theirs.write_bytes(b"the other run's model")
    saved = tmp_path / "staging.pt2"
    saved.write_bytes(b"this run's model")
    monkeypatch.setattr(Path, "exists", lambda self: False)
    kept = _keep_training(saved, tmp_path / "out")
    assert theirs.read_bytes() == b"the other run's model"
    assert kept.name == "out.model_train-2.pt2" and kept.read_bytes() == b"this run's model" and not saved.is_file()


# --- a budget ------------------------------------------------------------------------------------

def test_a_budget_with_a_recipe_that_has_no_budget_pass_is_refused(capsys, tmp_path):
    code, out, err = run_cli(capsys, "compress", "prunefx:resnet20", "--recipe", "finetune", "--speedup", 2,
                             "--data", "fashion-mnist", "-o", tmp_path / "never")
    line = _one_line_error(code, out, err)
    assert "recipe finetune has no budget pass" in line and "budget-kd" in line
    assert not (tmp_path / "never").exists()


def test_a_latency_batch_above_the_training_batch_is_refused_before_training(capsys, tmp_path, monkeypatch):
    """The latency is timed on models cut from the training batch: a larger --batch could only fail after the
    recipe ran, so it is refused before any pass runs, in one line, nothing written."""
    from prunefx.passes.core.pipeline import Pipeline

    ran = []
    monkeypatch.setattr(Pipeline, "run", lambda *args, **kwargs: ran.append(args))
    code, out, err = run_cli(capsys, "compress", "prunefx:resnet20", "--recipe", "finetune", "--data", "fashion-mnist",
                             "--batch-size", 8, "--eval-batches", 1, "--batch", 16, "-o", tmp_path / "never")
    line = _one_line_error(code, out, err)
    assert "batch 16, larger than the training batch 8" in line and "--batch-size" in line
    assert not ran and not (tmp_path / "never").exists()


def test_neither_a_recipe_nor_a_budget_is_refused(capsys, tmp_path):
    code, out, err = run_cli(capsys, "compress", "prunefx:resnet20", "--data", "fashion-mnist", "-o", tmp_path / "never")
    assert "give --recipe" in _one_line_error(code, out, err)


def test_the_budget_replaces_the_recipes_own_in_every_budget_pass():
    from prunefx.named_recipes import load_named_recipe, with_budget
    recipe = with_budget(load_named_recipe("budget-kd"), latency_ms=3.5)
    config = recipe.pipeline.steps[0].config
    assert recipe.pipeline.names[0] == "choose_for_budget"
    assert (config["speedup"], config["latency_ms"]) == (None, 3.5)
    assert recipe.spec["passes"][0]["choose_for_budget"]["latency_ms"] == 3.5  # the report says what ran


@pytest.mark.slow
@pytest.mark.timing
def test_compress_to_a_speedup_reports_every_combination_and_charts_them(capsys, tmp_path, png_pixels):
    """End to end on measured latency (the zoo lane's timing part): width or INT8 alone, or both, at a modest
    budget. Any speed-up from 1.3x up is accepted (tolerance 1.0): this checks the plumbing and the report, not
    how close a search lands (benchmarks/latency_budget.py's job). A narrow window on a sub-millisecond model
    makes the search long and its length a matter of noise."""
    if not fashion_mnist.DEFAULT_ROOT.is_dir():
        pytest.skip(f"{fashion_mnist.DEFAULT_ROOT} missing: apt-get install dataset-fashion-mnist")
    recipe = write_recipe(tmp_path / "budget.yaml", {"name": "budget-tiny", "passes": [
        {"choose_for_budget": {"speedup": 2, "tolerance": 1.0, "dimensions": ["width", "int8"], "width": {"round_to": 4}}},
        {"distill": {"steps": 2, "lr": 0.001}}]})
    code, out, err = run_cli(capsys, "compress", "prunefx:resnet20", "--recipe", recipe, "--speedup", 1.3,
                             "--data", "fashion-mnist", "-o", tmp_path / "out", *fast_options())
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    budget = next(step["stats"] for step in report["passes"] if step["pass"] == "choose_for_budget")
    assert budget["budget"] == "a 1.3x speed-up"
    assert [row["dimensions"] for row in budget["candidates"]] == [["width"], ["int8"], ["width", "int8"]]
    met = [row for row in budget["candidates"] if row["met"]]
    assert budget["proxy"] == min(row["proxy"] for row in met) and all(row["speedup"] >= 1.3 for row in met)
    png_pixels(tmp_path / "out" / "budget_candidates.png")
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Budget: a 1.3x speed-up" in markdown and markdown.count("| width + int8 |") == 1


def test_a_half_precision_program_is_refused_before_any_work(capsys, tmp_path, monkeypatch):
    """compress trains (float16 weights lose small updates) and times on ONNX Runtime (float32 models): a float16
    .pt2 is refused in one line before its data is read, and compress() itself refuses one too."""
    half = capture(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).half(),
                   (torch.randn(BATCH, 1, 28, 28).half(),))
    saved = half.save(tmp_path / "half.pt2")
    read = []
    monkeypatch.setattr("prunefx.compress_inputs.load_data", lambda *args, **kwargs: read.append(args))
    code, out, err = run_cli(capsys, "compress", saved, "--recipe", "finetune", "--data", "fashion-mnist",
                             "--batch-size", BATCH, "-o", tmp_path / "never")
    assert "holds float16 tensors" in _one_line_error(code, out, err) and not read
    assert not (tmp_path / "never").exists()
    with pytest.raises(PrunefxError, match="compress trains and measures float32 models"):
        compress(half, None, None, tmp_path / "never", data="fashion-mnist")  # refused before either is read
    assert not (tmp_path / "never").exists()


def test_the_closing_line_names_the_files_written_and_the_budget_chart_only_where_drawn(tmp_path):
    from prunefx.cli.commands.compress import written

    for name in ("model.pt2", "model_train.pt2", "model.onnx", "report.json", "report.md", "accuracy_latency.png"):
        (tmp_path / name).write_bytes(b"x")
    assert written(tmp_path).endswith(f"{tmp_path / 'report.md'} and {tmp_path / 'accuracy_latency.png'}")
    (tmp_path / "budget_candidates.png").write_bytes(b"x")
    assert written(tmp_path).endswith(f"{tmp_path / 'accuracy_latency.png'} and {tmp_path / 'budget_candidates.png'}")
