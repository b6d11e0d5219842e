"""Dataset directories on disk: atomic writes, and loads that fail with one clear line.

A dataset directory holds `dataset.json` (the manifest), `pins.parquet`, `users.parquet`,
`interactions.parquet`, optionally `images.npy` ((N, H, W, 3) uint8) and extra files such as a
synthetic world's `truth.npz`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import shutil
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from pinlab_data.contracts import (
    ADDED_COLUMNS,
    SCHEMA_VERSION,
    TABLE_SCHEMAS,
    Dataset,
    DatasetManifest,
    ImageArray,
    PinlabDataError,
)

DATASET_FILE = "dataset.json"
DUPLICATES_FILE = "duplicates.json"
"""What `data dedupe` writes beside a dataset's files: about the data, not data."""
IMAGES_FILE = "images.npy"
TABLE_FILES = {name: f"{name}.parquet" for name in TABLE_SCHEMAS}
RESERVED_FILES = frozenset({DATASET_FILE, IMAGES_FILE, *TABLE_FILES.values()})

_ARROW_ERRORS = (pa.ArrowException, OSError)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` only when the block ends without error.

    Written beside `path` under a hidden name, flushed and fsynced, then renamed over it (and
    the directory fsynced), so readers see the old file or the new one, never a torn one, and
    a crash leaves no half-written `path`. Created like any file (mode 0o666 less the umask),
    not owner-only as `tempfile.mkstemp` would make it.
    """
    make_directory(path.parent)
    tmp = _sibling(path, "tmp")
    try:
        with tmp.open("xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through `atomic_writer`."""
    with atomic_writer(path) as f:
        f.write(data)


def write_json_atomic(path: Path, obj: object) -> None:
    """Write `obj` (JSON-able, or a pydantic model) as indented JSON, atomically."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json_object(path: Path, fix: str = "rerun the step that wrote it") -> dict[str, Any]:
    """The JSON object a pinlab step wrote to `path`. A missing, torn or binary file, or one
    that holds another JSON value, is bad input: the error names the file and says `fix`."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PinlabDataError(f"{path} does not exist; {fix}") from exc
    except (OSError, ValueError) as exc:  # ValueError: JSON's and UTF-8's decoding errors
        raise PinlabDataError(f"{path} is not valid JSON ({_one_line(exc)}); {fix}") from exc
    if not isinstance(raw, dict):
        raise PinlabDataError(f"{path} holds a JSON {type(raw).__name__}, not an object; {fix}")
    return raw


ZIP_MAGIC = b"PK\x03\x04"
"""How a zip archive (an .npz, a MovieLens download) starts: its first local file header."""


class NpzArchive:
    """An open .npz archive whose members read with one-line errors (see `open_npz`)."""

    def __init__(self, archive: Any, path: Path, fix: str) -> None:
        self._archive, self._path, self._fix = archive, path, fix

    @property
    def files(self) -> list[str]:
        return list(self._archive.files)

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        try:
            member: npt.NDArray[Any] = self._archive[name]
        except KeyError as exc:
            raise PinlabDataError(
                f"{self._path} has no array {name!r} (it holds {', '.join(self.files) or 'none'}); "
                f"{self._fix}"
            ) from exc
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:  # torn
            raise _unreadable_npz(self._path, exc, self._fix) from exc
        return member


@contextlib.contextmanager
def open_npz(path: Path, fix: str) -> Iterator[NpzArchive]:
    """An .npz archive pinlab wrote, open for reading inside the block.

    A missing, foreign or torn archive, or a member that is absent or torn when read, is a
    PinlabDataError naming the file and saying `fix`. (NumPy itself calls foreign bytes a
    pickle, and leaves the file open when the zip is torn.)
    """
    try:
        file = path.open("rb")
    except FileNotFoundError as exc:
        raise PinlabDataError(f"{path} does not exist; {fix}") from exc
    except OSError as exc:
        raise _unreadable_npz(path, exc, fix) from exc
    with file:
        if file.read(4) != ZIP_MAGIC:
            raise PinlabDataError(f"{path} is not an .npz archive; {fix}")
        file.seek(0)
        try:
            archive = np.load(file, allow_pickle=False)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            raise _unreadable_npz(path, exc, fix) from exc
        with archive:
            yield NpzArchive(archive, path, fix)


def _unreadable_npz(path: Path, exc: BaseException, fix: str) -> PinlabDataError:
    return PinlabDataError(
        f"{path} is not a readable .npz archive ({type(exc).__name__}: {_one_line(exc)}); {fix}"
    )


def save_dataset(
    root: Path,
    manifest: DatasetManifest,
    pins: pa.Table,
    users: pa.Table,
    interactions: pa.Table,
    images: ImageArray | None = None,
    extra: dict[str, bytes] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a dataset directory atomically and return its path.

    Tables are cast to the contract schemas. Extra columns are dropped, except on the users
    table, which keeps them after its own as user attributes (MovieLens's age, gender and
    occupation) that per-group metrics can name. Everything is written
    to a hidden sibling directory first and renamed into place, so `root` only ever holds a
    complete dataset: the old one, or the new one.
    """
    root = Path(root).resolve()
    tables = {
        "pins": _conform(pins, TABLE_SCHEMAS["pins"], "pins table"),
        "users": _conform(users, TABLE_SCHEMAS["users"], "users table", attributes=True),
        "interactions": _conform(interactions, TABLE_SCHEMAS["interactions"], "interactions table"),
    }
    _check_manifest(manifest, tables)
    if images is not None:
        _check_images(images, "images", manifest.image_size)
    extra = dict(extra or {})
    for name in extra:
        if not name or Path(name).name != name or name.startswith(".") or name in RESERVED_FILES:
            raise PinlabDataError(
                f"extra file name {name!r} is not allowed; use a plain file name other than "
                f"{', '.join(sorted(RESERVED_FILES))}"
            )
    check_writable(root, overwrite)
    with atomic_directory(root) as tmp:
        for name, table in tables.items():
            pq.write_table(table, tmp / TABLE_FILES[name])
        if images is not None:
            np.save(tmp / IMAGES_FILE, np.ascontiguousarray(images))
        for name, data in extra.items():
            (tmp / name).write_bytes(data)
        (tmp / DATASET_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return root


@contextlib.contextmanager
def atomic_directory(root: Path) -> Iterator[Path]:
    """A fresh hidden directory beside `root` that replaces `root` whole when the block ends
    without error (its files fsynced first); on any error or interrupt it is removed, so
    `root` only ever holds the old contents or the complete new ones."""
    root = Path(root).resolve()
    tmp = make_sibling_directory(root)
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                with path.open("rb") as f:
                    os.fsync(f.fileno())
        _swap_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_directory(path: Path) -> Path:
    """`path`, created with its parents where missing. Where it cannot be (a file in the way,
    no permission, a read-only file system), a PinlabDataError says where and why."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PinlabDataError(
            f"cannot create the directory {path}: {_reason(path, exc)}; choose another location"
        ) from exc
    return path


def make_sibling_directory(root: Path) -> Path:
    """A fresh hidden directory beside `root` (its parent created where missing), to be
    renamed over `root`."""
    make_directory(root.parent)
    tmp = _sibling(root, "tmp")
    try:
        tmp.mkdir()
    except OSError as exc:  # a file system that takes no new entries here (/proc, read-only)
        raise PinlabDataError(
            f"cannot write {root}: {root.parent} takes no new directory ({_reason(tmp, exc)}); "
            "choose another location"
        ) from exc
    return tmp


def _reason(path: Path, exc: OSError) -> str:
    file = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    return f"{file} is a file, not a directory" if file else exc.strerror or str(exc)


def check_writable(root: Path, overwrite: bool, marker: str = DATASET_FILE) -> None:
    """Refuse a `root` that save_dataset would refuse; loaders call it before any work.

    Overwriting replaces only pinlab's own output: a non-empty directory without `marker`
    (the file pinlab writes last there, a dataset's dataset.json by default) was not written
    by it, and is never replaced.
    """
    if root.exists():
        if not root.is_dir():
            raise PinlabDataError(f"{root} exists and is not a directory; choose another --out")
        if not any(root.iterdir()):
            return
        if not overwrite:
            raise PinlabDataError(
                f"{root} already exists and is not empty; pass overwrite (--overwrite) to "
                "replace it or choose another directory"
            )
        if not (root / marker).is_file():
            raise PinlabDataError(
                f"{root} is not empty and holds no {marker}, so pinlab did not write it and "
                "will not replace it; choose another --out, or empty it yourself"
            )


def load_dataset(root: Path) -> Dataset:
    """Load a dataset directory; anything unreadable raises PinlabDataError saying what to do."""
    return load_with_schemas(root, allow_nulls=False)[0]


def load_with_schemas(root: Path, *, allow_nulls: bool) -> tuple[Dataset, dict[str, pa.Schema]]:
    """The dataset and each table's schema as stored (before casting to the contract)."""
    root = Path(root)
    if not root.exists():
        raise PinlabDataError(
            f"{root} does not exist; create a dataset with `pinlab data synth --out {root}`"
        )
    if not root.is_dir():
        raise PinlabDataError(f"{root} is not a directory; pass a dataset directory")
    manifest = _read_manifest(root)
    tables: dict[str, pa.Table] = {}
    stored: dict[str, pa.Schema] = {}
    for name, schema in TABLE_SCHEMAS.items():
        raw = _read_table(root / TABLE_FILES[name])
        stored[name] = raw.schema
        source = str(root / TABLE_FILES[name])
        tables[name] = _conform(raw, schema, source, allow_nulls, attributes=name == "users")
    dataset = Dataset(
        root=root,
        manifest=manifest,
        pins=tables["pins"],
        users=tables["users"],
        interactions=tables["interactions"],
        images=_read_images(root / IMAGES_FILE),
    )
    return dataset, stored


def _read_manifest(root: Path) -> DatasetManifest:
    path = root / DATASET_FILE
    if not path.is_file():
        if (root / "run.json").is_file() and (root / "data" / DATASET_FILE).is_file():
            raise PinlabDataError(
                f"{root} is a pinlab run, not a dataset; its dataset is {root / 'data'}"
            )
        raise PinlabDataError(
            f"{root} is not a pinlab dataset (no {DATASET_FILE}); create one with "
            f"`pinlab data synth --out {root}`"
        )
    raw = read_json_object(path, "restore it or regenerate the dataset")
    version = raw.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise PinlabDataError(
            f"{path} has schema_version {version}, newer than this pinlab reads "
            f"({SCHEMA_VERSION}); upgrade pinlab"
        )
    try:
        return DatasetManifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise PinlabDataError(
            f"{path}: field {field!r}: {first['msg']} ({exc.error_count()} problem(s) in all); "
            "fix the file or regenerate the dataset"
        ) from exc


def _read_table(path: Path) -> pa.Table:
    if not path.is_file():
        raise PinlabDataError(
            f"{path} is missing; a dataset needs {', '.join(TABLE_FILES.values())} (regenerate it)"
        )
    try:
        return pq.read_table(path)
    except _ARROW_ERRORS as exc:
        raise PinlabDataError(
            f"{path} is not a readable Parquet file ({_one_line(exc)}); regenerate it"
        ) from exc


def _conform(
    table: pa.Table,
    schema: pa.Schema,
    source: str,
    allow_nulls: bool = False,
    *,
    attributes: bool = False,
) -> pa.Table:
    """Select and cast the schema's columns, naming the first column that does not fit; with
    `attributes`, the table's other columns follow (strings, numbers or booleans)."""
    columns = []
    for field in schema:
        matches = table.schema.get_all_field_indices(field.name)
        if not matches and field.name in ADDED_COLUMNS:
            columns.append(pa.chunked_array([pa.nulls(table.num_rows, field.type)]))
            continue
        if not matches:
            raise PinlabDataError(
                f"{source} has no column {field.name!r}; add it (expected columns: "
                f"{', '.join(schema.names)})"
            )
        if len(matches) > 1:
            raise PinlabDataError(
                f"{source} has column {field.name!r} {len(matches)} times; keep one"
            )
        column = table.column(matches[0])
        try:
            column = column.cast(field.type)
        except _ARROW_ERRORS as exc:
            raise PinlabDataError(
                f"{source} column {field.name!r} is {column.type} and cannot be read as "
                f"{field.type} ({_one_line(exc)}); store it as {field.type}"
            ) from exc
        if column.null_count and not field.nullable and not allow_nulls:
            first = int(np.flatnonzero(np.asarray(column.is_null(), dtype=np.bool_))[0])
            raise PinlabDataError(
                f"{source} column {field.name!r} has {column.null_count} null value(s), first "
                f"at row {first}; fill or drop them (`pinlab data validate` lists them)"
            )
        columns.append(column)
    if attributes:
        contract = set(schema.names)
        for index, field in enumerate(table.schema):
            if field.name in contract:
                continue
            if field.name in schema.names:
                raise PinlabDataError(f"{source} has column {field.name!r} twice; keep one")
            if not _is_attribute_type(field.type):
                raise PinlabDataError(
                    f"{source} column {field.name!r} is {field.type}; a user attribute must be "
                    "a string, a number or a boolean (flatten it or drop it)"
                )
            schema = schema.append(field)
            columns.append(table.column(index))
    return pa.Table.from_arrays(columns, schema=schema)


def _is_attribute_type(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
    )


def _read_images(path: Path) -> ImageArray | None:
    if not path.exists():
        return None
    images = read_npy(path, "regenerate it", mmap=True)
    _check_images(images, str(path), None)
    return images


def read_npy(path: Path, fix: str, *, mmap: bool = False) -> npt.NDArray[Any]:
    """The one array of an .npy file, or a PinlabDataError naming the file, what it is and `fix`."""
    try:
        with path.open("rb") as file:
            magic = file.read(6)
        if magic != b"\x93NUMPY":  # NumPy takes any other bytes for a pickle it refuses to load
            what = (
                "an .npz archive, not one .npy array"
                if magic.startswith(ZIP_MAGIC)
                else "not a .npy array (it does not start with NumPy's header)"
            )
            raise PinlabDataError(f"{path} is {what}; {fix}")
        array: npt.NDArray[Any] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except PinlabDataError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise PinlabDataError(
            f"{path} is not a readable .npy array ({_one_line(exc)}); {fix}"
        ) from exc
    return array


def _check_images(images: np.ndarray, source: str, size: int | None) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise PinlabDataError(
            f"{source} is a {images.dtype} array of shape {images.shape}; images must be "
            "(N, H, W, 3) uint8 RGB"
        )
    if size is not None and images.shape[1:3] != (size, size):
        raise PinlabDataError(
            f"{source} are {images.shape[1]}x{images.shape[2]} but the manifest says "
            f"image_size={size}; make them agree"
        )


def _check_manifest(manifest: DatasetManifest, tables: Mapping[str, pa.Table]) -> None:
    for field, name in (
        ("num_pins", "pins"),
        ("num_users", "users"),
        ("num_interactions", "interactions"),
    ):
        claimed, actual = getattr(manifest, field), tables[name].num_rows
        if claimed != actual:
            raise PinlabDataError(
                f"manifest says {field}={claimed} but the {name} table has {actual} rows; "
                f"set {field}={actual}"
            )


def _swap_into_place(new: Path, root: Path) -> None:
    """Rename `new` to `root`; an existing `root` is moved aside first and restored on failure."""
    if not root.exists():
        new.rename(root)
    else:
        old = _sibling(root, "old")
        root.rename(old)
        try:
            new.rename(root)
        except BaseException:
            old.rename(root)
            raise
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(root.parent)


def _sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name beside `path`, so a rename to `path` stays on one filesystem."""
    return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(6)}")


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable; some platforms cannot open directories, where this is a no-op.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def dataset_fingerprint(data_dir: Path) -> str:
    """A BLAKE2b digest of every file of a dataset directory, names and contents, but the
    report `data dedupe` writes there (about the data, not data).

    Two runs with the same fingerprint read byte-identical data. Digests are cached per file
    state (size, mtime), so a workflow that logs several steps on one dataset reads it once.
    """
    digest = hashlib.blake2b(digest_size=16)
    root = data_dir.resolve()
    report = root / DUPLICATES_FILE
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p != report):
        stat = path.stat()
        digest.update(str(path.relative_to(root)).encode())
        digest.update(_file_digest(path, stat.st_size, stat.st_mtime_ns))
    return digest.hexdigest()


@dataclass(frozen=True)
class RunPaths:
    """Where a run directory keeps each artifact: one layout for the commands that write a
    run (pinlab_tasks' `RunLayout`) and the service that reads it (pinlab_serve's `RunFiles`)."""

    root: Path

    @property
    def record(self) -> Path:
        return self.root / "run.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def visual(self) -> Path:
        return self.root / "visual"

    @property
    def encoder(self) -> Path:
        return self.visual / "encoder.pt"

    @property
    def untrained_encoder(self) -> Path:
        return self.visual / "encoder_untrained.pt"

    @property
    def image_text(self) -> Path:
        """The image tower aligned to the MiniLM text space (`pinlab train align`)."""
        return self.visual / "image_text.pt"

    @property
    def generator_dir(self) -> Path:
        """The text-to-image generator (`pinlab train generator`) and its evaluation."""
        return self.root / "generator"

    @property
    def generator(self) -> Path:
        return self.generator_dir / "generator.pt"

    @property
    def classifier(self) -> Path:
        """The classifier of real pins that judges generated ones (`pinlab eval generator`)."""
        return self.visual / "classifier" / "classifier.pt"

    @property
    def recommenders(self) -> Path:
        return self.root / "recommender"

    def recommender(self, name: str) -> Path:
        return self.recommenders / name / "model.pt"

    def trained_recommenders(self) -> list[str]:
        """The names of the recommenders with a saved model, sorted."""
        return sorted(p.parent.name for p in self.recommenders.glob("*/model.pt"))

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def onnx(self) -> Path:
        """ONNX exports of the run's models (`pinlab export onnx`), read by `--runtime onnx`."""
        return self.root / "onnx"

    @property
    def embeddings(self) -> Path:
        """Vectors of every pin as Parquet shards (`pinlab embed`)."""
        return self.root / "embeddings"


def run_data_dir(recorded: Path, run_root: Path) -> Path:
    """The dataset a run recorded, or the run's own data/ where the run (and its data) moved
    since; `dataset_fingerprint` still says whether that is the data the run read."""
    own = RunPaths(run_root).data
    if not recorded.exists() and (own / "dataset.json").is_file():
        return own
    return recorded


@functools.cache
def _file_digest(path: Path, size: int, mtime_ns: int) -> bytes:
    del size, mtime_ns  # part of the cache key only
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.digest()
