"""The synthetic pin world: deterministic, valid, and built the way the docs say."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pinlab_data import (
    SHAPES,
    PinlabDataError,
    SynthConfig,
    load_dataset,
    load_truth,
    synthesize,
    validate_dataset,
    write_synth,
)

TINY = SynthConfig(num_pins=200, num_users=40, num_categories=5, num_creators=10, seed=3)


def test_same_seed_same_world() -> None:
    a, b = synthesize(TINY), synthesize(TINY)
    assert a[1].equals(b[1]) and a[3].equals(b[3])
    np.testing.assert_array_equal(a[4], b[4])
    other = synthesize(TINY.model_copy(update={"seed": 4}))
    assert not np.array_equal(a[4], other[4])


def test_shapes_and_sizes() -> None:
    manifest, pins, users, interactions, images, truth = synthesize(TINY)
    assert images.shape == (200, 32, 32, 3) and images.dtype == np.uint8
    assert pins.num_rows == 200 and users.num_rows == 40
    assert manifest.num_interactions == interactions.num_rows
    assert set(pins.column("category").to_pylist()) <= set(list(SHAPES)[:5])
    assert truth.taste_start.shape == (40, 5)
    np.testing.assert_allclose(truth.taste_end.sum(axis=1), 1.0, rtol=1e-5)
    assert set(pins.column("creator_group").to_pylist()) <= {"established", "emerging"}


def test_palette_does_not_give_away_the_category() -> None:
    """Mean colour per category differs much less than across pins: colour is not a label."""
    _, _, _, _, images, truth = synthesize(
        SynthConfig(num_pins=2000, num_users=5, num_categories=4, seed=1)
    )
    colour = images.reshape(len(images), -1, 3).mean(axis=1)
    per_category = np.stack([colour[truth.pin_category == c].mean(axis=0) for c in range(4)])
    assert per_category.std(axis=0).max() < 0.25 * colour.std(axis=0).min()


def test_captions_name_the_shape() -> None:
    _, pins, _, _, _, _ = synthesize(TINY)
    from pinlab_data._synth import SHAPE_WORDS

    for caption, category in zip(
        pins.column("caption").to_pylist(), pins.column("category").to_pylist(), strict=True
    ):
        assert any(word in caption for word in SHAPE_WORDS[category])


def test_behaviour_follows_taste_and_time() -> None:
    config = SynthConfig(num_pins=600, num_users=80, num_categories=6, seed=2)
    _, _, _, interactions, _, truth = synthesize(config)
    users = interactions.column("user_id").to_numpy() - 1
    items = interactions.column("pin_id").to_numpy() - 1
    times = interactions.column("timestamp").to_numpy()
    assert (np.diff(times)[np.diff(users) == 0] > 0).all()  # each user's log moves forward
    # Users engage most with the category they like most over their time (chance: 1 in 6).
    engaged = np.zeros_like(truth.taste_start)
    np.add.at(engaged, (users, truth.pin_category[items]), 1)
    mean_taste = (truth.taste_start + truth.taste_end) / 2
    assert (engaged.argmax(axis=1) == mean_taste.argmax(axis=1)).mean() > 0.5
    # Some engagement repeats a pin the user already had.
    pairs = users * 10_000 + items
    assert len(np.unique(pairs)) < len(pairs)


def test_emerging_creators_are_shown_less() -> None:
    _, pins, _, interactions, _, _ = synthesize(SynthConfig(num_pins=1500, num_users=300, seed=5))
    group = np.array(pins.column("creator_group").to_pylist())
    items = interactions.column("pin_id").to_numpy() - 1
    share_of_pins = (group == "emerging").mean()
    share_of_engagement = (group[items] == "emerging").mean()
    assert share_of_engagement < share_of_pins


def test_written_world_is_valid_and_keeps_its_truth(tmp_path: Path) -> None:
    write_synth(tmp_path / "world", TINY)
    report = validate_dataset(tmp_path / "world")
    assert report.ok, report.problems
    ds = load_dataset(tmp_path / "world")
    assert ds.manifest.source == "synth" and ds.manifest.seed == 3
    truth = load_truth(tmp_path / "world")
    assert truth.categories == ds.manifest.categories


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: b"", "is not an .npz archive"),
        (lambda data: b"random bytes", "is not an .npz archive"),  # NumPy: "pickled data"
        (lambda data: data[: len(data) // 2], "is not a readable .npz archive (BadZipFile: "),
    ],
    ids=["empty", "garbage", "torn"],
)
def test_a_damaged_truth_file_is_named_by_load_and_by_validate(
    tmp_path: Path, damage: Callable[[bytes], bytes], reason: str
) -> None:
    """Was exit 1 (BadZipFile, EOFError, NumPy's pickle ValueError) in every bench that reads it."""
    write_synth(tmp_path / "world", TINY)
    truth = tmp_path / "world" / "truth.npz"
    truth.write_bytes(damage(truth.read_bytes()))
    message = f"^{re.escape(f'{truth} {reason}')}.*; make it again with `pinlab data synth`"
    with pytest.raises(PinlabDataError, match=message):
        load_truth(tmp_path / "world")
    report = validate_dataset(tmp_path / "world")
    assert not report.ok
    assert [(p.code, bool(re.match(message, p.message))) for p in report.problems] == [
        ("unreadable-truth", True)
    ]


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="num_categories"):
        SynthConfig(num_categories=99)
    with pytest.raises(ValueError, match="num_pins"):
        SynthConfig(num_pins=3)
