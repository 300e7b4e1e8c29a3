"""The `prunefx` command line, driven through prunefx.cli.main(argv) (and once through the real script).

Deliberate errors must exit with status 2 and print exactly one line to stderr, never a traceback.
"""

import importlib
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision

from prunefx.cli import EXIT_USER_ERROR, main
from prunefx.data import fashion_mnist
from prunefx.graph import Program, PrunefxError, capture, count
from prunefx.models import build_model
from prunefx.reports.seconds import WRITE_STAGE
from prunefx.runtime import OnnxRuntimeSession, export_onnx

SHAPE = "1x3x64x64"

MODEL_FILE = textwrap.dedent("""
    import torch
    from torch import nn


    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


    def wider():
        torch.manual_seed(1)
        return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            if y.mean().item() > 0:  # data-dependent Python control flow: torch.export refuses it
                return y * 2
            return y - 1


    def data_dependent():
        return Gate()


    def zero_head():
        model = build()
        nn.init.zeros_(model[-1].weight)  # as timm's MLP-Mixers start: every output 0 until trained
        nn.init.zeros_(model[-1].bias)
        return model
""")


def _load_factories(path: Path):
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "models.py"
    path.write_text(MODEL_FILE)
    return path


@pytest.fixture(scope="module")
def factories(model_file):
    return _load_factories(model_file)


def run_cli(capsys, *argv: str):
    """main(argv) -> (exit code, stdout, stderr)."""
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, command: str) -> str:
    assert code == EXIT_USER_ERROR, (code, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"prunefx {command}: error: "), lines[0]
    assert out == ""
    return lines[0]


def test_the_command_line_reads_its_arguments_without_importing_torchvision_or_timm():
    """They take 2 s of a start (torchvision imports torch's compiler); a command imports them where it uses
    them, so that a command's --help, a bad argument and the commands that load no such model answer sooner."""
    code = ("import sys; from prunefx.cli import main; status = main(['prune', '--help']); "
            "print(status, sorted({m.split('.')[0] for m in sys.modules} & {'torchvision', 'timm', 'transformers'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--speedup" in done.stdout and done.stdout.strip().endswith("0 []"), done.stdout[-300:]


def test_inspect_reads_its_arguments_without_importing_the_onnx_exporter():
    """The exporter's packages (onnx_ir, onnxscript) take half a second to import; inspect exports nothing, and
    the --opset bounds every exporting command checks live apart from them (runtime/onnx/opsets.py)."""
    code = ("import sys; from prunefx.cli import main; status = main(['inspect', '--help']); "
            "print(status, sorted({m.split('.')[0] for m in sys.modules} & {'onnx_ir', 'onnxscript'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().endswith("0 []"), done.stdout[-300:]


@pytest.mark.parametrize("argv, status, said", [
    (["--help"], 0, "demo"),  # every command listed, with what it does
    ([], EXIT_USER_ERROR, "the following arguments are required: COMMAND"),
    (["-v", "prnue", "x"], EXIT_USER_ERROR, "invalid choice: 'prnue'"),
    (["-q", "-v"], EXIT_USER_ERROR, "not allowed with argument"),
    # an option the command does not take is said as the command's own error, like its other argument errors
    (["bench", "model.onnx", "--bogus"], EXIT_USER_ERROR, "prunefx bench: error: unrecognized arguments: --bogus"),
])
def test_the_command_list_and_its_errors_import_no_torch(argv, status, said):
    """`prunefx --help` and a mistyped command answer without torch's seconds of imports."""
    code = (f"import sys; from prunefx.cli import main; status = main({argv!r}); "
            "print(status, sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'onnx'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip().endswith(f"{status} []"), (done.stdout[-300:], done.stderr[-300:])
    assert said in done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == (0 if status == 0 else 1), done.stderr


# --- inspect -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet18_eval():
    return torchvision.models.resnet18(weights=None).eval()


def test_inspect_json_counts_resnet18(capsys, resnet18_eval):
    code, out, err = run_cli(capsys, "inspect", "torchvision:resnet18", "--input-shape", SHAPE, "--json")
    assert code == 0, err
    info = json.loads(out)  # the whole of stdout is one JSON object
    assert info["params"] == sum(p.numel() for p in resnet18_eval.parameters()) == 11_689_512
    program = capture(resnet18_eval, torch.randn(1, 3, 64, 64))
    assert info["macs"] == count(program).macs
    assert info["input_shapes"] == [[1, 3, 64, 64]]
    assert info["output_shapes"] == [[1, 1000]]
    assert info["operators"]["aten.conv2d.default"] == 20


def test_inspect_nodes_lists_the_names_keep_takes(capsys, tmp_path):
    """`--keep NODE` pointed at `prunefx inspect` for node names, which it did not print: --nodes lists them, with
    the module each runs in, and a name read off the list is one --keep accepts."""
    code, out, err = run_cli(capsys, "inspect", "torchvision:resnet18", "--input-shape", SHAPE, "--nodes")
    assert code == 0, err
    rows = re.findall(r"^  (\S+)  (aten\.\S+)  (\S+)$", out, re.MULTILINE)
    convolutions = [(name, module) for name, operator, module in rows if operator == "aten.conv2d.default"]
    assert len(convolutions) == 20 and ("conv2d", "conv1") in convolutions and ("conv2d_1", "layer1.0.conv1") in convolutions
    code, _, err = run_cli(capsys, "prune", "torchvision:resnet18", "--input-shape", SHAPE, "--macs", 0.5,
                           "--keep", "conv2d_1", "-o", tmp_path / "out")
    assert code == 0, err
    code, _, err = run_cli(capsys, "prune", "torchvision:resnet18", "--input-shape", SHAPE, "--macs", 0.5,
                           "--keep", "layer1.0.conv1", "-o", tmp_path / "typo")
    assert code == 2 and "names the module 'layer1.0.conv1', where it takes nodes: that module's are conv2d_1" in err
    code, _, err = run_cli(capsys, "prune", "torchvision:resnet18", "--input-shape", SHAPE, "--macs", 0.5,
                           "--keep", "conv2d_99", "-o", tmp_path / "typo")
    assert code == 2 and "inspect MODEL --nodes" in err


def test_inspect_table_lists_operator_counts(capsys):
    code, out, err = run_cli(capsys, "inspect", "torchvision:resnet18", "--input-shape", SHAPE)
    assert code == 0, err
    operators = {name: int(times) for times, name in re.findall(r"^\s+(\d+)\s+(aten\.\S+)$", out, re.MULTILINE)}
    assert operators["aten.conv2d.default"] == 20
    assert operators["aten.linear.default"] == 1
    assert re.search(r"^params\s+11,689,512 \(11\.69 M\)$", out, re.MULTILINE)


def test_inspect_file_factory_with_weights(capsys, tmp_path, model_file, factories):
    weights = tmp_path / "weights.pth"
    torch.save(factories["build"]().state_dict(), weights)
    code, out, err = run_cli(capsys, "inspect", f"{model_file}:build", "--weights", weights,
                             "--input-shape", SHAPE, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["params"] == sum(p.numel() for p in factories["build"]().parameters())
    assert info["output_shapes"] == [[1, 10]]


def test_inspect_file_factory_with_mismatched_weights(capsys, tmp_path, model_file, factories):
    weights = tmp_path / "other.pth"
    torch.save(factories["wider"]().state_dict(), weights)
    code, out, err = run_cli(capsys, "inspect", f"{model_file}:build", "--weights", weights, "--input-shape", SHAPE)
    line = assert_one_line_error(code, out, err, "inspect")
    assert "do not fit" in line and "other.pth" in line


# --- deliberate errors ---------------------------------------------------------------------------------

BAD_INPUTS = {
    # name: (argv builder taking (tmp_path, model_file), substring the message must contain)
    "unknown model": (lambda tmp, models: ["inspect", "torchvision:resnet181"], "unknown torchvision model"),
    "malformed shape": (lambda tmp, models: ["inspect", "torchvision:resnet18", "--input-shape", "1x3xabc"],
                        "'abc' is not a positive integer"),
    "missing pt2": (lambda tmp, models: ["inspect", tmp / "missing.pt2"], "not found"),
    "corrupt pt2": (lambda tmp, models: ["inspect", tmp / "corrupt.pt2"], "not a .pt2 archive"),
    "missing onnx": (lambda tmp, models: ["bench", tmp / "missing.onnx"], "no such ONNX file"),
    "wrong input shape": (lambda tmp, models: ["inspect", f"{models}:build", "--input-shape", "1x3x64"],
                          "does not run on input shape 1x3x64"),
    "prune past reach": (lambda tmp, models: ["prune", f"{models}:wider", "--input-shape", SHAPE, "--macs", "0.01",
                                              "-o", tmp / "never"], "cannot reach macs=0.01"),
    "prune not a fraction": (lambda tmp, models: ["prune", f"{models}:wider", "--input-shape", SHAPE, "--params", "2",
                                                  "-o", tmp / "never"], "'params' must be a fraction in (0, 1]"),
    "missing calibration": (lambda tmp, models: ["prune", f"{models}:wider", "--input-shape", SHAPE, "--macs", "0.5",
                                                 "--importance", "fisher", "--calibrate", tmp / "nowhere",
                                                 "-o", tmp / "never"], "unknown calibration data"),
    "will not export": (lambda tmp, models: ["export", f"{models}:data_dependent", "--input-shape", SHAPE,
                                             "-o", tmp / "never.onnx"], "could not capture model"),
    "unknown calibration data": (lambda tmp, models: ["prune", f"{models}:wider", "--input-shape", SHAPE, "--macs",
                                                      "0.5", "--calibrate", "mnist", "-o", tmp / "never"],
                                 "unknown calibration data 'mnist'"),
    "calibration data of another shape": (lambda tmp, models: ["prune", f"{models}:wider", "--input-shape", SHAPE,
                                                               "--macs", "0.5", "--calibrate", "fashion-mnist",
                                                               "-o", tmp / "never"],
                                          "but the model takes 3x64x64: capture it at 1x3x28x28 (--input-shape; a saved .pt2 keeps the "
                                          "shape it was captured at)"),
    "compensate without data": (lambda tmp, models: ["prune", f"{models}:wider", "--input-shape", SHAPE, "--macs",
                                                     "0.5", "--compensate", "-o", tmp / "never"],
                                "--compensate needs calibration images"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, model_file, case):
    (tmp_path / "corrupt.pt2").write_bytes(np.random.default_rng(0).bytes(4096))
    build_argv, expected = BAD_INPUTS[case]
    argv = build_argv(tmp_path, model_file)
    code, out, err = run_cli(capsys, *argv)
    line = assert_one_line_error(code, out, err, argv[0])
    assert expected in line
    assert not (tmp_path / "never.onnx").exists() and not (tmp_path / "never").exists()


# --- prune ---------------------------------------------------------------------------------------------

REPORT_KEYS = {"params_before", "params_after", "macs_before", "macs_after", "groups", "blocked", "parity"}


@pytest.mark.slow
def test_prune_writes_model_onnx_and_report(capsys, tmp_path, schema_errors):
    code, out, _ = run_cli(capsys, "prune", "torchvision:resnet18", "--input-shape", SHAPE, "--macs", "0.5",
                           "--round-to", "16", "-o", tmp_path / "out")
    assert code == 0, out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert REPORT_KEYS <= set(report) and not schema_errors(report)  # the MACs route's published shape
    assert report["budget"] is None and report["route"] is None and report["linearize_blocks"] is None
    assert report["macs_after"] == pytest.approx(0.5 * report["macs_before"], rel=0.03)
    assert report["params_after"] < report["params_before"]
    assert all(g["width_after"] % 16 == 0 for g in report["groups"] if g["width_after"] != g["width_before"])
    assert report["parity"]["relative"] < 1e-4
    assert "MACs" in out and "parity" in out

    code, out, _ = run_cli(capsys, "inspect", tmp_path / "out" / "model.pt2", "--json")
    assert code == 0 and json.loads(out)["macs"] == report["macs_after"]
    session = OnnxRuntimeSession(tmp_path / "out" / "model.onnx")
    assert session.run(np.zeros((1, 3, 64, 64), np.float32))[0].shape == (1, 1000)


@pytest.mark.slow
@pytest.mark.zoo  # heavy end-to-end: `make test-zoo` (keeps `make test` within 20 minutes)
def test_prune_with_fisher_on_real_images_reports_them(capsys, tmp_path):
    from prunefx.assets import imagenet_sample_images

    folder = imagenet_sample_images()[0][0].parent
    code, out, _ = run_cli(capsys, "prune", "torchvision:mobilenet_v2", "--input-shape", SHAPE, "--params", "0.6",
                           "--importance", "fisher", "--calibrate", folder, "--no-compensate", "--no-recalibrate",
                           "--local", "-o", tmp_path)
    assert code == 0, out
    report = json.loads((tmp_path / "report.json").read_text())
    # torchvision names no statistics: ImageNet's, which its pretrained weights were trained with
    assert report["calibration"] == (f"100 images from {folder}, normalised with mean 0.485, 0.456, 0.406, "
                                     "std 0.229, 0.224, 0.225")
    assert report["compensation"] is None and report["recalibrate_batchnorm"] is None
    assert report["importance"] == "fisher" and report["ranking"] == "local"
    assert report["params_after"] == pytest.approx(0.6 * report["params_before"], rel=0.03)


needs_fashion_mnist = pytest.mark.skipif(not fashion_mnist.DEFAULT_ROOT.is_dir(),
                                         reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist")


def _saved_mlp(tmp_path):
    """A 784-64-10 MLP without batch norms, saved as a Program: one prunable group, read by the last layer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    return capture(model.eval(), torch.randn(1, 1, 28, 28), name="mlp").save(tmp_path / "mlp.pt2")


@pytest.mark.slow
@needs_fashion_mnist
def test_prune_of_a_model_without_batch_norms_does_not_claim_to_have_recalibrated_them(capsys, tmp_path, one_thread):
    """The first line listed "batch norms recalibrated" whenever the recalibration step ran, also where it found none."""
    saved = _saved_mlp(tmp_path)
    code, out, err = run_cli(capsys, "prune", saved, "--macs", "0.5", "--round-to", "4", "--calibrate",
                             "fashion-mnist", "--calibration-images", "32", "-o", tmp_path / "out")
    assert code == 0, err
    assert "no batch norms to recalibrate" in out and "batch norms recalibrated" not in out
    assert "(obs, global, compensated)" in out.splitlines()[0]


@pytest.mark.slow
@needs_fashion_mnist
def test_prune_names_a_layer_with_fewer_calibration_rows_than_columns(capsys, tmp_path, one_thread):
    """32 images give the last layer 32 rows for its 64 columns: obs scores its channels without compensation
    (any compensation would fit 32 rows exactly), and the report and the summary say so."""
    saved = _saved_mlp(tmp_path)
    code, out, err = run_cli(capsys, "prune", saved, "--macs", "0.5", "--round-to", "4", "--calibrate",
                             "fashion-mnist", "--calibration-images", "32", "-o", tmp_path / "out")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["importance_uncompensated"] == [{"layer": "3.weight", "rows": 32, "columns": 64}]
    assert "scored without compensation: 3.weight (fewer calibration rows than input columns: 32 for 64)" in out


def test_prune_names_the_groups_its_criterion_could_not_score(capsys, tmp_path, one_thread):
    """`--importance bn` on a model without batch norms scores every group by l2: the first line said "(bn, global)"."""
    saved = _saved_mlp(tmp_path)
    code, out, err = run_cli(capsys, "prune", saved, "--macs", "0.5", "--round-to", "4", "--importance", "bn",
                             "-o", tmp_path / "out")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    groups = len(report["groups"])
    assert report["importance_fallback_groups"] == groups == 1
    assert f"(bn; l2 for {groups} of {groups} groups, global)" in out.splitlines()[0]


def test_prune_that_removes_nothing_does_not_claim_a_compensation(capsys, tmp_path, one_thread):
    """At 1.0 of the MACs no channel goes and no layer is updated: the report said compensated, and the summary
    'compensated 0 layers: ... 0 -> 0 (mean over layers)'."""
    code, out, err = run_cli(capsys, "prune", "prunefx:resnet20", "--macs", "1.0", "--calibrate", "fashion-mnist",
                             "--calibration-images", "32", "-o", tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["macs_after"] == report["macs_before"]
    assert report["compensated"] is False and report["compensation"]["compensated"] == []
    assert "compensated" not in out


def test_prune_calibrate_compensates_recalibrates_and_reports_both(capsys, tmp_path, one_thread):
    # Calibration data and no other choice: the defaults take the best one-shot path (obs, compensation,
    # batch-norm recalibration)
    code, out, err = run_cli(capsys, "prune", "prunefx:resnet20", "--macs", "0.5", "--round-to", "4",
                             "--calibrate", "fashion-mnist", "-o", tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["calibration"] == "256 images from fashion-mnist (training images, shuffled)"
    assert report["importance"] == "obs" and report["compensated"] and report["macs_after"] == pytest.approx(0.5 * report["macs_before"], rel=0.03)
    assert report["importance_uncompensated"] == []  # 256 rows for the classifier's 64 columns, and more elsewhere
    recalibration = report["recalibrate_batchnorm"]
    assert recalibration["recalibrated"] == recalibration["batch_norms"] == 21 and recalibration["images"] == 256
    compensation = report["compensation"]
    compensated = len(compensation["compensated"])  # every layer that lost inputs (obs spares some groups)
    assert compensated >= 10 and compensation["skipped"] == [] and compensation["images"] == 256
    assert all(layer["error_with"] <= layer["error_without"] for layer in compensation["compensated"])
    assert report["parity"]["relative"] < 1e-4
    assert f"compensated {compensated} layers" in out and "recalibrated 21 of 21 batch norms on 256 images" in out
    seconds = report["seconds"]  # where the time went: each stage once, each pass inside the prune
    passes = seconds["prune: remove_channels"] + seconds["prune: recalibrate_batchnorm"]
    assert 0 < passes <= seconds["prune"] + 1e-3 and seconds["calibration"] > 0
    assert sum(seconds[stage] for stage in ("load", "calibration", "prune", WRITE_STAGE)) <= seconds["total"] + 1e-3
    parts = [f"prune: remove_channels: {part}" for part in ("channel groups", "scoring", "choice", "compensation",
                                                           "slicing")]
    assert sum(seconds[part] for part in parts) <= seconds["prune: remove_channels"] + 3e-3  # the pass's own parts
    assert seconds["prune: remove_channels: scoring: elimination"] > 0

    # the saved program carries the recalibrated statistics: recalibrating it again changes nothing
    from prunefx.data.calibration import calibration_data
    from prunefx.graph import Program
    from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm

    saved = Program.load(tmp_path / "model.pt2")
    batches = calibration_data("fashion-mnist", saved.example_inputs[0], 256).batches
    assert not recalibrate_batchnorm(saved, config={"data": batches}).modified


@needs_fashion_mnist
def test_calibration_data_fits_the_captured_input(tmp_path):
    from torchvision.io import write_png

    from prunefx.data.calibration import calibration_data, noise_batches

    rgb = calibration_data("fashion-mnist", torch.zeros(8, 3, 28, 28), 20)  # gray repeated for an RGB model
    assert len(rgb.batches) == 2 and rgb.images == 16 and rgb.batches[0][0].shape == (8, 3, 28, 28)
    assert torch.equal(rgb.batches[0][0][:, 0], rgb.batches[0][0][:, 2])
    gray = calibration_data("fashion-mnist", torch.zeros(8, 1, 28, 28), 20)
    torch.testing.assert_close(gray.batches[0][0][:, 0], rgb.batches[0][0][:, 0])  # the same images

    pixels = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for index, image in enumerate(pixels):
        for folder in (tmp_path / "tree" / "train" / f"class{index % 2}", tmp_path / "flat"):
            folder.mkdir(parents=True, exist_ok=True)
            write_png(image, str(folder / f"{index}.png"))
    tree = calibration_data(str(tmp_path / "tree"), torch.zeros(2, 3, 32, 32), 4)
    flat = calibration_data(str(tmp_path / "flat"), torch.zeros(2, 3, 32, 32), 4)
    for data in (tree, flat):
        assert [b[0].shape for b in data.batches] == [(2, 3, 32, 32)] * 2 and data.images == 4
    with pytest.raises(PrunefxError, match="the model takes 2x1x32x32"):
        calibration_data(str(tmp_path / "tree"), torch.zeros(2, 1, 32, 32), 4)
    # a Program captured in half precision is given its own dtype: the same images, rounded
    half = calibration_data(str(tmp_path / "flat"), torch.zeros(2, 3, 32, 32, dtype=torch.float16), 4)
    assert [b[0].dtype for b in half.batches] == [torch.float16] * 2
    assert torch.equal(half.batches[0][0], flat.batches[0][0].half())
    gray_half = calibration_data("fashion-mnist", torch.zeros(8, 1, 28, 28, dtype=torch.bfloat16), 20)
    assert torch.equal(gray_half.batches[0][0], gray.batches[0][0].bfloat16())
    noise = noise_batches(torch.zeros(2, 3, 4, 4, dtype=torch.bfloat16), 2)
    assert torch.equal(noise[1][0], noise_batches(torch.zeros(2, 3, 4, 4), 2)[1][0].bfloat16())


def test_calibration_data_says_which_images_fill_its_last_batch_again():
    """imagenet-sample's 20 images in batches of 8 end with 4 copies of the last ones (labelled as padding): every
    pass reads 24 images, the description said 20 and no more."""
    from prunefx.data.calibration import calibration_data

    if importlib.util.find_spec("foolbox") is None:
        pytest.skip("foolbox (the 20 offline ImageNet images) is not installed")
    data = calibration_data("imagenet-sample", torch.zeros(8, 3, 64, 64), 256)
    last = data.batches[-1][0]
    assert len(data.batches) == 3 and data.images == 24
    assert torch.equal(last[4:], last[:4])  # copies of the last ones
    assert data.description.startswith("20 images from imagenet-sample")
    assert "and 4 copies of its last ones filling the last batch" in data.description
    exact = calibration_data("imagenet-sample", torch.zeros(4, 3, 64, 64), 256)
    assert exact.images == 20 and "copies" not in exact.description


# --- export --------------------------------------------------------------------------------------------

def test_export_writes_a_checked_file_with_parity_and_the_given_weights(capsys, tmp_path, model_file, factories):
    trained = factories["build"]()
    with torch.no_grad():  # weights unlike the factory's own, so the test sees whether --weights took
        for tensor in trained.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)
    weights = tmp_path / "trained.pth"
    torch.save(trained.state_dict(), weights)
    output = tmp_path / "model.onnx"

    code, out, err = run_cli(capsys, "export", f"{model_file}:build", "--weights", weights,
                             "--input-shape", SHAPE, "-o", output)
    assert code == 0, err
    onnx.checker.check_model(onnx.load(output))
    parity = re.search(r"^parity torch vs ONNX Runtime: max abs error (\S+) .*relative (\S+)\)$", out, re.MULTILINE)
    assert parity, out
    assert float(parity.group(2)) < 1e-4

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    got = OnnxRuntimeSession(output).run(x)[0]
    with torch.no_grad():
        want = trained.eval()(x).numpy()
        untrained = factories["build"]().eval()(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.abs(got - untrained).max() > 1e-2  # the file holds the loaded weights, not the factory's


def test_a_parity_that_compares_only_zeros_says_so(capsys, tmp_path, model_file, factories):
    """A model whose outputs are all zero (its head initialised to zero) matches any file that ends in that head:
    prune and export say the parity compared nothing, and why, rather than a relative error of 0. A model whose
    outputs move with its input is compared as ever."""
    with torch.no_grad():
        assert not factories["zero_head"]()(torch.randn(2, 3, 64, 64)).any()  # the oracle: zeros whatever the input
    code, out, err = run_cli(capsys, "prune", f"{model_file}:zero_head", "--input-shape", SHAPE, "--channels", "0.5", "--round-to", "1",
                             "-o", tmp_path / "pruned")
    assert code == 0, err
    assert "parity torch vs ONNX Runtime: nothing compared (the outputs barely change with the input)" in out
    assert "the same outputs, within 0.0001 of their magnitude, for a second, random input" in err and "--weights" in err
    parity = json.loads((tmp_path / "pruned" / "report.json").read_text())["parity"]
    assert parity["outputs_constant"] is True and parity["output_scale"] == 0

    code, out, err = run_cli(capsys, "export", f"{model_file}:zero_head", "--input-shape", SHAPE,
                             "-o", tmp_path / "model.onnx")
    assert code == 0 and "nothing compared" in out and "for a second, random input" in err, (out, err)
    code, out, err = run_cli(capsys, "export", f"{model_file}:build", "--input-shape", SHAPE,
                             "-o", tmp_path / "other.onnx")
    assert code == 0 and "nothing compared" not in out and "same outputs" not in err, (out, err)


# --- saved programs and bench --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_program(tmp_path_factory, factories):
    model = factories["build"]().eval()
    path = tmp_path_factory.mktemp("programs") / "x.pt2"
    capture(model, torch.randn(1, 3, 64, 64), name="x").save(path)
    return path, sum(p.numel() for p in model.parameters())


def test_inspect_saved_program(capsys, saved_program):
    path, params = saved_program
    code, out, err = run_cli(capsys, "inspect", path, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["params"] == params
    assert info["input_shapes"] == [[1, 3, 64, 64]]


def test_inspect_saved_program_refuses_another_shape(capsys, saved_program):
    code, out, err = run_cli(capsys, "inspect", saved_program[0], "--input-shape", "1x3x32x32")
    assert "cannot change its input shape" in assert_one_line_error(code, out, err, "inspect")


def test_bench_saved_program_with_torch(capsys, saved_program):
    code, out, err = run_cli(capsys, "bench", saved_program[0], "--backend", "torch", "--runs", "3",
                             "--warmup", "1", "--threads", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["backend"] == "torch" and report["runs"] == 3
    latency = report["latency"]
    assert latency["runs"] == 3 and latency["threads"] == 1
    assert 0 < latency["min_ms"] <= latency["median_ms"] <= latency["p90_ms"] <= latency["p99_ms"]


def test_bench_onnx_vs_onnx(capsys, tmp_path, factories):
    files = []
    for name in ("build", "wider"):
        program = capture(factories[name]().eval(), torch.randn(1, 3, 64, 64), name=name)
        files.append(export_onnx(program, tmp_path / f"{name}.onnx").path)
    code, out, err = run_cli(capsys, "bench", files[0], "--vs", files[1], "--runs", "5", "--warmup", "1",
                             "--threads", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["threads"] == 1 and report["a"]["threads"] == 1 and report["b"]["threads"] == 1
    assert report["spinning"] is True  # ONNX Runtime's default
    assert report["a"]["runs"] == report["b"]["runs"] == 5
    assert report["speedup"] == pytest.approx(report["a"]["median_ms"] / report["b"]["median_ms"], rel=0, abs=1e-9)
    for side in ("a", "b"):
        assert report[side]["median_ms"] <= report[side]["p90_ms"] <= report[side]["p99_ms"]


def test_bench_without_thread_spinning_says_so(capsys, tmp_path, factories):
    program = capture(factories["build"]().eval(), torch.randn(1, 3, 32, 32), name="build")
    path = export_onnx(program, tmp_path / "build.onnx").path
    code, out, err = run_cli(capsys, "bench", path, "--runs", "3", "--warmup", "0", "--no-spinning", "--json")
    assert code == 0, err
    assert json.loads(out)["spinning"] is False
    code, out, err = run_cli(capsys, "bench", path, "--runs", "3", "--warmup", "0", "--no-spinning")
    assert code == 0, err
    assert "(not spinning)" in out
    code, out, err = run_cli(capsys, "bench", path, "--backend", "torch", "--no-spinning")
    assert "--no-spinning applies to --backend ort" in assert_one_line_error(code, out, err, "bench")


def test_bench_json_is_strict_json_when_a_speed_up_is_infinite(capsys, tmp_path, factories, monkeypatch):
    from prunefx.runtime.backends.ort import OnnxRuntimeBackend
    program = capture(factories["build"]().eval(), torch.randn(1, 3, 32, 32), name="build")
    path = export_onnx(program, tmp_path / "build.onnx").path
    monkeypatch.setattr(OnnxRuntimeBackend, "bench", lambda self, models, settings: {"speedup": math.inf, "ratio": math.nan})
    code, out, err = run_cli(capsys, "bench", str(path), "--vs", str(path), "--runs", "3", "--json")
    assert code == 0, err
    report = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert report["speedup"] is None and report["ratio"] is None


def test_bench_rejects_zero_runs(capsys, saved_program):
    code, out, err = run_cli(capsys, "bench", saved_program[0], "--runs", "0")
    assert "--runs" in assert_one_line_error(code, out, err, "bench")


# --- the installed entry point -------------------------------------------------------------------------

def _entry_point() -> list[str]:
    script = Path(sys.executable).with_name("prunefx")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "prunefx"]


@pytest.mark.slow
@pytest.mark.zoo  # heavy end-to-end: `make test-zoo` (keeps `make test` within 20 minutes)
def test_installed_script_runs_and_fails_cleanly(tmp_path, model_file):
    environment = {key: value for key, value in os.environ.items() if key != "PRUNEFX_DEBUG"}
    ok = subprocess.run([*_entry_point(), "inspect", f"{model_file}:build", "--input-shape", SHAPE, "--json"],
                        capture_output=True, text=True, timeout=120, env=environment)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["output_shapes"] == [[1, 10]]

    # A real process also shows anything written straight to file descriptor 2, which capsys cannot see.
    bad = subprocess.run([*_entry_point(), "export", f"{model_file}:data_dependent", "--input-shape", SHAPE,
                          "-o", str(tmp_path / "never.onnx")], capture_output=True, text=True, timeout=120,
                         env=environment)
    assert bad.returncode == EXIT_USER_ERROR
    assert bad.stdout == "" and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip("\n").splitlines()) == 1, bad.stderr


@pytest.mark.slow
@pytest.mark.zoo  # heavy end-to-end: `make test-zoo` (keeps `make test` within 20 minutes)
@needs_fashion_mnist
def test_prune_with_data_keeps_an_explicit_choice(capsys, tmp_path, one_thread):
    code, out, err = run_cli(capsys, "prune", "prunefx:resnet20", "--macs", "0.5", "--round-to", "4",
                             "--calibrate", "fashion-mnist", "--calibration-images", "64", "--importance", "l2",
                             "--no-recalibrate", "-o", tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["importance"] == "l2" and not report["compensated"] and report["recalibrate_batchnorm"] is None


def test_prune_flags_are_remove_channels_options():
    """Every pass-option flag of `prune` is made from remove_channels' config field: same default, same
    choices, and a value out of the field's range is refused while parsing."""
    import argparse
    import dataclasses

    from prunefx.cli.arguments import prune
    from prunefx.passes.prune_to_budget import PruneToBudgetConfig
    from prunefx.passes.remove_channels import RemoveChannelsConfig

    parser = argparse.ArgumentParser()
    prune.add_arguments(parser)
    actions = {}
    for action in parser._actions:  # the flag named after the field (--global/--local are shorthands)
        actions.setdefault(action.dest, action)
    fields = {field.name: field for field in dataclasses.fields(RemoveChannelsConfig)}
    cli_fields = {name for name, field in fields.items() if field.metadata["cli"]}
    assert cli_fields == set(prune.TARGETS) | set(prune.OPTIONS)
    budgets = {field.name: field for field in dataclasses.fields(PruneToBudgetConfig)}
    assert actions["round_to"].default is budgets["round_to"].default is None  # the budget backend's multiple
    for name in cli_fields - set(prune.WIDTHS):
        field = fields[name]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        assert actions[name].default == default == parser.get_default(name), name
        assert actions[name].choices == field.metadata["choices"], name
        assert field.metadata["help"] in actions[name].help, name
    budgets = {field.name: field for field in dataclasses.fields(PruneToBudgetConfig)}
    for name in prune.BUDGETS:  # --speedup and --latency-ms are prune_to_budget's
        assert actions[name].default is None and budgets[name].metadata["help"] in actions[name].help
    with pytest.raises(SystemExit):
        parser.parse_args(["--speedup", "0.9", "-o", "x"])  # a speed-up is > 1 in the field
    with pytest.raises(SystemExit):
        parser.parse_args(["--macs", "0.5", "--speedup", "2", "-o", "x"])  # one target
    with pytest.raises(SystemExit):
        parser.parse_args(["--macs", "0.5", "--max-ratio", "1.0", "-o", "x"])  # [0, 1) in the field
    assert parser.parse_args(["--macs", "0.5", "-o", "x"]).compensate is None  # decided by the data given


@pytest.mark.slow
@pytest.mark.timing
def test_prune_to_a_measured_speedup_reports_its_search(capsys, tmp_path, one_thread):
    # 64x64 images: compute, not per-operator overhead, sets the latency, so pruning surely pays (this checks
    # the plumbing; how close budgets land is benchmarks/latency_budget.py's job)
    code, out, err = run_cli(capsys, "prune", "prunefx:resnet20", "--input-shape", "1x1x64x64", "--speedup", "1.3",
                             "--round-to", "8", "--tolerance", "1.0", "--threads", "1", "--runs", "10",
                             "-o", tmp_path / "out")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    budget = report["budget"]
    assert budget["met"] and budget["speedup"] >= 1.3 and budget["budget"] == "a 1.3x speed-up"
    assert report["macs_after"] < report["macs_before"] and report["parity"]["relative"] < 1e-4
    assert len(budget["trace"]) >= 1 and "budget a 1.3x speed-up met" in out


@pytest.mark.slow
def test_a_budget_out_of_reach_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path):
    code, out, err = run_cli(capsys, "prune", "prunefx:resnet20", "--speedup", "50", "--threads", "1",
                             "--runs", "3", "--max-ratio", "0.5", "--max-candidates", "2", "-o", tmp_path / "never")
    line = assert_one_line_error(code, out, err, "prune")
    assert "cannot reach a 50x speed-up by width: the best measured was" in line
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
@needs_fashion_mnist
def test_quantize_writes_tensorrt_and_onnxruntime_files(capsys, tmp_path, one_thread, schema_errors):
    torch.manual_seed(0)  # the model's random weights, and so its parity, must not depend on earlier tests
    code, out, err = run_cli(capsys, "quantize", "prunefx:mobilenetv2_small", "--calibrate", "fashion-mnist",
                             "--calibration-images", "64", "--runs", "5", "--threads", "1", "-o", tmp_path / "q")
    assert code == 0, err
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert not schema_errors(report) and report["command"] == "quantize" and report["budget"] is None
    assert report["quantize_int8"]["quantized"] and report["latency"]["speedup"] > 0
    assert report["parity"] == report["exports"]["model_ort.onnx"]["parity"]  # model.onnx is the ort file
    trt = onnx.load(tmp_path / "q" / "model_trt.onnx")
    kinds = [node.op_type for node in trt.graph.node]
    assert kinds.count("QuantizeLinear") >= 1 and kinds.count("DequantizeLinear") > kinds.count("QuantizeLinear")
    # INT8 weights (2-D and up; the zero-points are INT8 too, as scalars or per-channel vectors)
    int8 = [t for t in trt.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8) == report["exports"]["model_trt.onnx"]["weight_initializers"] > 0
    ort_inputs = {t.name for t in onnx.load(tmp_path / "q" / "model_ort.onnx").graph.initializer
                  if t.data_type == onnx.TensorProto.UINT8}
    assert ort_inputs  # zero-points (and, without VNNI, weights) in UINT8 for ONNX Runtime's kernels
    for entry in report["exports"].values():
        assert entry["parity"]["relative"] < 0.1
    quantized = Program.load(tmp_path / "q" / "model.pt2")
    assert quantized.training is False
    # the fake-quantized model against the float one, recomputed here from a float model of the same seed
    torch.manual_seed(0)
    dense = build_model("prunefx:mobilenetv2_small").module.eval()
    with torch.no_grad():
        want, got = dense(*quantized.example_inputs).double(), quantized(*quantized.example_inputs).double()
    departure = report["float_departure"]["relative"]
    assert departure == pytest.approx(float((want - got).abs().max() / want.abs().max()), rel=1e-6) and departure > 0
    assert f"against the float one: relative error {departure:.2e}" in out


def test_quantize_counts_its_layers_apart_from_adds_and_pools_and_names_the_batches_it_read(capsys, tmp_path,
                                                                                              one_thread):
    """'quantized 32 layers' counted ResNet-20's residual adds and its pool as layers, and under --max-batches the
    line and the report named all 32 calibration images where two were read. The oracle for the layers: the
    dense graph's convolutions and linear layers."""
    code, out, err = run_cli(capsys, "quantize", "prunefx:resnet20", "--calibrate", "fashion-mnist",
                             "--calibration-images", "32", "--max-batches", "2", "--runs", "2", "--threads", "1",
                             "-o", tmp_path / "q")
    assert code == 0, err
    model = build_model("prunefx:resnet20").module
    layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    stats = report["quantize_int8"]
    joins = len(stats["quantized"]) - layers
    assert layers == 22 and joins > 0 and stats["calibration_batches"] == 2
    first = out.splitlines()[0]
    assert first.startswith(f"quantized {layers} layers and {joins} adds and pools of ")
    read = f"the first 2 batches ({stats['calibration_images']} images) of 32 images from fashion-mnist"
    assert read in first and report["calibration"].startswith(read)


def test_quantize_without_calibration_data_is_refused(capsys, tmp_path):
    code, out, err = run_cli(capsys, "quantize", "prunefx:mobilenetv2_small", "-o", tmp_path / "never")
    line = assert_one_line_error(code, out, err, "quantize")
    assert "give --calibrate DATA" in line and not (tmp_path / "never").exists()


def test_prune_says_its_macs_are_a_whole_batchs(capsys, tmp_path, one_thread):
    """The oracle: torch's own FLOP counter on the eager model, one image (a multiply-add is two FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    from prunefx.models import build_model

    with FlopCounterMode(display=False) as flops, torch.no_grad():
        build_model("prunefx:mobilenetv2_small").module.eval()(torch.randn(1, 1, 28, 28))
    code, out, err = run_cli(capsys, "prune", "prunefx:mobilenetv2_small", "--input-shape", "2x1x28x28",
                             "--macs", "0.5", "--importance", "l2", "-o", tmp_path)
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("MACs"))
    assert line.endswith(", for a batch of 2 images")
    assert float(line.split()[1]) == pytest.approx(2 * flops.get_total_flops() / 2 / 1e6, abs=0.06)


def test_main_called_in_process_leaves_the_warning_filters_as_found(tmp_path, capsys):
    """The command hides torch's and ONNX's warnings while it runs; a program calling main() gets its own filters
    back (the console script's process keeps them hidden through exit)."""
    import warnings

    before = list(warnings.filters)
    assert main(["check", str(tmp_path / "missing.onnx")]) == EXIT_USER_ERROR
    assert warnings.filters == before


def test_a_budgeted_prune_exports_no_program_twice(tmp_path, monkeypatch, capsys):
    """The confirmation exports the chosen model as model.onnx is written (dynamo): the deliverable is a copy of
    that file (runtime/onnx/export_memo.py), not a second export. The oracle: each dynamo export's Program, by
    its contents."""
    import prunefx.runtime.onnx.export as export
    from prunefx.graph.fingerprint import fingerprint

    exported = []
    dynamo = export._export_dynamo
    monkeypatch.setattr(export, "_export_dynamo", lambda program, opset: exported.append(fingerprint(program))
                        or dynamo(program, opset))
    assert main(["prune", "prunefx:resnet20", "--speedup", "1.3", "--runs", "10", "--threads", "1",
                 "-o", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert exported and len(exported) == len(set(exported))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["parity"]["relative"] < 1e-4 and report["onnx"]["exporter"] == "dynamo"
