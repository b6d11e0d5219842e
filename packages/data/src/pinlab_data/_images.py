"""Reading one image file into the packed RGB form the encoders take."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pinlab_data.contracts import ImageArray, PinlabDataError

MAX_PIXELS = 40_000_000
"""Refuse larger images: a decompression bomb would otherwise exhaust memory."""


def decode_image(data: bytes, size: int, *, source: str = "image") -> ImageArray:
    """Decode image bytes to (size, size, 3) uint8 RGB: EXIF-rotated, centre-cropped, resized."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise PinlabDataError(
                    f"{source} is {img.width}x{img.height} pixels, over the limit of "
                    f"{MAX_PIXELS:,}; resize it first"
                )
            img.seek(0)
            rgb = ImageOps.exif_transpose(img).convert("RGB")
            fitted = ImageOps.fit(rgb, (size, size), Image.Resampling.BILINEAR)
            return np.asarray(fitted, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise PinlabDataError(
            f"{source} is not a readable image ({type(exc).__name__}); pass a JPEG, PNG, "
            "WebP, BMP or GIF file"
        ) from exc


def load_image(path: Path, size: int) -> ImageArray:
    """Read an image file to (size, size, 3) uint8 RGB; bad files raise PinlabDataError."""
    if not path.is_file():
        raise PinlabDataError(f"image file {path} does not exist; check the path")
    return decode_image(path.read_bytes(), size, source=str(path))
