"""Model references, input shapes and weights files: what resolves, and what each bad input says."""

import sys
import textwrap

import pytest
import torch

from prunefx.graph.errors import PrunefxError
from prunefx.models import (
    InputShapeError,
    ModelReferenceError,
    WeightsError,
    build_model,
    load_weights,
    parse_input_shape,
)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Every hub download in torch, torchvision and timm goes through this function: forbid it."""
    def refuse(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def run(spec):
    with torch.no_grad():
        return spec.module(torch.randn(spec.default_input_shape))


# ---- input shapes -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, shape", [("1x3x224x224", (1, 3, 224, 224)), (" 2X3x8x8 ", (2, 3, 8, 8)),
                                         ("16", (16,))])
def test_parse_input_shape(text, shape):
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text, culprit", [("1x3xabc", "'abc'"), ("", "empty"), ("0x3x2x2", "'0'"),
                                           ("1x3x-2x2", "'-2'"), ("1xx3", "''"), ("1x3x2.5x2", "'2.5'")])
def test_parse_input_shape_errors(text, culprit):
    with pytest.raises(InputShapeError, match="1x3x224x224") as info:
        parse_input_shape(text)
    assert culprit in str(info.value)
    assert isinstance(info.value, PrunefxError)


# ---- torchvision and timm -----------------------------------------------------------------------

def test_torchvision_cnn_default_shape_and_eval_mode():
    spec = build_model("torchvision:resnet18")
    assert spec.kind == "module" and spec.program_path is None
    assert spec.name == "torchvision:resnet18"
    assert spec.default_input_shape == (1, 3, 224, 224)
    assert not spec.module.training


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t"])
def test_torchvision_transformers_take_a_small_input(name):
    spec = build_model(f"torchvision:{name}", image_size=64)
    assert spec.default_input_shape == (1, 3, 64, 64)
    assert run(spec).shape == (1, 1000)


def test_torchvision_vit_default_shape_comes_from_the_model():
    assert build_model("torchvision:vit_b_32").default_input_shape == (1, 3, 224, 224)


def test_torchvision_segmentation_builds_without_backbone_download():
    spec = build_model("torchvision:lraspp_mobilenet_v3_large", image_size=64)
    out = run(spec)
    assert out["out"].shape == (1, 21, 64, 64)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_timm_vits_take_a_small_input(name):
    spec = build_model(f"timm:{name}", image_size=96)
    assert spec.default_input_shape == (1, 3, 96, 96)
    assert run(spec).shape == (1, 1000)


def test_timm_cnn_with_image_size_gets_no_img_size_kwarg():
    spec = build_model("timm:resnet18", image_size=64)
    assert run(spec).shape == (1, 1000)


def test_timm_default_shape_comes_from_pretrained_cfg():
    assert build_model("timm:inception_v3").default_input_shape == (1, 3, 299, 299)
    assert build_model("timm:resnet18.a1_in1k").name == "timm:resnet18.a1_in1k"


@pytest.mark.parametrize("ref, expected", [
    ("torchvision:resnet181", "resnet18"),
    ("torchvision:mobilenetv2", "mobilenet_v2"),
    ("timm:vit_tiny_patch16_22", "vit_tiny_patch16_224"),
    ("timm:resnet18.bogus_tag", "resnet18."),
])
def test_unknown_names_suggest_close_matches(ref, expected):
    with pytest.raises(ModelReferenceError, match="did you mean") as info:
        build_model(ref)
    assert expected in str(info.value) and ref.split(":")[1] in str(info.value)


def test_image_size_must_be_positive():
    with pytest.raises(ModelReferenceError, match="image size 0"):
        build_model("torchvision:resnet18", image_size=0)


def test_unknown_name_without_close_match():
    with pytest.raises(ModelReferenceError, match="list_models"):
        build_model("torchvision:zzzzqqqq")


@pytest.mark.parametrize("ref, message", [
    ("resnet18", "cannot read model reference"),
    ("hub:resnet18", "cannot read model reference"),
    ("torchvision:", "names no model"),
    ("timm:", "names no model"),
    ("model.py", "names no factory"),
    ("model.py:not-a-name", "not a Python function name"),
    ("missing/model.pt2", "not found"),
    ("missing/model.py:make", "not found"),
])
def test_malformed_references(ref, message):
    with pytest.raises(ModelReferenceError, match=message):
        build_model(ref)


def test_saved_program_is_left_to_the_caller(tmp_path):
    path = tmp_path / "net.pt2"
    path.write_bytes(b"")  # only its existence matters: build_model does not open it
    spec = build_model(str(path))
    assert (spec.kind, spec.module, spec.program_path, spec.name) == ("program", None, path, "net")
    # image_size cannot rebuild a saved program; the caller checks the shape against the saved one.
    assert build_model(str(path), image_size=64).default_input_shape is None


# ---- python files -------------------------------------------------------------------------------

@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(textwrap.dedent("""
        import torch

        def make_net():
            return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Dropout(0.5))

        def make_dict():
            return {"not": "a module"}

        def make_broken():
            raise ValueError("no such layer")
    """))
    return path


def test_file_factory(model_file):
    spec = build_model(f"{model_file}:make_net")
    assert spec.name == "my_model:make_net"
    assert isinstance(spec.module[0], torch.nn.Conv2d)
    assert not spec.module.training
    assert spec.default_input_shape == (1, 3, 224, 224)
    assert build_model(f"{model_file}:make_net", image_size=32).default_input_shape == (1, 3, 32, 32)


def test_a_model_file_is_imported_without_leaving_bytecode_beside_it(model_file, monkeypatch):
    """The user's folder is left as found: no __pycache__ next to their file, whatever PYTHONDONTWRITEBYTECODE says
    (and a sibling module their file imports writes none either)."""
    (model_file.parent / "blocks.py").write_text("WIDTH = 4\n")
    model_file.write_text(model_file.read_text().replace("import torch\n", "import torch\nimport blocks\n", 1))
    monkeypatch.syspath_prepend(str(model_file.parent))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    build_model(f"{model_file}:make_net")
    assert sorted(p.name for p in model_file.parent.iterdir()) == ["blocks.py", "my_model.py"]
    assert sys.dont_write_bytecode is False  # the process's own setting back


@pytest.mark.parametrize("factory, message", [
    ("make_nett", "has no function 'make_nett'; did you mean make_net"),
    ("make_dict", "returned dict; it must return a torch.nn.Module"),
    ("make_broken", "make_broken\\(\\) failed: ValueError: no such layer"),
])
def test_file_factory_errors(model_file, factory, message):
    with pytest.raises(ModelReferenceError, match=message):
        build_model(f"{model_file}:{factory}")


def test_file_that_does_not_import(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import no_such_module_for_prunefx\n")
    with pytest.raises(ModelReferenceError, match="importing model file .* failed: ModuleNotFoundError"):
        build_model(f"{path}:make")


# ---- weights ------------------------------------------------------------------------------------

def small_net():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 2))


def randomized(net):
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.normal_()
    return net


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd, "optimizer": {}},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},  # saved from DataParallel
    lambda sd: {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
])
def test_load_weights_round_trip(tmp_path, wrap):
    source = randomized(small_net())
    path = tmp_path / "w.pth"
    torch.save(wrap(source.state_dict()), path)
    target = small_net()
    assert load_weights(target, path) is target
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_load_weights_key_mismatch_lists_keys(tmp_path):
    state = small_net().state_dict()
    state["extra.weight"] = state.pop("0.weight")
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="missing keys: 0.weight; unexpected keys: extra.weight"):
        load_weights(small_net(), path)


def test_load_weights_shape_mismatch(tmp_path):
    state = small_net().state_dict()
    state["4.weight"] = torch.zeros(5, 8)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"wrong shapes: 4.weight \(5, 8\) vs model \(2, 8\)"):
        load_weights(small_net(), path)


def test_load_weights_refuses_pickled_modules_and_garbage(tmp_path):
    pickled, garbage = tmp_path / "net.pt", tmp_path / "junk.pt"
    torch.save(small_net(), pickled)
    garbage.write_bytes(b"not a checkpoint")
    for path in (pickled, garbage):
        with pytest.raises(WeightsError, match="cannot read .* as a state dict"):
            load_weights(small_net(), path)
    with pytest.raises(WeightsError, match="not found"):
        load_weights(small_net(), tmp_path / "absent.pth")
    torch.save({"epoch": 3, "lr": 0.1}, pickled)
    with pytest.raises(WeightsError, match="holds no state dict of tensors .*epoch"):
        load_weights(small_net(), pickled)
