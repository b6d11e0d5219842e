"""Reading single image files: good, corrupt and missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pinlab_data import PinlabDataError, decode_image, load_image


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
