"""Reading one image file into the packed RGB form the encoders take."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from pinlab_data.contracts import ImageArray, PinlabDataError

MAX_PIXELS = 40_000_000
"""Refuse larger images: a decompression bomb would otherwise exhaust memory."""


def decode_image(
    data: bytes, size: int, *, source: str = "image", max_pixels: int = MAX_PIXELS
) -> ImageArray:
    """Decode image bytes to (size, size, 3) uint8 RGB: EXIF-rotated, centre-cropped, resized.

    Memory stays bounded: the pixel count is checked from the header before anything is
    decoded, and a JPEG is decoded straight at the smallest 1/2, 1/4 or 1/8 scale that keeps
    both sides at least 2 * size (a 40-megapixel photo then takes ~2 MB, not ~120 MB).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise PinlabDataError(
                    f"{source} is {img.width}x{img.height} pixels, over the limit of "
                    f"{max_pixels:,}; resize it first"
                )
            img.draft("RGB", (2 * size, 2 * size))
            img.seek(0)  # GIF, WebP: the first frame
            ImageOps.exif_transpose(img, in_place=True)
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            fitted = ImageOps.fit(rgb, (size, size), Image.Resampling.BILINEAR)
            return np.asarray(fitted, dtype=np.uint8).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own limit: an error above twice it, a warning (an error where warnings
        # are errors) above it; refused the same way either time.
        raise PinlabDataError(f"{source} has too many pixels ({exc}); resize it first") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise PinlabDataError(
            f"{source} is not a readable image ({type(exc).__name__}); pass a JPEG, PNG, "
            "WebP, BMP or GIF file"
        ) from exc


def load_image(path: Path, size: int) -> ImageArray:
    """Read an image file to (size, size, 3) uint8 RGB; bad files raise PinlabDataError."""
    if not path.is_file():
        what = "is a directory, not an image file" if path.is_dir() else "does not exist"
        raise PinlabDataError(f"image file {path} {what}; check the path")
    return decode_image(path.read_bytes(), size, source=str(path))


def encode_png(image: ImageArray, text: Mapping[str, str]) -> bytes:
    """An (H, W, 3) uint8 image as PNG bytes carrying `text` as tEXt chunks (key: value)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise PinlabDataError(f"a PNG needs an (H, W, 3) uint8 image, got {image.shape}")
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def png_text(data: bytes) -> dict[str, str]:
    """The tEXt chunks of PNG bytes (what `encode_png` wrote)."""
    with Image.open(io.BytesIO(data)) as img:
        return {str(k): str(v) for k, v in getattr(img, "text", {}).items()}
