"""Content checks of a dataset directory: every problem is reported, none is raised."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from pinlab_data._store import DATASET_FILE, IMAGES_FILE, TABLE_FILES, load_with_schemas
from pinlab_data._synth import TRUTH_FILE, load_truth
from pinlab_data.contracts import (
    TABLE_SCHEMAS,
    Dataset,
    EventKind,
    Int64Array,
    PinlabDataError,
    Problem,
    Severity,
    ValidationReport,
)

BoolArray = npt.NDArray[np.bool_]

MAX_ROWS_SHOWN = 5
FUTURE_SLACK_S = 366 * 86_400
"""Timestamps more than this past now are wrong (often milliseconds stored as seconds)."""

PINS, USERS, INTERACTIONS = (TABLE_FILES[name] for name in ("pins", "users", "interactions"))


def validate_dataset(root: Path) -> ValidationReport:
    """Check a dataset directory; errors first, then warnings.

    A directory that cannot be loaded at all gives one `unreadable-dataset` error.
    """
    try:
        dataset, stored = load_with_schemas(root, allow_nulls=True)
    except PinlabDataError as exc:
        problem = Problem(
            severity="error", code="unreadable-dataset", where=str(root), message=str(exc)
        )
        return ValidationReport(root=str(root), problems=[problem])
    problems = [
        *_type_problems(stored),
        *_null_problems(dataset),
        *_id_problems(dataset),
        *_interaction_problems(dataset),
        *_image_problems(dataset),
        *_manifest_problems(dataset),
        *_truth_problems(root),
    ]
    problems.sort(key=lambda p: p.severity != "error")
    counts = {
        "pins": dataset.pins.num_rows,
        "users": dataset.users.num_rows,
        "interactions": dataset.interactions.num_rows,
    }
    return ValidationReport(root=str(root), problems=problems, counts=counts)


def _type_problems(stored: dict[str, pa.Schema]) -> list[Problem]:
    problems = []
    for name, schema in TABLE_SCHEMAS.items():
        for field in schema:
            if field.name not in stored[name].names:
                continue  # an ADDED_COLUMNS column of an older dataset, read as null
            actual = stored[name].field(field.name).type
            if actual != field.type:
                problems.append(
                    Problem(
                        severity="warning",
                        code="column-type",
                        where=f"{TABLE_FILES[name]} column {field.name}",
                        message=f"column {field.name!r} is stored as {actual}, not "
                        f"{field.type}; it is cast on every load, so rewrite it as {field.type}",
                    )
                )
    return problems


def _null_problems(dataset: Dataset) -> list[Problem]:
    problems = []
    for name, schema in TABLE_SCHEMAS.items():
        table = getattr(dataset, name)
        for field in schema:
            if field.nullable:
                continue
            problems += _at_rows(
                "error",
                "null-value",
                TABLE_FILES[name],
                _nulls(table, field.name),
                f"null value(s) in column {field.name!r}",
                "fill or drop those rows",
            )
    return problems


def _id_problems(dataset: Dataset) -> list[Problem]:
    problems = []
    for table, file, column, code, what in (
        (dataset.pins, PINS, "pin_id", "duplicate-pin-id", "pin(s)"),
        (dataset.users, USERS, "user_id", "duplicate-user-id", "user(s)"),
    ):
        ids, known = _ints(table, column)
        problems += _at_rows(
            "error",
            code,
            file,
            _repeats([ids], known),
            f"{what} repeat an earlier {column}",
            f"give each a unique {column}",
            table.column(column),
        )
    return problems


def _interaction_problems(dataset: Dataset) -> list[Problem]:
    table = dataset.interactions
    users, users_known = _ints(table, "user_id")
    pins, pins_known = _ints(table, "pin_id")
    times, times_known = _ints(table, "timestamp")
    weights_col = table.column("weight")
    weights = np.asarray(pc.fill_null(weights_col, 1.0), dtype=np.float32)
    weights_known = ~_nulls(table, "weight")
    events = table.column("event")
    events_known = ~_nulls(table, "event")
    event_codes = np.asarray(pc.fill_null(pc.index_in(events, value_set=pc.unique(events)), -1))
    user_ids, user_ids_known = _ints(dataset.users, "user_id")
    pin_ids, pin_ids_known = _ints(dataset.pins, "pin_id")
    complete = users_known & pins_known & times_known & weights_known & events_known
    known_kinds = pa.array([kind.value for kind in EventKind], pa.string())
    unknown_kind = ~np.asarray(pc.fill_null(pc.is_in(events, value_set=known_kinds), True))
    now = int(time.time())
    return [
        *_at_rows(
            "error",
            "dangling-user-id",
            INTERACTIONS,
            users_known & ~np.isin(users, user_ids[user_ids_known]),
            f"interaction(s) refer to a user_id not in {USERS}",
            f"add those users to {USERS} or drop the interactions",
            table.column("user_id"),
        ),
        *_at_rows(
            "error",
            "dangling-pin-id",
            INTERACTIONS,
            pins_known & ~np.isin(pins, pin_ids[pin_ids_known]),
            f"interaction(s) refer to a pin_id not in {PINS}",
            f"add those pins to {PINS} or drop the interactions",
            table.column("pin_id"),
        ),
        *_at_rows(
            "warning",
            "user-without-interactions",
            USERS,
            user_ids_known & ~np.isin(user_ids, users[users_known]),
            "user(s) have no interactions",
            "drop them or add their interactions",
            dataset.users.column("user_id"),
        ),
        *_at_rows(
            "error",
            "negative-user-id",
            USERS,
            user_ids_known & (user_ids < 0),
            "user(s) have a negative user_id",
            "ids are non-negative integers; renumber them (`pinlab data load` does)",
            dataset.users.column("user_id"),
        ),
        *_at_rows(
            "error",
            "negative-pin-id",
            PINS,
            pin_ids_known & (pin_ids < 0),
            "pin(s) have a negative pin_id",
            "ids are non-negative integers; renumber them (`pinlab data load` does)",
            dataset.pins.column("pin_id"),
        ),
        *_at_rows(
            "error",
            "negative-timestamp",
            INTERACTIONS,
            times_known & (times < 0),
            "interaction(s) have a negative timestamp",
            "timestamps are unix seconds; fix or drop those rows",
            table.column("timestamp"),
        ),
        *_at_rows(
            "error",
            "future-timestamp",
            INTERACTIONS,
            times_known & (times > now + FUTURE_SLACK_S),
            "interaction(s) have a timestamp more than a year in the future",
            "timestamps are unix seconds (milliseconds divided by 1000); fix those rows",
            table.column("timestamp"),
        ),
        *_at_rows(
            "error",
            "unknown-event",
            INTERACTIONS,
            events_known & unknown_kind,
            "interaction(s) have an unknown event",
            f"use one of {', '.join(kind.value for kind in EventKind)}",
            events,
        ),
        *_at_rows(
            "error",
            "non-positive-weight",
            INTERACTIONS,
            weights_known & ~(np.isfinite(weights) & (weights > 0)),
            "interaction(s) have a weight that is not a positive number",
            "make weights positive (see EVENT_WEIGHTS) or drop those rows",
            weights_col,
        ),
        *_at_rows(
            "warning",
            "duplicate-interaction",
            INTERACTIONS,
            complete
            & _repeats([users, pins, times, event_codes, weights.view(np.int32)], complete),
            "interaction(s) repeat an earlier row exactly",
            "drop the repeats unless they are real repeated events",
        ),
    ]


def _image_problems(dataset: Dataset) -> list[Problem]:
    pins = dataset.pins
    num_images = 0 if dataset.images is None else len(dataset.images)
    rows, rows_known = _ints(pins, "image_row")
    paths = pins.column("image_path")
    paths_known = ~_nulls(pins, "image_path")
    missing = [
        path
        for path in pc.unique(pc.drop_null(paths)).to_pylist()
        if not (dataset.root / path).is_file()
    ]
    path_missing = np.asarray(
        pc.fill_null(pc.is_in(paths, value_set=pa.array(missing, pa.string())), False),
        dtype=np.bool_,
    )
    holds = (
        f"{IMAGES_FILE} has {num_images} images"
        if dataset.images is not None
        else (f"there is no {IMAGES_FILE}")
    )
    return [
        *_at_rows(
            "error",
            "image-row-out-of-range",
            PINS,
            rows_known & ((rows < 0) | (rows >= num_images)),
            f"pin(s) have an image_row outside {IMAGES_FILE} ({holds})",
            "point image_row at an existing image or set it to null",
            pins.column("image_row"),
        ),
        *_at_rows(
            "error",
            "image-file-missing",
            PINS,
            paths_known & path_missing,
            "pin(s) have an image_path with no file (paths are relative to the dataset)",
            "add the files or fix the paths",
            paths,
        ),
        *_at_rows(
            "warning",
            "pin-without-image",
            PINS,
            ~rows_known & ~paths_known,
            "pin(s) have neither image_row nor image_path",
            "visual models skip them; add an image if they should be searchable",
            pins.column("pin_id"),
        ),
    ]


def _truth_problems(root: Path) -> list[Problem]:
    """A synthetic world's truth.npz, if it has one, must load: its metrics read it."""
    if not (root / TRUTH_FILE).is_file():
        return []
    try:
        load_truth(root)
    except PinlabDataError as exc:
        return [
            Problem(severity="error", code="unreadable-truth", where=TRUTH_FILE, message=str(exc))
        ]
    return []


def _manifest_problems(dataset: Dataset) -> list[Problem]:
    manifest = dataset.manifest
    problems = []
    for field, table, file in (
        ("num_pins", dataset.pins, PINS),
        ("num_users", dataset.users, USERS),
        ("num_interactions", dataset.interactions, INTERACTIONS),
    ):
        claimed = getattr(manifest, field)
        if claimed != table.num_rows:
            problems.append(
                Problem(
                    severity="error",
                    code="manifest-count-mismatch",
                    where=f"{DATASET_FILE} {field}",
                    message=f"{DATASET_FILE} says {field}={claimed} but {file} has "
                    f"{table.num_rows} rows; set {field} to {table.num_rows}",
                )
            )
    size, images = manifest.image_size, dataset.images
    if size is not None and images is not None and images.shape[1:3] != (size, size):
        problems.append(
            Problem(
                severity="error",
                code="image-size-mismatch",
                where=IMAGES_FILE,
                message=f"{IMAGES_FILE} images are {images.shape[1]}x{images.shape[2]} but "
                f"{DATASET_FILE} says image_size={size}; make them agree",
            )
        )
    if manifest.categories:
        categories = dataset.pins.column("category")
        listed = pc.is_in(categories, value_set=pa.array(manifest.categories, pa.string()))
        problems += _at_rows(
            "warning",
            "unlisted-category",
            PINS,
            ~np.asarray(pc.fill_null(listed, True), dtype=np.bool_),
            f"pin(s) have a category not listed in {DATASET_FILE}",
            "add them to the manifest's categories or fix the pins",
            categories,
        )
    return problems


def _at_rows(
    severity: Severity,
    code: str,
    file: str,
    mask: BoolArray,
    what: str,
    fix: str,
    values: pa.ChunkedArray | None = None,
) -> list[Problem]:
    """One problem for the rows in `mask`, naming the first few (and their values)."""
    rows = np.flatnonzero(mask)
    if len(rows) == 0:
        return []
    shown = rows[:MAX_ROWS_SHOWN]
    more = ", ..." if len(rows) > len(shown) else ""
    detail = f"rows {', '.join(str(r) for r in shown)}{more}"
    if values is not None:
        detail += f"; values {', '.join(repr(v) for v in values.take(shown).to_pylist())}{more}"
    return [
        Problem(
            severity=severity,
            code=code,
            where=f"{file} row {rows[0]}",
            message=f"{len(rows)} {what} ({detail}); {fix}",
        )
    ]


def _ints(table: pa.Table, column: str) -> tuple[Int64Array, BoolArray]:
    """A column's values (nulls as 0) and which of them are known."""
    values = np.asarray(pc.fill_null(table.column(column), 0), dtype=np.int64)
    return values, ~_nulls(table, column)


def _nulls(table: pa.Table, column: str) -> BoolArray:
    return np.asarray(table.column(column).is_null(), dtype=np.bool_)


def _repeats(keys: list[npt.NDArray[np.generic]], among: BoolArray) -> BoolArray:
    """Rows of `among` whose keys equal those of an earlier row of `among`."""
    rows = np.flatnonzero(among)
    columns = [key[rows] for key in keys]
    order = np.lexsort(columns[::-1])  # stable, so the first of equal rows stays first
    ordered = [column[order] for column in columns]
    same = np.ones(max(len(rows) - 1, 0), dtype=np.bool_)
    for column in ordered:
        same &= column[1:] == column[:-1]
    repeated = np.zeros(len(among), dtype=np.bool_)
    repeated[rows[order[1:][same]]] = True
    return repeated
