"""Images are normalised with the statistics the model expects: --mean/--std where given (and then recorded in the
Program the command writes), else the model's own (a timm model's pretrained configuration, a saved Program's
record), else ImageNet's. The oracle is the arithmetic by hand on solid-colour images."""

from __future__ import annotations

import argparse
import json
import zipfile

import pytest
import torch
from PIL import Image

from prunefx.cli import main
from prunefx.cli.commands.inspect import summary as inspect_summary
from prunefx.data.normalise import IMAGENET_MEAN, IMAGENET_STD
from prunefx.graph import ProgramFileError, capture
from prunefx.graph.program import Program
from prunefx.image_statistics import calibration_read
from prunefx.models.references import reference_normalisation

COLOUR = (128, 64, 32)


@pytest.fixture(scope="module")
def solid_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("solid")
    for index in range(2):
        Image.new("RGB", (16, 16), COLOUR).save(folder / f"{index}.png")
    return folder


@pytest.fixture
def program():
    torch.manual_seed(0)
    return capture(torch.nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 16, 16), name="conv").eval()


def _args(folder, mean=None, std=None):
    return argparse.Namespace(calibrate=str(folder), calibration_images=2, mean=mean, std=std)


def _expected(mean, std):
    return torch.tensor([(value / 255 - m) / s for value, m, s in zip(COLOUR, mean, std)])


def test_given_statistics_normalise_the_images_and_travel_with_the_saved_program(solid_images, program, tmp_path):
    calibration = calibration_read(_args(solid_images, (0.5,), (0.25,)), program, program.example_inputs[0])
    image = calibration.batches[0][0][0]
    assert torch.allclose(image[:, 8, 8], _expected((0.5,) * 3, (0.25,) * 3), atol=1e-6)
    assert "mean 0.5, 0.5, 0.5, std 0.25, 0.25, 0.25" in calibration.description
    program.save(tmp_path / "model.pt2")
    loaded = Program.load(tmp_path / "model.pt2")
    assert loaded.normalisation == ((0.5,), (0.25,))
    assert inspect_summary(loaded)["normalisation"] == {"mean": [0.5], "std": [0.25]}  # `prunefx inspect` shows it
    again = calibration_read(_args(solid_images), loaded, loaded.example_inputs[0])  # no flags: the file's
    assert torch.equal(again.batches[0][0], calibration.batches[0][0])


def test_given_statistics_travel_with_the_model_of_a_prune_that_reads_no_images(tmp_path):
    """--mean/--std without --calibrate: nothing is normalised, but the model.pt2 written records them."""
    out = tmp_path / "pruned"
    assert main(["prune", "prunefx:resnet20", "--macs", "0.6", "--mean", "0.3", "--std", "0.2", "-o", str(out)]) == 0
    assert Program.load(out / "model.pt2").normalisation == ((0.3,), (0.2,))


def test_without_statistics_images_are_normalised_with_imagenet_s(solid_images, program):
    calibration = calibration_read(_args(solid_images), program, program.example_inputs[0])
    assert torch.allclose(calibration.batches[0][0][0][:, 8, 8], _expected(IMAGENET_MEAN, IMAGENET_STD), atol=1e-6)
    assert program.normalisation is None


def test_a_timm_model_names_its_own_statistics():
    assert reference_normalisation("timm:vit_small_patch16_224.augreg_in21k") == ((0.5,) * 3, (0.5,) * 3)
    assert reference_normalisation("timm:resnet18") == (IMAGENET_MEAN, IMAGENET_STD)
    assert reference_normalisation("torchvision:resnet18") is None


@pytest.mark.parametrize("record", [{"mean": [0.5]}, {"mean": [0.5], "std": [0]}, {"mean": [0.5, 1], "std": [1, 1]},
                                    {"mean": ["0.5"], "std": [1]}, {"mean": [1e308], "std": [1]},
                                    {"mean": [0.5], "std": [1e-300]}])
def test_a_saved_record_of_other_statistics_is_refused(program, tmp_path, record):
    path = tmp_path / "model.pt2"
    program.save(path)
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    name = next(name for name in entries if name.endswith("prunefx.json"))
    entries[name] = json.dumps({**json.loads(entries[name]), "normalisation": record}).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for entry, data in entries.items():
            archive.writestr(entry, data)
    with pytest.raises(ProgramFileError, match="normalisation"):
        Program.load(path)


@pytest.mark.parametrize("flags, message", [
    (["--mean", "0.5"], "--mean and --std go together"),
    (["--mean", "0.5", "--std", "0"], "must lie in [0.001, 100]"),
    (["--mean", "1e308", "--std", "1"], "must lie in [-10, 10]"),
    (["--mean", "nan", "--std", "1"], "not a finite number"),
    (["--mean", "0.5,0.4", "--std", "1,1"], "takes 1 value or 3"),
    (["--mean", "0.5", "--std", "0.5", "--calibrate", "fashion-mnist"], "normalised with its own statistics"),
])
def test_bad_statistics_are_refused_in_one_line_before_any_work(tmp_path, capsys, flags, message):
    code = main(["prune", "prunefx:resnet20", "--macs", "0.5", "-o", str(tmp_path / "out"), *flags])
    error = capsys.readouterr().err
    assert code == 2 and message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
