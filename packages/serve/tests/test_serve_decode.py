"""Upload decoding stays small in memory: a 40-megapixel JPEG is decoded at a reduced scale.

Run as a script to print the measurement:
`uv run python packages/serve/tests/test_serve_decode.py [WIDTH HEIGHT]`.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from pinlab_serve import ServeSettings
from pinlab_serve._service import PinService
from pinlab_serve.contracts import PayloadTooLargeError

PHOTO = (7680, 5200)
"""39.9 megapixels, just under the default `ServeSettings.max_pixels`."""

MAKE = """
import sys
from PIL import Image
width, height, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
# Noise and gradients: a JPEG that costs what a photo costs to decode.
noise = Image.effect_noise((width, height), 60)
ramp = Image.linear_gradient("L").resize((width, height))
flipped = noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
Image.merge("RGB", (noise, ramp, flipped)).save(path, format="JPEG", quality=90)
"""

MEASURE = """
import io, json, sys, time
from pathlib import Path
from PIL import Image
from pinlab_serve import ServeSettings
from pinlab_serve._service import PinService
data = Path(sys.argv[1]).read_bytes()
service = PinService(Path("."), ServeSettings())
service.image_size = 32
small = io.BytesIO()
Image.new("RGB", (64, 48)).save(small, format="JPEG")
service.decode_upload(small.getvalue())  # warm up: plugins loaded, allocator primed
def status(key):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key))
    return int(line.split()[1])  # KiB
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS:")
start = time.perf_counter()
image = service.decode_upload(data)
seconds = time.perf_counter() - start
after = status("VmHWM:")
with Image.open(io.BytesIO(data)) as img:  # the scale the JPEG decoder was asked for
    img.draft("RGB", (64, 64))
    decoded_at = list(img.size)
print(json.dumps({
    "bytes": len(data),
    "shape": list(image.shape),
    "decoded_at": decoded_at,
    "peak_rss_growth_mib": round((after - before) / 1024, 1),
    "decode_seconds": round(seconds, 3),
}))
"""


def measure(tmp: Path, width: int, height: int) -> dict[str, Any]:
    """Decode a `width` x `height` JPEG in a fresh interpreter; its peak RSS growth and time.

    Linux only: the peak is /proc/self/status VmHWM, reset just before the decode.
    """
    path = tmp / "photo.jpg"
    subprocess.run([sys.executable, "-c", MAKE, str(width), str(height), str(path)], check=True)
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return {"megapixels": round(width * height / 1e6, 1), **result}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    "size",
    [(4000, 3000), pytest.param(PHOTO, marks=pytest.mark.slow)],  # 40 MP: ~10 s on 2 cores
    ids=["12MP", "40MP"],
)
def test_a_large_jpeg_decodes_in_little_memory(tmp_path: Path, size: tuple[int, int]) -> None:
    result = measure(tmp_path, *size)
    print(result)
    assert result["shape"] == [32, 32, 3]
    # Decoded whole, the RGB pixels alone are 3 bytes a pixel (34 MiB at 12 MP, 114 MiB at
    # 40 MP) and the old decode held three copies; at 1/8 scale they are under 2 MiB.
    assert result["peak_rss_growth_mib"] < 16, result


def service(size: int = 32, max_pixels: int = 40_000_000) -> PinService:
    """A service that can decode uploads (nothing loaded: decoding needs only the size)."""
    svc = PinService(Path(), ServeSettings(max_pixels=max_pixels))
    svc.image_size = size
    return svc


def photo(width: int, height: int, orientation: int | None = None) -> tuple[bytes, Image.Image]:
    """A JPEG with smooth shapes, and the image it encodes (upright)."""
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse((width // 3, height // 4, width // 2, height // 2), fill=(220, 40, 40))
    draw.rectangle((width // 2, height // 2, 4 * width // 5, 9 * height // 10), fill=(30, 90, 200))
    buffer = io.BytesIO()
    exif = Image.Exif()
    stored = img
    if orientation == 6:  # stored rotated: viewers turn it 90 degrees clockwise
        exif[0x0112] = 6
        stored = img.transpose(Image.Transpose.ROTATE_90)
    stored.save(buffer, format="JPEG", quality=92, exif=exif)
    return buffer.getvalue(), img


@pytest.mark.parametrize("orientation", [None, 6])
def test_reduced_scale_decode_matches_a_full_decode(orientation: int | None) -> None:
    data, upright = photo(3000, 2000, orientation)
    got = service(64).decode_upload(data).astype(np.int16)
    want = np.asarray(ImageOps.fit(upright, (64, 64), Image.Resampling.BILINEAR), np.int16)
    assert got.shape == (64, 64, 3)
    assert np.abs(got - want).mean() < 3, np.abs(got - want).mean()


def test_pixels_over_the_cap_are_refused_from_the_header() -> None:
    data, _ = photo(1250, 1000)
    with pytest.raises(PayloadTooLargeError, match="1250x1000 pixels, over the limit of 1,000,000"):
        service(max_pixels=1_000_000).decode_upload(data)
    assert service(max_pixels=1_250_000).decode_upload(data).shape == (32, 32, 3)


if __name__ == "__main__":
    import tempfile

    size = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) == 3 else PHOTO
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(Path(tmp), *size)))
