"""A JSON-able summary of a dataset: what is in it, how active it is, over what time."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinlab_data.contracts import Dataset, Int64Array


def describe_dataset(ds: Dataset) -> dict[str, object]:
    """Counts, categories, creator groups, activity per user and pin, time range and images."""
    manifest, pins, interactions = ds.manifest, ds.pins, ds.interactions
    num_pins, num_users = pins.num_rows, ds.users.num_rows
    pairs = interactions.group_by(["user_id", "pin_id"]).aggregate([]).num_rows
    groups = pins.group_by("creator_group").aggregate(
        [("pin_id", "count"), ("creator_id", "count_distinct")]
    )
    return {
        "name": manifest.name,
        "source": manifest.source,
        "seed": manifest.seed,
        "schema_version": manifest.schema_version,
        "num_pins": num_pins,
        "num_users": num_users,
        "num_interactions": interactions.num_rows,
        "num_creators": int(pc.count_distinct(pins.column("creator_id")).as_py()),
        "categories": _value_counts(pins.column("category")),
        "creator_groups": {
            row["creator_group"]: {
                "pins": row["pin_id_count"],
                "creators": row["creator_id_count_distinct"],
            }
            for row in sorted(groups.to_pylist(), key=lambda row: str(row["creator_group"]))
        },
        "events": _value_counts(interactions.column("event")),
        "interactions_per_user": _activity(ds.user_ids(), interactions.column("user_id")),
        "interactions_per_pin": _activity(ds.pin_ids(), interactions.column("pin_id")),
        "time_range": _time_range(interactions.column("timestamp")),
        "density": float(f"{pairs / (num_users * num_pins):.6g}") if num_users * num_pins else 0.0,
        "images": _images(ds),
    }


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    """Counts per value, most common first."""
    counts = [
        (str(row["values"]), int(row["counts"])) for row in pc.value_counts(column).to_pylist()
    ]
    return dict(sorted(counts, key=lambda item: (-item[1], item[0])))


def _activity(ids: Int64Array, column: pa.ChunkedArray) -> dict[str, float] | None:
    """Distribution of interactions per id, ids with none included."""
    if len(ids) == 0:
        return None
    seen, counts = np.unique(np.asarray(column, dtype=np.int64), return_counts=True)
    if len(seen) == 0:
        per_id = np.zeros(len(ids), dtype=np.int64)
    else:
        position = np.minimum(np.searchsorted(seen, ids), len(seen) - 1)
        per_id = np.where(seen[position] == ids, counts[position], 0)
    return {
        "min": int(per_id.min()),
        "median": round(float(np.median(per_id)), 2),
        "p90": round(float(np.percentile(per_id, 90)), 2),
        "max": int(per_id.max()),
    }


def _time_range(column: pa.ChunkedArray) -> dict[str, object] | None:
    if len(column) == 0:
        return None
    bounds = pc.min_max(column).as_py()
    start, end = int(bounds["min"]), int(bounds["max"])
    return {"start": _iso(start), "end": _iso(end), "days": round((end - start) / 86_400, 2)}


def _iso(timestamp: int) -> str:
    try:
        return datetime.fromtimestamp(timestamp, tz=UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return f"{timestamp} (not a valid unix time; run `pinlab data validate`)"


def _images(ds: Dataset) -> dict[str, int | None]:
    pins, images = ds.pins, ds.images
    with_image = pc.or_(
        pc.is_valid(pins.column("image_row")), pc.is_valid(pins.column("image_path"))
    )
    return {
        "packed": 0 if images is None else int(images.shape[0]),
        "height": None if images is None else int(images.shape[1]),
        "width": None if images is None else int(images.shape[2]),
        "pins_with_image": int(pc.sum(with_image).as_py() or 0),
    }
