"""Image folders and manifests to datasets: every format, EXIF, modes, and the files to skip."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pinlab_data import (
    SKIPPED_FILE,
    ImageColumns,
    PinlabDataError,
    load_dataset,
    load_images,
    validate_dataset,
)

RED, BLUE = (220, 20, 20), (20, 20, 220)


def half_red(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """Left half red, right half blue: any rotation or flip shows in the pixels."""
    img = Image.new("RGB", size, BLUE)
    img.paste(Image.new("RGB", (size[0] // 2, size[1]), RED), (0, 0))
    return img


def write_formats(folder: Path) -> None:
    """One file per format and colour mode, in two class folders."""
    (folder / "shoes").mkdir(parents=True)
    (folder / "lamps").mkdir()
    base = half_red((32, 32))
    base.save(folder / "shoes" / "a.jpg", quality=95)
    base.save(folder / "shoes" / "b.png")
    base.save(folder / "shoes" / "c.webp")
    base.save(folder / "shoes" / "d.bmp")
    frames = [base, Image.new("RGB", (32, 32), (0, 255, 0))]
    frames[0].save(folder / "lamps" / "e.gif", save_all=True, append_images=frames[1:])
    base.convert("L").save(folder / "lamps" / "f.png")
    base.convert("P").save(folder / "lamps" / "g.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: becomes white
    rgba.save(folder / "lamps" / "h.png")
    base.convert("CMYK").save(folder / "lamps" / "i.jpg")


def test_every_format_and_mode_loads_as_rgb(tmp_path: Path) -> None:
    write_formats(tmp_path / "src")
    report = load_images(tmp_path / "src", tmp_path / "ds", size=16)
    assert report.loaded == 9 and report.skipped == 0 and report.layout == "folders"
    ds = load_dataset(tmp_path / "ds")
    assert ds.images is not None and ds.images.shape == (9, 16, 16, 3)
    assert validate_dataset(tmp_path / "ds").ok
    external = ds.pins.column("external_id").to_pylist()
    images = {name: ds.images[i] for i, name in enumerate(external)}
    assert sorted(set(ds.pins.column("category").to_pylist())) == ["lamps", "shoes"]
    assert ds.manifest.categories == ["lamps", "shoes"]
    for name in ("shoes/a.jpg", "shoes/b.png", "shoes/c.webp", "shoes/d.bmp", "lamps/e.gif"):
        left, right = images[name][8, 2].astype(int), images[name][8, 13].astype(int)
        assert left[0] > 150 and left[2] < 100, name  # red on the left: first GIF frame
        assert right[2] > 150 and right[0] < 100, name
    assert np.all(images["lamps/h.png"] == 255)
    grey = images["lamps/f.png"]
    assert np.all(grey[..., 0] == grey[..., 1])
    cmyk = images["lamps/i.jpg"][8, 2].astype(int)
    assert cmyk[0] > 150 and cmyk[2] < 100


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    folder = tmp_path / "src" / "x"
    folder.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees: red must come out on the right
    half_red((32, 32)).save(folder / "turned.jpg", exif=exif, quality=95)
    load_images(tmp_path / "src", tmp_path / "ds", size=16)
    images = load_dataset(tmp_path / "ds").images
    assert images is not None
    assert images[0][8, 13, 0] > 150 and images[0][8, 2, 2] > 150


def test_bad_files_are_skipped_and_reported(tmp_path: Path) -> None:
    src = tmp_path / "src" / "cls"
    src.mkdir(parents=True)
    for i in range(3):
        half_red().save(src / f"ok{i}.png")
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.txt").write_text("not an image")
    good = (src / "ok0.png").read_bytes()
    (src / "truncated.png").write_bytes(good[: len(good) // 2])
    half_red((64, 64)).save(src / "corrupt.jpg")
    data = bytearray((src / "corrupt.jpg").read_bytes())
    data[200:] = bytes(len(data) - 200)
    (src / "corrupt.jpg").write_bytes(bytes(data))
    Image.new("L", (3000, 3000)).save(src / "bomb.png")  # tiny file, many pixels
    Image.new("RGB", (8, 8)).save(src / "tiff.tif")
    report = load_images(tmp_path / "src", tmp_path / "ds", size=16, max_pixels=1_000_000)
    assert report.loaded == 3 and report.files == 9 and report.skipped == 6
    with (tmp_path / "ds" / SKIPPED_FILE).open() as f:
        reasons = {row["path"]: row["reason"] for row in csv.DictReader(f)}
    assert reasons == {
        "cls/empty.jpg": "empty file",
        "cls/notes.txt": "not an image",
        "cls/truncated.png": "corrupt or truncated",
        "cls/corrupt.jpg": "corrupt or truncated",
        "cls/bomb.png": "too many pixels (decompression bomb)",
        "cls/tiff.tif": "unsupported format TIFF",
    }
    assert sum(report.skipped_by_reason.values()) == 6
    assert validate_dataset(tmp_path / "ds").ok


def test_nothing_usable_fails_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"")
    (src / "b.txt").write_text("x")
    with pytest.raises(PinlabDataError, match="none of the 2 files"):
        load_images(src, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    (tmp_path / "none").mkdir()
    with pytest.raises(PinlabDataError, match="holds no files"):
        load_images(tmp_path / "none", tmp_path / "ds")


def test_parallel_decoding_matches_serial(tmp_path: Path) -> None:
    src = tmp_path / "src" / "c"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(150):  # three chunks
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(src / f"{i}.png")
    (src / "zero.png").write_bytes(b"")
    one = load_images(tmp_path / "src", tmp_path / "one", size=8, workers=1)
    two = load_images(tmp_path / "src", tmp_path / "two", size=8, workers=2)
    assert (one.workers, two.workers) == (1, 2)
    assert one.loaded == two.loaded == 150
    a, b = load_dataset(tmp_path / "one").images, load_dataset(tmp_path / "two").images
    assert a is not None and b is not None and np.array_equal(a, b)


def write_manifest(tmp_path: Path, fmt: str, **columns: list[str]) -> Path:
    images = tmp_path / "imgs"
    images.mkdir(exist_ok=True)
    for name in ("p.png", "q.png", "r.png"):
        half_red().save(images / name)
    table = pa.table(columns)
    if fmt == "csv":
        path = tmp_path / "manifest.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(table.column_names)
            writer.writerows(zip(*columns.values(), strict=True))
    else:
        path = tmp_path / "manifest.parquet"
        pq.write_table(table, path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_manifest_with_ids_captions_and_labels(tmp_path: Path, fmt: str) -> None:
    manifest = write_manifest(
        tmp_path,
        fmt,
        file=["imgs/p.png", "imgs/q.png", "imgs/r.png"],
        pin_id=["10", "11", "12"],
        caption=["a red lamp", "blue chair", ""],
        kind=["lamp", "chair", "lamp"],
    )
    columns = ImageColumns(path="file", label="kind")
    report = load_images(manifest, tmp_path / "ds", size=16, columns=columns)
    assert report.layout == fmt and report.loaded == 3
    ds = load_dataset(tmp_path / "ds")
    assert ds.pin_ids().tolist() == [10, 11, 12]
    assert ds.pins.column("caption").to_pylist() == ["a red lamp", "blue chair", ""]
    assert ds.pins.column("category").to_pylist() == ["lamp", "chair", "lamp"]
    assert validate_dataset(tmp_path / "ds").ok


def test_manifest_text_ids_become_external_ids(tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path, "csv", path=["imgs/p.png", "imgs/q.png"], pin_id=["sku-1", "sku-2"]
    )
    load_images(manifest, tmp_path / "ds", size=16)
    ds = load_dataset(tmp_path / "ds")
    assert ds.pin_ids().tolist() == [0, 1]
    assert ds.pins.column("external_id").to_pylist() == ["sku-1", "sku-2"]
    assert set(ds.pins.column("category").to_pylist()) == {"unlabelled"}


def test_manifest_errors_are_one_line(tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path, "csv", path=["imgs/p.png", "imgs/gone1.png", "imgs/gone2.png"]
    )
    with pytest.raises(PinlabDataError, match=r"2 image file\(s\) that do not exist") as exc:
        load_images(manifest, tmp_path / "ds")
    assert "imgs/gone1.png" in str(exc.value) and "\n" not in str(exc.value)
    manifest = write_manifest(tmp_path, "csv", path=["imgs/p.png"])
    with pytest.raises(PinlabDataError, match=r"no column 'category'.*columns are: path"):
        load_images(manifest, tmp_path / "ds", columns=ImageColumns(label="category"))
    manifest = write_manifest(tmp_path, "csv", path=["imgs/p.png", "imgs/q.png"], pin_id=["1", "1"])
    with pytest.raises(PinlabDataError, match="repeated"):
        load_images(manifest, tmp_path / "ds")
    (tmp_path / "list.txt").write_text("x")
    with pytest.raises(PinlabDataError, match="neither a folder"):
        load_images(tmp_path / "list.txt", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # Was exit 1: Arrow's KeyError for a field that exists twice.
        (
            b"path,pin_id,path\nimgs/p.png,1,imgs/q.png\n",
            r"has 2 columns named 'path' \(columns 1, 3\), so --path-col path is ambiguous",
        ),
        ("path\nimgs/p.png\n".encode("utf-16"), "is UTF-16 text, not UTF-8; save it as UTF-8 CSV$"),
        (bytes(range(256)), r"holds binary data \(a NUL byte at offset 0\), not text"),
    ],
    ids=["column-twice", "utf-16", "binary"],
)
def test_a_damaged_csv_manifest_says_what_is_wrong(
    tmp_path: Path, data: bytes, message: str
) -> None:
    (tmp_path / "list.csv").write_bytes(data)
    with pytest.raises(PinlabDataError, match=message):
        load_images(tmp_path / "list.csv", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        # The first two were Arrow's cast errors, exit 1; NaN was the pin id "nan".
        ("pin_id", pa.array([[1], [2]]), r"column 'pin_id' holds list<element: int64>, not one"),
        ("caption", pa.array([b"red", b"\xff"], pa.binary()), "column 'caption' holds bytes that"),
        ("pin_id", pa.array([1.0, float("nan")]), "column 'pin_id' has an empty pin id"),
    ],
    ids=["list", "binary-not-utf8", "nan"],
)
def test_a_parquet_manifest_column_of_no_plain_text_is_refused(
    tmp_path: Path, column: str, values: pa.Array, message: str
) -> None:
    manifest = write_manifest(tmp_path, "parquet", path=["imgs/p.png", "imgs/q.png"])
    pq.write_table(pq.read_table(manifest).append_column(column, values), manifest)
    with pytest.raises(PinlabDataError, match=message):
        load_images(manifest, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
