"""Every validation check reports its code at the right place, and never raises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinlab_data import (
    TABLE_SCHEMAS,
    DatasetManifest,
    Problem,
    ValidationReport,
    save_dataset,
    validate_dataset,
)

PINS: dict[str, list[Any]] = {
    "pin_id": [10, 11, 12, 13],
    "caption": ["a", "b", "c", "d"],
    "category": ["star", "star", "heart", "heart"],
    "creator_id": [1, 1, 2, 2],
    "creator_group": ["established", "established", "emerging", "emerging"],
    "image_row": [0, 1, 2, 3],
    "image_path": [None, None, None, None],
}
USERS: dict[str, list[Any]] = {"user_id": [1, 2, 3]}
INTERACTIONS: dict[str, list[Any]] = {
    "user_id": [1, 1, 2, 2, 3, 3],
    "pin_id": [10, 11, 12, 13, 10, 12],
    "timestamp": [100, 200, 100, 300, 50, 60],
    "event": ["view", "save", "click", "view", "view", "view"],
    "weight": [1.0, 4.0, 2.0, 1.0, 1.0, 1.0],
}


def dataset(tmp_path: Path, **tables: dict[str, list[Any]]) -> Path:
    """A valid dataset, then the given columns written over it (nulls allowed everywhere)."""
    root = save_dataset(
        tmp_path / "ds",
        DatasetManifest(
            name="v",
            source="test",
            num_pins=4,
            num_users=3,
            num_interactions=6,
            image_size=2,
            categories=["star", "heart"],
        ),
        pa.table(PINS),
        pa.table(USERS),
        pa.table(INTERACTIONS),
        images=np.zeros((4, 2, 2, 3), dtype=np.uint8),
    )
    base = {"pins": PINS, "users": USERS, "interactions": INTERACTIONS}
    for name, changes in tables.items():
        columns = base[name] | changes
        schema = pa.schema(
            [f.with_nullable(True) for f in TABLE_SCHEMAS[name] if f.name in columns]
        )
        pq.write_table(pa.table(columns, schema=schema), root / f"{name}.parquet")
    return root


def only(report: ValidationReport, code: str) -> Problem:
    found = [p for p in report.problems if p.code == code]
    assert len(found) == 1, report.problems
    assert "\n" not in found[0].message
    return found[0]


def codes(report: ValidationReport) -> set[str]:
    return {p.code for p in report.problems}


def test_a_clean_dataset_has_no_problems(tmp_path: Path) -> None:
    report = validate_dataset(dataset(tmp_path))
    assert report.ok and report.problems == []
    assert report.counts == {"pins": 4, "users": 3, "interactions": 6}


def test_unreadable_dataset_is_one_error(tmp_path: Path) -> None:
    report = validate_dataset(tmp_path / "missing")
    assert not report.ok
    [problem] = report.problems
    assert problem.code == "unreadable-dataset"
    assert problem.where == str(tmp_path / "missing")
    assert "does not exist" in problem.message


def test_column_type(tmp_path: Path) -> None:
    root = dataset(tmp_path)
    pq.write_table(pa.table({"user_id": pa.array([1, 2, 3], pa.int32())}), root / "users.parquet")
    report = validate_dataset(root)
    problem = only(report, "column-type")
    assert (problem.severity, problem.where) == ("warning", "users.parquet column user_id")
    assert "stored as int32, not int64" in problem.message
    assert report.ok


def test_null_values(tmp_path: Path) -> None:
    report = validate_dataset(
        dataset(tmp_path, interactions={"pin_id": [10, 11, None, 13, 10, None]})
    )
    problem = only(report, "null-value")
    assert (problem.severity, problem.where) == ("error", "interactions.parquet row 2")
    assert problem.message.startswith("2 null value(s) in column 'pin_id' (rows 2, 5)")
    assert "dangling-pin-id" not in codes(report)


def test_duplicate_ids(tmp_path: Path) -> None:
    report = validate_dataset(
        dataset(tmp_path, pins={"pin_id": [10, 11, 10, 10]}, users={"user_id": [1, 2, 2]})
    )
    pins = only(report, "duplicate-pin-id")
    assert (pins.severity, pins.where) == ("error", "pins.parquet row 2")
    assert "2 pin(s) repeat an earlier pin_id (rows 2, 3; values 10, 10)" in pins.message
    assert only(report, "duplicate-user-id").where == "users.parquet row 2"


def test_duplicate_interactions_are_a_warning(tmp_path: Path) -> None:
    interactions = {k: [*v, v[1]] for k, v in INTERACTIONS.items()}
    root = dataset(tmp_path, interactions=interactions)
    (root / "dataset.json").write_text(
        json.dumps(json.loads((root / "dataset.json").read_text()) | {"num_interactions": 7})
    )
    report = validate_dataset(root)
    problem = only(report, "duplicate-interaction")
    assert (problem.severity, problem.where) == ("warning", "interactions.parquet row 6")
    assert report.ok


def test_a_repeat_with_another_event_is_not_a_duplicate(tmp_path: Path) -> None:
    report = validate_dataset(
        dataset(tmp_path, interactions={"pin_id": [10, 10, 12, 13, 10, 12], "timestamp": [1] * 6})
    )
    assert "duplicate-interaction" not in codes(report)


def test_dangling_ids(tmp_path: Path) -> None:
    report = validate_dataset(
        dataset(
            tmp_path,
            interactions={"user_id": [1, 1, 2, 9, 3, 3], "pin_id": [10, 99, 12, 13, 10, 98]},
        )
    )
    pin = only(report, "dangling-pin-id")
    assert (pin.severity, pin.where) == ("error", "interactions.parquet row 1")
    assert "2 interaction(s) refer to a pin_id not in pins.parquet (rows 1, 5; values 99, 98)" in (
        pin.message
    )
    user = only(report, "dangling-user-id")
    assert user.where == "interactions.parquet row 3"
    assert "values 9" in user.message


def test_negative_ids(tmp_path: Path) -> None:
    # Ids are non-negative int64s everywhere (serving refuses a negative one as malformed).
    report = validate_dataset(
        dataset(
            tmp_path,
            pins={"pin_id": [10, -11, 12, 13]},
            users={"user_id": [1, 2, -3]},
            interactions={"user_id": [1, 1, 2, 2, -3, -3], "pin_id": [10, -11, 12, 13, 10, 12]},
        )
    )
    pin = only(report, "negative-pin-id")
    assert (pin.severity, pin.where) == ("error", "pins.parquet row 1")
    user = only(report, "negative-user-id")
    assert (user.severity, user.where) == ("error", "users.parquet row 2")
    assert "values -3" in user.message and "renumber" in user.message
    assert not codes(report) & {"dangling-pin-id", "dangling-user-id"}


def test_messages_show_the_first_five_rows_and_the_total(tmp_path: Path) -> None:
    report = validate_dataset(dataset(tmp_path, interactions={"pin_id": [90, 91, 92, 93, 94, 95]}))
    problem = only(report, "dangling-pin-id")
    assert problem.message.startswith(
        "6 interaction(s) refer to a pin_id not in pins.parquet "
        "(rows 0, 1, 2, 3, 4, ...; values 90, 91, 92, 93, 94, ...)"
    )


def test_users_without_interactions(tmp_path: Path) -> None:
    report = validate_dataset(dataset(tmp_path, users={"user_id": [1, 2, 3, 4]}))
    problem = only(report, "user-without-interactions")
    assert (problem.severity, problem.where) == ("warning", "users.parquet row 3")
    assert "values 4" in problem.message


def test_bad_timestamps(tmp_path: Path) -> None:
    report = validate_dataset(
        dataset(tmp_path, interactions={"timestamp": [100, -5, 100, 1_700_000_000_000, 50, 60]})
    )
    negative = only(report, "negative-timestamp")
    assert (negative.severity, negative.where) == ("error", "interactions.parquet row 1")
    future = only(report, "future-timestamp")
    assert (future.severity, future.where) == ("error", "interactions.parquet row 3")
    assert "milliseconds" in future.message


def test_unknown_events(tmp_path: Path) -> None:
    report = validate_dataset(
        dataset(tmp_path, interactions={"event": ["view", "view", "like", "view", "view", "x"]})
    )
    problem = only(report, "unknown-event")
    assert (problem.severity, problem.where) == ("error", "interactions.parquet row 2")
    assert "values 'like', 'x'" in problem.message
    assert "view, click, save" in problem.message


def test_non_positive_weights(tmp_path: Path) -> None:
    report = validate_dataset(
        dataset(tmp_path, interactions={"weight": [1.0, 0.0, 1.0, -2.0, float("nan"), 1.0]})
    )
    problem = only(report, "non-positive-weight")
    assert (problem.severity, problem.where) == ("error", "interactions.parquet row 1")
    assert problem.message.startswith("3 interaction(s)")


def test_image_rows_and_paths(tmp_path: Path) -> None:
    root = dataset(
        tmp_path,
        pins={
            "image_row": [0, 4, None, None],
            "image_path": [None, None, "img/here.png", "img/gone.png"],
        },
    )
    (root / "img").mkdir()
    (root / "img" / "here.png").write_bytes(b"")
    report = validate_dataset(root)
    out = only(report, "image-row-out-of-range")
    assert (out.severity, out.where) == ("error", "pins.parquet row 1")
    assert "images.npy has 4 images" in out.message
    missing = only(report, "image-file-missing")
    assert (missing.where, missing.severity) == ("pins.parquet row 3", "error")
    assert "'img/gone.png'" in missing.message
    assert "pin-without-image" not in codes(report)


def test_pins_without_images(tmp_path: Path) -> None:
    report = validate_dataset(dataset(tmp_path, pins={"image_row": [0, 1, None, 3]}))
    problem = only(report, "pin-without-image")
    assert (problem.severity, problem.where) == ("warning", "pins.parquet row 2")
    assert "values 12" in problem.message
    assert report.ok


def test_image_rows_without_images_npy(tmp_path: Path) -> None:
    root = dataset(tmp_path)
    (root / "images.npy").unlink()
    problem = only(validate_dataset(root), "image-row-out-of-range")
    assert problem.message.startswith("4 pin(s)")
    assert "there is no images.npy" in problem.message


def test_manifest_disagreements(tmp_path: Path) -> None:
    root = dataset(tmp_path)
    manifest = json.loads((root / "dataset.json").read_text())
    changed = manifest | {"num_pins": 5, "image_size": 3, "categories": ["star"]}
    (root / "dataset.json").write_text(json.dumps(changed))
    report = validate_dataset(root)
    count = only(report, "manifest-count-mismatch")
    assert (count.severity, count.where) == ("error", "dataset.json num_pins")
    assert "num_pins=5 but pins.parquet has 4 rows; set num_pins to 4" in count.message
    size = only(report, "image-size-mismatch")
    assert (size.severity, size.where) == ("error", "images.npy")
    category = only(report, "unlisted-category")
    assert (category.severity, category.where) == ("warning", "pins.parquet row 2")


def test_errors_come_before_warnings(tmp_path: Path) -> None:
    report = validate_dataset(
        dataset(tmp_path, users={"user_id": [1, 2, 3, 4]}, pins={"pin_id": [10, 11, 12, 12]})
    )
    assert [p.severity for p in report.problems] == ["error"] * 3 + ["warning"]
