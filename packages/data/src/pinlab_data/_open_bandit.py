"""The Open Bandit Dataset (Saito et al. 2021, ZOZOTOWN) as `BanditFeedback`.

One CSV per logging policy and campaign (`{random,bts}/{all,men,women}/{campaign}.csv`, the
layout of both the full download and the small sample the `obp` package ships), one row per
impression: `item_id`, 1-based `position`, `click`, `propensity_score` (the logger's marginal
probability of the item at that position), four hashed categorical `user_feature_*` and
`user-item_affinity_*` numbers; `item_context.csv` beside it lists the catalogue. Rows carry no
slate id, so each row is its own round (as obp treats them). The context is the user features
one-hot (categories in sorted order) followed by the affinities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from pinlab_data._store import _ARROW_ERRORS, _one_line
from pinlab_data.contracts import BanditFeedback, PinlabDataError

OPEN_BANDIT_COLUMNS = ("item_id", "position", "click", "propensity_score")
OPEN_BANDIT_LEN_LIST = 3
"""ZOZOTOWN shows three items per impression."""


def load_open_bandit(csv: Path, *, n_actions: int | None = None) -> BanditFeedback:
    """Read one Open Bandit Dataset CSV; bad rows are named by `BanditFeedback`.

    `n_actions` defaults to the rows of `item_context.csv` beside the file (the campaign's
    catalogue), else to the largest item id + 1.
    """
    csv = Path(csv)
    if not csv.is_file():
        raise PinlabDataError(
            f"{csv} is not a file; pass an Open Bandit Dataset CSV such as random/all/all.csv"
        )
    try:
        table = pv.read_csv(csv)
    except _ARROW_ERRORS as exc:
        raise PinlabDataError(f"{csv} is not a readable CSV ({_one_line(exc)})") from exc
    missing = [name for name in OPEN_BANDIT_COLUMNS if name not in table.column_names]
    if missing:
        raise PinlabDataError(
            f"{csv} lacks column(s) {', '.join(missing)}; an Open Bandit Dataset CSV has "
            f"{', '.join(OPEN_BANDIT_COLUMNS)}, user_feature_* and user-item_affinity_*"
        )
    nulls = [name for name in table.column_names if name and table.column(name).null_count]
    if nulls:
        raise PinlabDataError(f"{csv} has empty values in column(s) {', '.join(nulls)}")
    action = _numbers(table, "item_id", csv)
    if n_actions is None:
        catalogue = csv.parent / "item_context.csv"
        n_actions = (
            pv.read_csv(catalogue).num_rows if catalogue.is_file() else int(action.max()) + 1
        )
    n = table.num_rows
    return BanditFeedback(
        n_actions=n_actions,
        len_list=OPEN_BANDIT_LEN_LIST,
        round_id=np.arange(n),
        action=action.astype(np.int64),
        position=_numbers(table, "position", csv).astype(np.int64) - 1,
        reward=_numbers(table, "click", csv),
        pscore=_numbers(table, "propensity_score", csv),
        context=_context(table, csv),
    )


def _numbers(table: pa.Table, name: str, csv: Path) -> np.ndarray:
    column = table.column(name)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise PinlabDataError(f"{csv}: column {name} holds {column.type}, expected numbers")
    return np.asarray(column.to_numpy(), dtype=np.float64)


def _context(table: pa.Table, csv: Path) -> np.ndarray:
    parts = []
    for name in sorted(c for c in table.column_names if c.startswith("user_feature_")):
        values = pc.cast(table.column(name), pa.string()).to_numpy(zero_copy_only=False)
        categories, codes = np.unique(values, return_inverse=True)
        parts.append(np.eye(len(categories))[codes])
    affinity = sorted(
        (c for c in table.column_names if c.startswith("user-item_affinity_")),
        key=lambda c: int(c.rsplit("_", 1)[1]),
    )
    if affinity:
        parts.append(np.column_stack([_numbers(table, c, csv) for c in affinity]))
    if not parts:
        return np.zeros((table.num_rows, 0))
    return np.concatenate(parts, axis=1)
