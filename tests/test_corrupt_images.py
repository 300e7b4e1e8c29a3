"""A corrupt image (one bit flipped in a PNG's pixel data, CRC made right again; a truncated file) is one
line naming the file, in `--calibrate` and `--data`, in the main process and in a DataLoader worker: never
a crash of the process. torchvision's PNG decoder ends the process on such a file (libpng's error is a
segmentation fault there); prunefx reads every image with PIL (prunefx/data/image_files.py)."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from prunefx.data.calibration import calibration_data
from prunefx.data.image_files import open_image, read_image
from prunefx.data.splits import image_folder_split
from prunefx.graph import PrunefxError

pytestmark = pytest.mark.faults


def _png(seed: int = 0, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def bit_flipped_png(bit: int = 24) -> bytes:
    """A PNG with one bit of its IDAT data flipped and the chunk's CRC recomputed, so that only the
    compressed pixel stream is wrong (the PNG specification: length, type, data, CRC of type + data)."""
    data = bytearray(_png())
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4:start])[0]
    data[start + 4 + bit // 8] ^= 1 << (bit % 8)
    body = bytes(data[start:start + 4 + length])
    data[start + 4 + length:start + 8 + length] = struct.pack(">I", zlib.crc32(body))
    return bytes(data)


CORRUPT = {"flipped.png": bit_flipped_png, "truncated.png": lambda: _png()[:200]}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_every_decoder_names_a_corrupt_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(CORRUPT[name]())
    for decode in (open_image, read_image):
        with pytest.raises(PrunefxError, match=f"cannot read image .*{name}") as refused:
            decode(path)
        assert "\n" not in str(refused.value)


def test_read_image_gives_the_pixels_pil_gives(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_png(seed=3))
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert torch.equal(read_image(path), torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_calibration_folder_with_a_flipped_png_is_one_line(tmp_path):
    for index in range(3):
        (tmp_path / f"ok{index}.png").write_bytes(_png(seed=index))
    (tmp_path / "z_flipped.png").write_bytes(bit_flipped_png())
    with pytest.raises(PrunefxError, match="z_flipped.png"):
        calibration_data(str(tmp_path), torch.zeros(1, 3, 16, 16), images=4)


def test_a_flipped_png_in_a_worker_is_the_workers_one_line(tmp_path):
    split = tmp_path / "train"
    (split / "a").mkdir(parents=True)
    (split / "a" / "ok.png").write_bytes(_png())
    (split / "a" / "z_flipped.png").write_bytes(bit_flipped_png())
    batches = image_folder_split(split, 1, image_size=16, num_workers=1)
    with pytest.raises(PrunefxError, match="cannot read image .*z_flipped.png") as refused:
        list(batches)
    assert "\n" not in str(refused.value) and "Traceback" not in str(refused.value)


def test_the_cli_with_a_flipped_png_to_calibrate_exits_2_in_one_line(tmp_path):
    """In a process of its own: the failure this guards against was a segmentation fault."""
    images = tmp_path / "images"
    images.mkdir()
    for index in range(2):
        (images / f"ok{index}.png").write_bytes(_png(seed=index))
    (images / "z_flipped.png").write_bytes(bit_flipped_png())
    done = subprocess.run([sys.executable, "-m", "prunefx", "quantize", "torchvision:resnet18", "--input-shape",
                           "1x3x32x32", "--calibrate", str(images), "--calibration-images", "3",
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "z_flipped.png" in lines[0] and "cannot read image" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("channels", [1, 3])
def test_an_empty_calibration_folder_says_it_is_empty_whatever_the_model_takes(tmp_path, channels):
    """A gray model given an empty folder was told it needs RGB images: true, but the folder was the problem."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrunefxError, match="holds no images"):
        calibration_data(str(tmp_path / "empty"), torch.zeros(2, channels, 28, 28), 4)
