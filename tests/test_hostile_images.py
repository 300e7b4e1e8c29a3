"""Hostile image folders: a PNG declaring 40000 x 40000 pixels, symlinks to `..`, links out of the
folder, a FIFO named like an image. Each ends in one PrunefxError line, quickly, before any decoding."""

from __future__ import annotations

import os
import struct
import time
import zlib

import pytest
import torch
from PIL import Image

from prunefx.data.calibration import calibration_data
from prunefx.data.image_files import MAX_IMAGE_PIXELS, image_files, open_image, read_image
from prunefx.data.splits import image_folder_split, load_image
from prunefx.graph import PrunefxError


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG header declaring width x height gray pixels, with a few rows of data: the
    size a decoder would allocate comes from the header alone (oracle: the PNG specification)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def _save_rgb(path, size=8):
    Image.new("RGB", (size, size), (10, 200, 30)).save(path)


@pytest.mark.parametrize("side", [7000, 40000])  # above our limit; above PIL's own too
def test_declared_pixels_are_refused_before_decoding_in_every_decoder(tmp_path, side):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_declaring(side, side))
    assert side * side > MAX_IMAGE_PIXELS
    for decode in (open_image, read_image, load_image):
        started = time.perf_counter()
        with pytest.raises(PrunefxError, match="declares .* pixels, more than the limit") as error:
            decode(bomb)
        assert "\n" not in str(error.value)
        assert time.perf_counter() - started < 2


def test_flat_calibration_folder_with_a_bomb_is_one_line(tmp_path):
    for i in range(2):
        _save_rgb(tmp_path / f"ok{i}.png")
    (tmp_path / "z_bomb.png").write_bytes(_png_declaring(7000, 7000))
    with pytest.raises(PrunefxError, match="z_bomb.png declares 7000x7000"):
        calibration_data(str(tmp_path), torch.zeros(1, 3, 8, 8), images=4)


def test_small_images_still_decode_the_same_in_both_decoders(tmp_path):
    path = tmp_path / "a.png"
    _save_rgb(path)
    tensor = read_image(path)
    assert tensor.shape == (3, 8, 8) and tensor[:, 0, 0].tolist() == [10, 200, 30]
    assert open_image(path).getpixel((0, 0)) == (10, 200, 30)


def test_symlink_loops_are_not_followed(tmp_path):
    split = tmp_path / "train"
    for name in ("cat", "dog"):
        (split / name).mkdir(parents=True)
        _save_rgb(split / name / "a.png")
        for loop in range(3):  # links to .. and to the tree's root: followed, the walk would never end
            os.symlink("..", split / name / f"up{loop}")
            os.symlink(tmp_path, split / name / f"root{loop}")
    started = time.perf_counter()
    loader = image_folder_split(split, 1)
    assert time.perf_counter() - started < 5
    assert sorted(os.path.basename(os.path.dirname(p)) for p, _ in loader.source.samples) == ["cat", "dog"]


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "secret.png"
    _save_rgb(outside)
    folder = tmp_path / "images"
    folder.mkdir()
    os.symlink(outside, folder / "link.png")
    with pytest.raises(PrunefxError, match="leads out of"):
        image_files(folder)


def test_a_fifo_named_like_an_image_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    started = time.perf_counter()
    with pytest.raises(PrunefxError, match="not a regular file"):
        open_image(fifo)
    assert time.perf_counter() - started < 2


def test_a_garbage_image_is_named_after_ultralytics_patched_pil(tmp_path):
    """Ultralytics, once imported (a user's `ultralytics:` model), replaces PIL.Image.open with one that
    raises ModuleNotFoundError (an optional HEIF plugin) for a file PIL cannot identify. prunefx's
    decoders must still answer with their one line naming the file."""
    pytest.importorskip("ultralytics.utils.patches", reason="ultralytics (a development dependency) not installed")
    garbage = tmp_path / "not_an_image.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(PrunefxError, match=r"cannot read image .*not_an_image\.png: cannot identify"):
        open_image(garbage)
