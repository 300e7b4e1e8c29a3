"""Bad options, shapes, data and recipes: success or one line with exit 2 — never an internal error (3),
never a hang. Each named problem has its own test; hypothesis fuzzes the rest."""

from __future__ import annotations

import contextlib
import io
import math
import string
import textwrap
import time

import onnx
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from prunefx.cli import build_parser, main
from prunefx.graph import PrunefxError
from prunefx.graph.program_metadata import MAX_INPUT_ELEMENTS
from prunefx.models import parse_input_shape
from prunefx.passes import Pipeline, Result, remove_channels
from prunefx.passes.core.recipe import RecipeError, pipeline_from_spec, read_recipe
from prunefx.runtime import export_onnx
from prunefx.runtime.errors import OnnxExportError

RESNET20 = ["prunefx:resnet20", "--input-shape", "1x1x28x28"]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, words", [
    (["prune", *RESNET20, "--macs", "0.5", "--round-to", "0", "-o", "out"], "--round-to"),
    (["prune", *RESNET20, "--macs", "0.5", "--round-to", "-8", "-o", "out"], "--round-to"),
    (["prune", *RESNET20, "--macs", "nan", "-o", "out"], "finite"),
    (["prune", *RESNET20, "--macs", "0", "-o", "out"], "(0, 1]"),
    (["depth", *RESNET20, "--speedup", "nan", "-o", "out"], "finite"),
    (["depth", *RESNET20, "--speedup", "0.5", "-o", "out"], "--speedup"),
    (["bench", *RESNET20, "--threads", "100000"], "between 1 and 256"),
    (["compress", "prunefx:resnet20", "--data", "fashion-mnist", "--recipe", "finetune", "--seed", "-1", "-o", "out"],
     "--seed"),
    (["compress", "prunefx:resnet20", "--data", "fashion-mnist", "--recipe", "finetune", "--seed", str(2**64), "-o",
      "out"], "between 0 and 18446744073709551615"),  # past torch's 64-bit seeds: refused, not an internal error
    (["export", *RESNET20, "--opset", "5", "-o", "m.onnx"], "between 18 and"),
    (["export", *RESNET20, "--opset", "99", "-o", "m.onnx"], "between 18 and"),
    (["inspect", "prunefx:resnet20", "--input-shape", ""], "empty"),
    (["inspect", "prunefx:resnet20", "--input-shape", "1x3x100000x100000"], "2**28"),
    (["inspect", "prunefx:resnet20", "--input-shape", "1x1x99999999999999999999x28"], "not a positive integer"),
])
def test_bad_options_are_one_line_before_any_work(tmp_path, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    assert main(argv) == 2
    assert words in _one_line(capsys.readouterr().err)
    assert time.perf_counter() - started < 10  # no model was captured, no thread pool started
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_keep_node_is_refused_with_close_matches(tmp_path, capsys):
    status = main(["prune", *RESNET20, "--macs", "0.5", "--keep", "conv1_typo", "-o", str(tmp_path / "out")])
    line = _one_line(capsys.readouterr().err)
    assert status == 2 and "conv1_typo" in line and "not a node" in line
    assert not (tmp_path / "out").exists()


def test_export_refuses_opsets_the_exporter_cannot_write(tmp_path):
    program = pytest.importorskip("prunefx.loading").program_from_reference("prunefx:resnet20",
                                                                             input_shape="1x1x28x28")
    for opset in (5, 17, 99):
        with pytest.raises(OnnxExportError, match="outside what the exporter writes"):
            export_onnx(program, tmp_path / "m.onnx", opset=opset)
    assert not (tmp_path / "m.onnx").exists()


def _onnx_file(path, dims):
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)
    return path


def test_bench_refuses_an_onnx_file_with_absurd_input_dims(tmp_path, capsys):
    path = _onnx_file(tmp_path / "huge.onnx", [1, 3, 100000, 100000])
    assert main(["bench", str(path), "--runs", "1"]) == 2
    assert "2**28" in _one_line(capsys.readouterr().err)


def test_onnx_runtime_logs_do_not_leak(tmp_path, capfd):
    model = helper.make_model(helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]))
    path = tmp_path / "broken.onnx"
    onnx.save(model, path)
    assert main(["bench", str(path), "--runs", "1"]) == 2
    err = capfd.readouterr().err  # file-descriptor level: ONNX Runtime logs from C++, not through sys.stderr
    assert "cannot load" in _one_line(err) and "broken.onnx" in _one_line(err)


NAN_FACTORY = """
import torch

def factory():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    return model
"""


def test_nan_weights_are_an_error_not_a_parity_of_inf(tmp_path, capsys):
    factory = tmp_path / "nan.py"
    factory.write_text(textwrap.dedent(NAN_FACTORY))
    output = tmp_path / "m.onnx"
    assert main(["export", f"{factory}:factory", "--input-shape", "1x3x8x8", "-o", str(output)]) == 2
    assert "NaN or infinite" in _one_line(capsys.readouterr().err)
    assert not output.exists()


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory):
    """An ImageFolder with one truncated PNG and one text file named .jpg, and a flat folder likewise."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for index in range(4):
                pixels = (torch.rand(32, 32, 3, generator=generator) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / name / f"{index}.png")
    truncated = root / "train" / "a" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    return root, truncated


def test_a_truncated_image_in_a_calibration_folder_is_named(bad_images, tmp_path, capsys):
    root, truncated = bad_images
    status = main(["prune", "torchvision:resnet18", "--input-shape", "4x3x32x32", "--macs", "0.5",
                   "--calibrate", str(root), "--calibration-images", "16", "-o", str(tmp_path / "out")])
    line = _one_line(capsys.readouterr().err)
    assert status == 2 and str(truncated) in line and "remove or replace" in line
    assert not (tmp_path / "out").exists()


def test_a_text_file_posing_as_an_image_is_named(tmp_path, capsys):
    from PIL import Image

    for index in range(2):
        Image.new("RGB", (32, 32), (index * 50, 0, 0)).save(tmp_path / f"{index}.png")
    (tmp_path / "2.jpg").write_text("not an image")
    status = main(["prune", "torchvision:resnet18", "--input-shape", "1x3x32x32", "--macs", "0.5",
                   "--importance", "taylor", "--calibrate", str(tmp_path), "-o", str(tmp_path / "out")])
    assert status == 2 and "2.jpg" in _one_line(capsys.readouterr().err)


# ---- recipes ------------------------------------------------------------------------------------

def test_a_yaml_alias_bomb_fails_fast(tmp_path):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for index, name in enumerate("bcdefghi"):
        previous = "abcdefghi"[index]
        lines.append(f"{name}: &{name} [{','.join(['*' + previous] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\npasses: *i\n")
    assert bomb.stat().st_size < 600
    started = time.perf_counter()
    with pytest.raises(RecipeError, match="aliases"):
        read_recipe(bomb)
    assert time.perf_counter() - started < 2


def test_python_tags_and_huge_recipes_are_refused(tmp_path):
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("passes: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        read_recipe(tagged)
    huge = tmp_path / "huge.yaml"
    huge.write_text("passes: []\n# " + "x" * (2 << 20) + "\n")
    with pytest.raises(RecipeError, match="over 1 MiB"):
        read_recipe(huge)


@pytest.mark.parametrize("text", ["name: !!str tagged\npasses: [fold_batchnorm]\n",
                                  "passes:\n- remove_channels: {macs: 0.5, keep: !!set {stem: null}}\n"])
def test_safe_yaml_tags_are_refused_too(tmp_path, text):
    """'plain YAML, no aliases or tags': the safe loader still took every standard tag (`!!set` made a Python set
    of a node list)."""
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text(text)
    with pytest.raises(RecipeError, match="tags .* are not allowed in"):
        read_recipe(tagged)


def test_misspelled_top_level_keys_are_refused():
    with pytest.raises(RecipeError, match="unknown top-level key 'verfy'"):
        pipeline_from_spec({"verfy": "none", "passes": ["fold_batchnorm"]})


def test_a_bad_key_in_the_last_pass_is_refused_before_the_first_runs():
    ran = []

    def first(program, /, *, config=None):
        ran.append("first")
        return Result(program, modified=False)

    for bad in ({"macs": 0.5, "bogus": 1}, {"macs": 0.5, "round_to": "eight"}, {"macs": 0.5, "max_ratio": 2}):
        with pytest.raises(PrunefxError, match="step 2 \\('remove_channels'\\)"):
            Pipeline([first, (remove_channels, bad)])
    with pytest.raises(PrunefxError, match="step 2 \\('distill'\\): distill: unknown option.*epoch"):
        pipeline_from_spec({"passes": ["fold_batchnorm", {"distill": {"epoch": 1}}]})
    assert ran == []


# ---- fuzzing ------------------------------------------------------------------------------------

SHAPE_ALPHABET = string.digits + "xX ,-+._²\u00d7\n"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(SHAPE_ALPHABET, max_size=40), st.text(max_size=20),
                 st.lists(st.integers(-5, 10 ** 25), min_size=0, max_size=10).map(lambda d: "x".join(map(str, d)))))
def test_fuzz_input_shapes_parse_or_are_one_error(text):
    try:
        shape = parse_input_shape(text)
    except PrunefxError as error:
        assert "\n" not in str(error)
        return
    assert all(isinstance(d, int) and d >= 1 for d in shape)
    assert math.prod(shape) <= MAX_INPUT_ELEMENTS


NUMERIC_OPTIONS = {
    "prune": ["--macs", "--round-to", "--max-ratio", "--calibration-images", "--damping", "--opset"],
    "bench": ["--threads", "--runs", "--warmup"],
    "depth": ["--speedup", "--threads", "--runs", "--max-kernel-growth", "--calibration-images"],
    "compress": ["--batch-size", "--threads", "--runs", "--eval-batches", "--validation"],
}
NUMBERS = st.one_of(st.integers(-10 ** 20, 10 ** 20).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                    st.sampled_from(["", "nan", "-inf", "1e309", "0x10", "1_000", " 3", "٣", "0.5", "1", "8"]))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(NUMERIC_OPTIONS)).flatmap(
    lambda command: st.tuples(st.just(command), st.sampled_from(NUMERIC_OPTIONS[command]), NUMBERS)))
def test_fuzz_numeric_options_parse_or_are_one_line(case):
    command, option, value = case
    argv = {"compress": [command, "prunefx:resnet20", "--recipe", "finetune", "--data", "fashion-mnist"],
            "depth": [command, "prunefx:resnet20", "--blocks", "1"]}.get(command, [command, "prunefx:resnet20"])
    argv = [*argv, "-o", "out"] if command != "bench" else argv
    if command == "prune" and option != "--macs":
        argv += ["--macs", "0.5"]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            args = build_parser().parse_args([*argv, f"{option}={value}"])
        except SystemExit as exit_:
            assert exit_.code == 2
            _one_line(stderr.getvalue())
            return
    parsed = getattr(args, option.removeprefix("--").replace("-", "_"))  # accepted: a finite number, never nan
    assert isinstance(parsed, int | float) and math.isfinite(parsed), (option, value, parsed)


def test_a_number_option_that_may_be_none_takes_none_and_the_others_refuse_it(capsys):
    """`prunefx depth --tolerance` says "(none: accept)", as a recipe's `tolerance: null` does: the flag parsed
    every value as a number and refused it."""
    depth = ["depth", "prunefx:resnet20", "--speedup", "2", "-o", "out"]
    assert build_parser().parse_args([*depth, "--tolerance", "none"]).tolerance is None
    assert build_parser().parse_args([*depth, "--tolerance", "0.2"]).tolerance == 0.2
    with pytest.raises(SystemExit) as refused:  # prune's tolerance takes no None
        build_parser().parse_args(["prune", "prunefx:resnet20", "--speedup", "2", "--tolerance", "none", "-o", "out"])
    assert refused.value.code == 2 and "'none' is not a number" in _one_line(capsys.readouterr().err)


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(macs=st.sampled_from(["0.5", "0.01", "1", "nan", "2"]), round_to=st.sampled_from(["1", "8", "64", "0", "1000"]))
def test_fuzz_real_prune_runs_succeed_or_fail_in_one_line(tmp_path_factory, macs, round_to):
    output = tmp_path_factory.mktemp("fuzz") / "out"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        status = main(["prune", *RESNET20, "--macs", macs, "--round-to", round_to, "-o", str(output)])
    assert status in (0, 2), stderr.getvalue()
    if status == 2:
        _one_line(stderr.getvalue())
        assert not output.exists()


YAML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10 ** 12), st.floats(), st.text(max_size=12),
              st.sampled_from(["fold_batchnorm", "remove_channels", "distill", "macs", "passes", "full"])),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.one_of(st.text(max_size=10), st.sampled_from(
                                   ["passes", "verify", "name", "macs", "round_to", "epochs", "remove_channels",
                                    "fold_batchnorm", "distill", "keep"])), children, max_size=4)),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(YAML_VALUES)
def test_fuzz_recipe_documents_build_a_pipeline_or_are_one_error(document):
    try:
        pipeline = pipeline_from_spec(document)
    except PrunefxError as error:
        assert "\n" not in str(error)
        return
    assert isinstance(pipeline, Pipeline)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=string.printable + "&*!|>", max_size=200))
def test_fuzz_recipe_text_reads_or_is_one_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    path.write_text(text)
    try:
        spec = read_recipe(path)
        pipeline = pipeline_from_spec(spec)
    except PrunefxError as error:
        assert "\n" not in str(error)
        return
    assert isinstance(pipeline, Pipeline)


@pytest.mark.parametrize("text", ["0x_", "0b_", "passes:\n  - remove_channels: {macs: -0x_}\n"])
def test_a_number_yaml_cannot_read_is_one_error_in_a_recipe_and_a_data_yaml(tmp_path, text):
    """PyYAML reads `0x_` (a prefix, then only underscores) with a bare ValueError: found by the fuzz above."""
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match="is not a number"):
        read_recipe(path)
    from prunefx.data.dataset_files import load_yaml

    with pytest.raises(PrunefxError, match="is not a number"):
        load_yaml(text.encode(), path, "YOLO data file")


def test_recipe_documents_round_trip_through_yaml(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "verify": "shapes", "passes": [{"remove_channels": {"macs": 0.5}}]}))
    assert pipeline_from_spec(read_recipe(path)).names == ["remove_channels"]
