"""The Open Bandit Dataset loader, on tiny files in the dataset's exact format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pinlab_data import BanditFeedbackError, PinlabDataError, load_open_bandit

HEADER = (
    ",timestamp,item_id,position,click,propensity_score,user_feature_0,user_feature_1,"
    "user_feature_2,user_feature_3,user-item_affinity_0,user-item_affinity_1,user-item_affinity_2"
)
ROWS = [
    "0,2019-11-24 00:00:34.762830+00:00,2,3,0,0.0125,81ce,03a5,c2e4,f975,0.0,0.0,1.0",
    "1,2019-11-24 00:00:53.965051+00:00,0,1,1,0.0125,81ce,03a5,2723,c39b,0.0,2.0,0.0",
    "2,2019-11-24 00:01:02.000000+00:00,1,2,0,0.0125,aa11,03a5,2723,c39b,0.5,0.0,0.0",
]


def write(folder: Path, rows: list[str], items: int | None = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "all.csv"
    csv.write_text("\n".join([HEADER, *rows]) + "\n")
    if items is not None:
        lines = [",item_id,item_feature_0"] + [f"{i},{i},0.1" for i in range(items)]
        (folder / "item_context.csv").write_text("\n".join(lines) + "\n")
    return csv


def test_rows_become_feedback(tmp_path: Path) -> None:
    fb = load_open_bandit(write(tmp_path / "random" / "all", ROWS, items=80))
    assert (fb.n_actions, fb.len_list, len(fb)) == (80, 3, 3)  # catalogue from item_context.csv
    np.testing.assert_array_equal(fb.action, [2, 0, 1])
    np.testing.assert_array_equal(fb.position, [2, 0, 1])  # 1-based in the file
    np.testing.assert_array_equal(fb.reward, [0, 1, 0])
    np.testing.assert_array_equal(fb.round_id, [0, 1, 2])
    # one-hot user features (2 + 1 + 2 + 2 categories, sorted) then the affinities
    assert fb.context.shape == (3, 7 + 3)
    np.testing.assert_array_equal(fb.context[1], [1, 0, 1, 1, 0, 1, 0, 0, 2, 0])


def test_without_item_context_the_catalogue_is_the_largest_id(tmp_path: Path) -> None:
    assert load_open_bandit(write(tmp_path, ROWS, items=None)).n_actions == 3


def test_bad_rows_are_named(tmp_path: Path) -> None:
    rows = [*ROWS]
    rows[1] = rows[1].replace(",0.0125,", ",0.0,")
    rows[2] = rows[2].replace(",1,2,0,", ",7,2,0,")
    with pytest.raises(BanditFeedbackError, match=r"action outside .* \(rows 2;.*pscore not in"):
        load_open_bandit(write(tmp_path, rows))


def test_missing_columns_are_named(tmp_path: Path) -> None:
    csv = tmp_path / "all.csv"
    csv.write_text("item_id,click\n1,0\n")
    with pytest.raises(PinlabDataError, match="lacks column\\(s\\) position, propensity_score"):
        load_open_bandit(csv)
    with pytest.raises(PinlabDataError, match="not a file"):
        load_open_bandit(tmp_path / "nope.csv")
