"""Logged bandit feedback: the contract's checks name rows; Parquet directories round-trip."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from pinlab_data import (
    FEEDBACK_FILE,
    FEEDBACK_MANIFEST,
    LOGGER_DIST_FILE,
    BanditFeedback,
    BanditFeedbackError,
    PinlabDataError,
    load_feedback,
    save_feedback,
)


def fields(n: int = 6, len_list: int = 2, **changes: Any) -> dict[str, Any]:
    """A valid slate log of n // len_list rounds as BanditFeedback's keyword arguments."""
    rng = np.random.default_rng(0)
    base: dict[str, Any] = {
        "n_actions": 4,
        "len_list": len_list,
        "round_id": np.arange(n) // len_list,
        "action": np.arange(n) % 4,
        "position": np.arange(n) % len_list,
        "reward": rng.integers(0, 2, n).astype(float),
        "pscore": np.full(n, 0.25),
        "context": rng.normal(size=(n, 3)),
    }
    base.update(changes)
    return base


def test_valid_feedback_is_coerced_and_counted() -> None:
    fb = BanditFeedback(**fields(round_id=[0, 0, 1, 1, 2, 2]))
    assert fb.round_id.dtype == np.int64 and fb.reward.dtype == np.float64
    assert len(fb) == 6 and fb.n_rounds == 3 and fb.context_dim == 3
    np.testing.assert_array_equal(fb.round_index(), [0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        (
            {"pscore": [0.25, 0.0, 0.25, 1.5, 0.25, 0.25]},
            "pscore not in (0, 1] at 2 row(s) (rows 1, 3;",
        ),
        (
            {"pscore": [0.25, np.nan, 0.25, 0.25, 0.25, 0.25]},
            "pscore not in (0, 1] at 1 row(s) (rows 1;",
        ),
        (
            {"action": [0, 1, 4, 3, -1, 0]},
            "action outside the catalogue [0, 4) at 2 row(s) (rows 2, 4;",
        ),
        (
            {"position": [0, 1, 0, 2, 0, 1]},
            "position outside the slate [0, 2) at 1 row(s) (rows 3;",
        ),
        ({"reward": [0, 1, np.nan, 0, 0, np.inf]}, "reward not finite at 2 row(s) (rows 2, 5;"),
        (
            {"position": [0, 1, 1, 1, 0, 1]},
            "position repeated within its round at 1 row(s) (rows 3;",
        ),
    ],
)
def test_bad_rows_are_named(changes: dict[str, Any], said: str) -> None:
    with pytest.raises(BanditFeedbackError) as caught:
        BanditFeedback(**fields(**changes))
    assert said in str(caught.value)
    assert isinstance(caught.value, PinlabDataError)  # the CLI exits 2 on it


def test_every_broken_rule_in_one_error() -> None:
    with pytest.raises(BanditFeedbackError, match=r"action outside.*pscore not in"):
        BanditFeedback(**fields(action=[9, 0, 0, 0, 0, 0], pscore=[1, 1, 1, 1, 1, 0]))


def test_many_bad_rows_show_the_first_few_and_the_count() -> None:
    with pytest.raises(BanditFeedbackError, match=r"at 40 row\(s\) \(rows 0, 1, 2, 3, 4, \.\.\."):
        BanditFeedback(**fields(n=40, pscore=np.zeros(40)))


def test_shapes_and_types_are_checked() -> None:
    with pytest.raises(BanditFeedbackError, match="reward has 5"):
        BanditFeedback(**fields(reward=np.zeros(5)))
    with pytest.raises(
        BanditFeedbackError, match="'action' holds float64 values, expected integers"
    ):
        BanditFeedback(**fields(action=np.zeros(6)))
    with pytest.raises(BanditFeedbackError, match="'context' has 1 dimension"):
        BanditFeedback(**fields(context=np.zeros(6)))


def test_slate_pscore_must_agree_within_a_round() -> None:
    with pytest.raises(
        BanditFeedbackError, match=r"pscore_slate differing .* at 1 row\(s\) \(rows 3;"
    ):
        BanditFeedback(**fields(pscore_slate=[0.1, 0.1, 0.2, 0.3, 0.5, 0.5]))


def test_logger_dist_must_match_pscore() -> None:
    dist = np.full((6, 4, 2), 0.25)
    BanditFeedback(**fields(logger_dist=dist))
    dist[2, 2, 0], dist[2, 1, 0] = 0.5, 0.0  # row 2 logged action 2 at position 0
    with pytest.raises(
        BanditFeedbackError, match="differing from pscore at 1 row\\(s\\) \\(rows 2;"
    ):
        BanditFeedback(**fields(logger_dist=dist))


def test_round_trip(tmp_path: Path) -> None:
    dist = np.full((6, 4, 2), 0.25)
    fb = BanditFeedback(**fields(pscore_slate=np.repeat([0.5, 0.25, 1.0], 2), logger_dist=dist))
    out = save_feedback(fb, tmp_path / "logs", source="test", extra={"truth.json": b"{}"})
    back = load_feedback(out)
    for name in ("round_id", "action", "position", "reward", "pscore", "context", "pscore_slate"):
        np.testing.assert_array_equal(getattr(back, name), getattr(fb, name))
    assert back.logger_dist is not None
    np.testing.assert_array_equal(back.logger_dist, dist)
    assert (back.n_actions, back.len_list) == (4, 2)
    assert (out / "truth.json").read_bytes() == b"{}"
    assert json.loads((out / FEEDBACK_MANIFEST).read_text())["source"] == "test"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_round_trip_without_context_or_optionals(tmp_path: Path) -> None:
    fb = BanditFeedback(**fields(context=np.zeros((6, 0))))
    back = load_feedback(save_feedback(fb, tmp_path / "logs"))
    assert back.context.shape == (6, 0) and back.pscore_slate is None and back.logger_dist is None


def test_save_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    fb = BanditFeedback(**fields())
    save_feedback(fb, tmp_path / "logs")
    with pytest.raises(PinlabDataError, match="already exists"):
        save_feedback(fb, tmp_path / "logs")
    save_feedback(fb, tmp_path / "logs", overwrite=True)


def test_load_names_missing_columns(tmp_path: Path) -> None:
    out = save_feedback(BanditFeedback(**fields()), tmp_path / "logs")
    table = pq.read_table(out / FEEDBACK_FILE).drop_columns(["pscore", "position"])
    pq.write_table(table, out / FEEDBACK_FILE)
    with pytest.raises(PinlabDataError, match="lacks column\\(s\\) position, pscore"):
        load_feedback(out)


def test_load_names_bad_rows(tmp_path: Path) -> None:
    out = save_feedback(BanditFeedback(**fields()), tmp_path / "logs")
    table = pq.read_table(out / FEEDBACK_FILE)
    pscore = table.column("pscore").to_numpy().copy()
    pscore[4] = 0.0
    table = table.set_column(table.column_names.index("pscore"), "pscore", [pscore])
    pq.write_table(table, out / FEEDBACK_FILE)
    with pytest.raises(BanditFeedbackError, match="rows 4;"):
        load_feedback(out)


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        # NumPy's own errors were exit 1: "pickled data ... load it unsafely", "not fully written".
        (lambda data: b"random bytes", r"is not a .npy array \(it does not start with NumPy's"),
        (lambda data: data[: len(data) // 2], r"is not a readable .npy array \(Failed to read all"),
    ],
    ids=["garbage", "torn"],
)
def test_a_damaged_logger_dist_is_named(
    tmp_path: Path, damage: Callable[[bytes], bytes], said: str
) -> None:
    dist = np.full((6, 4, 2), 0.25)
    out = save_feedback(BanditFeedback(**fields(logger_dist=dist)), tmp_path / "logs")
    path = out / LOGGER_DIST_FILE
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(PinlabDataError, match=f"{said}.*; write the logs again$"):
        load_feedback(out)


def test_load_refuses_what_is_not_a_feedback_directory(tmp_path: Path) -> None:
    with pytest.raises(PinlabDataError, match="not a bandit feedback directory"):
        load_feedback(tmp_path)
