"""describe_dataset: a JSON-able summary whose numbers can be checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from pinlab_data import DatasetManifest, describe_dataset, load_dataset, save_dataset


def saved(tmp_path: Path, images: bool = True) -> Path:
    pins = pa.table(
        {
            "pin_id": [1, 2, 3, 4],
            "caption": ["a", "b", "c", "d"],
            "category": ["star", "heart", "star", "ring"],
            "creator_id": [7, 7, 8, 9],
            "creator_group": ["established", "established", "emerging", "emerging"],
            "image_row": [0, 1, 2, None],
            "image_path": [None, None, None, None],
        }
    )
    interactions = pa.table(
        {
            "user_id": [1, 1, 1, 2, 2, 1],
            "pin_id": [1, 2, 3, 1, 2, 1],
            "timestamp": [86_400, 2 * 86_400, 3 * 86_400, 86_400, 86_400, 5 * 86_400],
            "event": ["view", "view", "save", "click", "view", "view"],
            "weight": [1.0, 1.0, 4.0, 2.0, 1.0, 1.0],
        }
    )
    manifest = DatasetManifest(
        name="d", source="test", seed=5, num_pins=4, num_users=3, num_interactions=6
    )
    return save_dataset(
        tmp_path / "ds",
        manifest,
        pins,
        pa.table({"user_id": [1, 2, 3]}),
        interactions,
        images=np.zeros((3, 2, 5, 3), dtype=np.uint8) if images else None,
    )


def test_describe_by_hand(tmp_path: Path) -> None:
    summary = describe_dataset(load_dataset(saved(tmp_path)))
    assert json.loads(json.dumps(summary)) == summary
    assert summary == {
        "name": "d",
        "source": "test",
        "seed": 5,
        "schema_version": 1,
        "num_pins": 4,
        "num_users": 3,
        "num_interactions": 6,
        "num_creators": 3,
        "categories": {"star": 2, "heart": 1, "ring": 1},
        "creator_groups": {
            "emerging": {"pins": 2, "creators": 2},
            "established": {"pins": 2, "creators": 1},
        },
        "events": {"view": 4, "click": 1, "save": 1},
        "interactions_per_user": {"min": 0, "median": 2.0, "p90": 3.6, "max": 4},
        "interactions_per_pin": {"min": 0, "median": 1.5, "p90": 2.7, "max": 3},
        "time_range": {
            "start": "1970-01-02T00:00:00+00:00",
            "end": "1970-01-06T00:00:00+00:00",
            "days": 4.0,
        },
        "density": 0.416667,  # 5 of 12 user-pin pairs, to 6 significant digits
        "images": {"packed": 3, "height": 2, "width": 5, "pins_with_image": 3},
    }
    categories = summary["categories"]
    assert isinstance(categories, dict) and list(categories) == ["star", "heart", "ring"]


def test_describe_without_images(tmp_path: Path) -> None:
    summary = describe_dataset(load_dataset(saved(tmp_path, images=False)))
    assert summary["images"] == {
        "packed": 0,
        "height": None,
        "width": None,
        "pins_with_image": 3,
    }
