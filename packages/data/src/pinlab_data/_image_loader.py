"""Image collections to datasets: decode every file once into the packed `images.npy` store.

Two layouts: a folder with one sub-folder per class, or a manifest (CSV or Parquet) with one
row per image. Files that are not usable images (empty, corrupt, truncated, another format,
decompression bombs) are skipped and listed in the dataset's `skipped_images.csv`; the load
fails only when nothing usable is left.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from PIL import Image, ImageOps, UnidentifiedImageError

from pinlab_data._reader import TextFormat, nan_as_null, require_named_once, require_text
from pinlab_data._store import check_writable, save_dataset
from pinlab_data.contracts import (
    INTERACTION_SCHEMA,
    USER_SCHEMA,
    DatasetManifest,
    ImageArray,
    ImageColumns,
    ImageLayout,
    ImageLoadReport,
    PinlabDataError,
    SkippedImage,
)

SKIPPED_FILE = "skipped_images.csv"
FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF"})
"""PIL format names accepted (MPO is the JPEG variant many cameras write)."""
DEFAULT_MAX_PIXELS = 40_000_000
UNLABELLED = "unlabelled"
CHUNK = 64
"""Files per task sent to a decoding process: big enough to amortise the pickling."""
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class _Entry:
    path: Path
    shown: str
    """The path as the report lists it: relative to the source folder or manifest."""
    label: str
    caption: str
    key: str | None
    """The manifest's pin id, if it has a column for it."""


def load_images(
    source: Path,
    out: Path,
    *,
    size: int = 64,
    columns: ImageColumns | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ImageLoadReport:
    """Decode a folder-per-class tree or a manifest's images into a dataset at `out`.

    Every image becomes a pin: EXIF-rotated, converted to RGB (transparency over white),
    centre-cropped and resized to `size` x `size`. Decoding runs in `workers` processes
    (default: every core).
    """
    started = time.perf_counter()
    if not 8 <= size <= 512:
        raise PinlabDataError(f"image size {size} is out of range; pass --size between 8 and 512")
    if max_pixels < size * size:
        raise PinlabDataError(f"max pixels {max_pixels} is below one {size}x{size} image")
    check_writable(Path(out), overwrite)
    source = Path(source)
    layout, entries = _discover(source, columns or ImageColumns())
    if not entries:
        raise PinlabDataError(f"{source} holds no files; pass a folder of images or a manifest")
    chunks = -(-len(entries) // CHUNK)
    # Starting a process costs more than decoding a few chunks: auto uses one below four.
    auto = (os.cpu_count() or 1) if chunks >= 4 else 1
    workers = max(1, min(workers or auto, chunks))
    images, reasons = _decode_all([e.path for e in entries], size, max_pixels, workers, progress)
    ok = np.array([r is None for r in reasons], dtype=np.bool_)
    skipped = [
        SkippedImage(path=e.shown, reason=r)
        for e, r in zip(entries, reasons, strict=True)
        if r is not None
    ]
    if not ok.any():
        counts = Counter(s.reason for s in skipped).most_common()
        raise PinlabDataError(
            f"none of the {len(entries)} files in {source} is a usable image ("
            + ", ".join(f"{n} {why}" for why, n in counts)
            + "); pass JPEG, PNG, WebP, BMP or GIF files"
        )
    kept = [e for e, good in zip(entries, ok, strict=True) if good]
    pins = _pins_table(kept, source)
    categories = sorted(set(pins.column("category").to_pylist()))
    manifest = DatasetManifest(
        name=source.stem or source.name,
        source="images",
        config={
            "path": str(source),
            "layout": layout,
            "image_size": size,
            "max_pixels": max_pixels,
            "skipped": len(skipped),
        },
        num_pins=pins.num_rows,
        num_users=0,
        num_interactions=0,
        image_size=size,
        categories=categories,
    )
    root = save_dataset(
        Path(out),
        manifest,
        pins,
        USER_SCHEMA.empty_table(),
        INTERACTION_SCHEMA.empty_table(),
        images=images[ok],
        extra={SKIPPED_FILE: _skipped_csv(skipped)},
        overwrite=overwrite,
    )
    return ImageLoadReport(
        dataset=str(root),
        source=str(source),
        layout=layout,
        files=len(entries),
        loaded=int(ok.sum()),
        skipped=len(skipped),
        skipped_by_reason=dict(Counter(s.reason for s in skipped)),
        skipped_report=str(root / SKIPPED_FILE),
        image_size=size,
        num_pins=pins.num_rows,
        categories=categories,
        workers=workers,
        seconds=round(time.perf_counter() - started, 3),
    )


def _discover(source: Path, columns: ImageColumns) -> tuple[ImageLayout, list[_Entry]]:
    if source.is_dir():
        return "folders", _folder_entries(source)
    if not source.is_file():
        raise PinlabDataError(f"{source} does not exist; pass a folder of images or a manifest")
    suffix = source.suffix.lower()
    if suffix in (".csv", ".parquet"):
        layout: ImageLayout = "csv" if suffix == ".csv" else "parquet"
        return layout, _manifest_entries(source, layout, columns)
    raise PinlabDataError(
        f"{source} is neither a folder nor a .csv or .parquet manifest; pass one of those"
    )


def _folder_entries(root: Path) -> list[_Entry]:
    """Files in class sub-folders (the folder name is the label); loose files are unlabelled."""
    entries: list[_Entry] = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        label = relative.parts[0] if len(relative.parts) > 1 else UNLABELLED
        entries.append(_Entry(path, relative.as_posix(), label, "", None))
    return entries


def _manifest_entries(path: Path, layout: ImageLayout, columns: ImageColumns) -> list[_Entry]:
    table = _read_manifest(path, layout)
    names = table.column_names

    def pick(given: str | None, flag: str, defaults: Sequence[str]) -> str | None:
        if given is not None and given not in names:
            raise PinlabDataError(
                f"{path} has no column {given!r} ({flag}); its columns are: {', '.join(names)}"
            )
        column = given or next((d for d in defaults if d in names), None)
        if column is not None:
            require_named_once(names, column, flag, path)
        return column

    path_col = pick(columns.path, "--path-col", ())
    assert path_col is not None
    id_col = pick(columns.pin_id, "--id-col", ("pin_id",))
    caption_col = pick(columns.caption, "--caption-col", ("caption",))
    label_col = pick(columns.label, "--label-col", ("label", "labels"))

    def strings(column: str | None, default: str) -> list[str]:
        if column is None:
            return [default] * table.num_rows
        values = table.column(column)
        if pa.types.is_nested(values.type):
            raise PinlabDataError(
                f"{path} column {column!r} holds {values.type}, not one value per row; flatten "
                "it, or name another column"
            )
        try:
            text = pc.cast(nan_as_null(values), pa.string())
        except pa.ArrowInvalid as exc:  # binary that is not UTF-8
            raise PinlabDataError(
                f"{path} column {column!r} holds bytes that are not UTF-8 text ({exc}); store "
                "it as UTF-8 strings"
            ) from exc
        return [default if v is None else v for v in text.to_pylist()]

    paths = strings(path_col, "")
    blank = [i for i, p in enumerate(paths) if not p.strip()]
    if blank:
        raise PinlabDataError(
            f"{path} column {path_col!r} is empty in {len(blank)} row(s), first at row "
            f"{blank[0] + 1}; give every row an image path"
        )
    keys = strings(id_col, "") if id_col else [None] * table.num_rows
    if id_col:
        repeated = [k for k, n in Counter(keys).items() if n > 1]
        if repeated or "" in keys:
            bad = "an empty" if "" in keys else f"repeated ({len(repeated)}, e.g. {repeated[0]!r})"
            raise PinlabDataError(
                f"{path} column {id_col!r} has {bad} pin id; give every image its own id"
            )
    base = path.parent
    files = [(base / p).resolve() if not Path(p).is_absolute() else Path(p) for p in paths]
    missing = [p for p, f in zip(paths, files, strict=True) if not f.is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise PinlabDataError(
            f"{path} lists {len(missing)} image file(s) that do not exist ({shown}); paths are "
            f"relative to {base}: fix them or drop those rows"
        )
    labels = strings(label_col, UNLABELLED)
    captions = strings(caption_col, "")
    return [
        _Entry(f, p, label or UNLABELLED, caption, key)
        for f, p, label, caption, key in zip(files, paths, labels, captions, keys, strict=True)
    ]


def _read_manifest(path: Path, layout: ImageLayout) -> pa.Table:
    try:
        if layout == "parquet":
            return pq.read_table(path)
        require_text(lambda: str(path), TextFormat(","), str(path), "save it as UTF-8 CSV")
        # Every column as text: ids like 007 and labels like 12 keep their spelling.
        return pa_csv.read_csv(
            path, convert_options=pa_csv.ConvertOptions(column_types=_all_strings(path))
        )
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PinlabDataError(
            f"{path} is not a readable {layout} manifest ({first}); fix the file"
        ) from exc


def _all_strings(path: Path) -> dict[str, pa.DataType]:
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), [])
    return dict.fromkeys(header, pa.string())


def _pins_table(entries: list[_Entry], source: Path) -> pa.Table:
    n = len(entries)
    keys = [e.key for e in entries]
    if all(k is not None and k.isdigit() for k in keys):
        pin_ids = np.array([int(k) for k in keys if k is not None], dtype=np.int64)
        external = [e.shown for e in entries]
    else:  # no id column, or ids that are not numbers: dense ids, the source's id kept
        pin_ids = np.arange(n, dtype=np.int64)
        external = [e.key if e.key is not None else e.shown for e in entries]
    return pa.table(
        {
            "pin_id": pin_ids,
            "caption": [e.caption for e in entries],
            "category": [e.label for e in entries],
            "creator_id": np.zeros(n, dtype=np.int64),
            "creator_group": pa.repeat(source.name or "images", n),
            "image_row": np.arange(n, dtype=np.int64),
            "image_path": pa.nulls(n, pa.string()),
            "external_id": external,
        }
    )


def _skipped_csv(skipped: list[SkippedImage]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows([s.path, s.reason] for s in skipped)
    return buffer.getvalue().encode()


def _decode_all(
    paths: list[Path], size: int, max_pixels: int, workers: int, progress: Progress | None
) -> tuple[ImageArray, list[str | None]]:
    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    reasons: list[str | None] = [None] * len(paths)
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    args = [([str(p) for p in chunk], size, max_pixels) for chunk in chunks]
    done = 0

    def store(start: int, result: tuple[ImageArray, list[str | None]]) -> None:
        nonlocal done
        block, why = result
        images[start : start + len(why)] = block
        reasons[start : start + len(why)] = why
        done += len(why)
        if progress is not None:
            progress(done, len(paths))

    if workers == 1:
        for i, a in enumerate(args):
            store(i * CHUNK, decode_chunk(*a))
    else:
        # spawn, not fork: the parent may hold torch's thread pools, which fork can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for i, result in enumerate(pool.map(decode_chunk, *zip(*args, strict=True))):
                store(i * CHUNK, result)
    return images, reasons


def decode_chunk(
    paths: list[str], size: int, max_pixels: int
) -> tuple[ImageArray, list[str | None]]:
    """Decode files to (len(paths), size, size, 3); each entry's reason is None if it worked."""
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    reasons: list[str | None] = []
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        for i, path in enumerate(paths):
            image, reason = decode_file(Path(path), size)
            if image is not None:
                out[i] = image
            reasons.append(reason)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return out, reasons


def decode_file(path: Path, size: int) -> tuple[ImageArray | None, str | None]:
    """One file to (size, size, 3) uint8 RGB, or None and the reason it is not usable.

    Images over PIL's `Image.MAX_IMAGE_PIXELS` count as decompression bombs.
    """
    try:
        if path.stat().st_size == 0:
            return None, "empty file"
    except OSError:
        return None, "unreadable file"
    with warnings.catch_warnings():
        # Over the limit PIL only warns (up to twice it); treat both as a bomb.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                if img.format not in FORMATS:
                    return None, f"unsupported format {img.format}"
                img.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at a reduced scale
                img.seek(0)  # GIF, WebP: the first frame
                img.load()
                return _to_rgb(img, size), None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return None, "too many pixels (decompression bomb)"
        except UnidentifiedImageError:
            return None, "not an image"
        except (OSError, SyntaxError, ValueError, EOFError, IndexError):
            return None, "corrupt or truncated"


def _to_rgb(img: Image.Image, size: int) -> ImageArray:
    upright = ImageOps.exif_transpose(img)
    if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
        rgba = upright.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        upright = Image.alpha_composite(white, rgba)
    fitted = ImageOps.fit(upright.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
    return np.asarray(fitted, dtype=np.uint8)
