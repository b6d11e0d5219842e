"""Reading single image files (good, corrupt and missing) and writing PNGs with text."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pinlab_data import PinlabDataError, decode_image, encode_png, load_image, png_text


def test_load_image_crops_and_resizes_a_png(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 5:35] = (255, 0, 0)  # the centre square is all red: squashing would show black
    path = tmp_path / "pin.png"
    Image.fromarray(pixels).save(path)
    image = load_image(path, 8)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], 255)
    np.testing.assert_array_equal(image[..., 1:], 0)


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    Image.new("L", (6, 6), 100).save(path)
    np.testing.assert_array_equal(load_image(path, 4), np.full((4, 4, 3), 100, dtype=np.uint8))


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(PinlabDataError, match="is not a readable image"):
        load_image(path, 8)
    with pytest.raises(PinlabDataError, match="upload is not a readable image"):
        decode_image(b"", 8, source="upload")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PinlabDataError, match="does not exist"):
        load_image(tmp_path / "nope.png", 8)
    with pytest.raises(PinlabDataError, match="is a directory, not an image file"):
        load_image(tmp_path, 8)


def test_encode_png_keeps_pixels_and_text() -> None:
    image = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    data = encode_png(image, {"pinlab:prompt": "a red star", "pinlab:seed": "3"})
    assert png_text(data) == {"pinlab:prompt": "a red star", "pinlab:seed": "3"}
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)
    with pytest.raises(PinlabDataError, match=r"\(H, W, 3\) uint8"):
        encode_png(image[..., 0], {})
