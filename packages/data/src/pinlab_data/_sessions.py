"""A live session's history: the pin ids a visitor brings, as a model's item indexes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pinlab_data.contracts import Int64Array, PinlabDataError, SessionHistory


def session_history(
    item_ids: Int64Array,
    pin_ids: Sequence[int],
    window: int | None,
    order: Int64Array | None = None,
) -> SessionHistory:
    """Map a visitor's pin ids (oldest first) onto `item_ids`'s indexes.

    Ids the catalogue lacks are left out and named; a history longer than `window` keeps its
    most recent `window` known items. An empty history, or one with no known id, is an error.
    `order` is `item_ids`'s argsort, which a server computes once instead of per request.
    """
    if len(pin_ids) == 0:
        raise PinlabDataError(
            "the history is empty; give the ids of the pins the visitor engaged with"
        )
    wanted = np.asarray(pin_ids, dtype=np.int64)
    if order is None:
        order = np.argsort(item_ids, kind="stable")
    found = order[np.searchsorted(item_ids, wanted, sorter=order).clip(max=len(item_ids) - 1)]
    known = item_ids[found] == wanted
    unknown = [int(p) for p in wanted[~known]]
    if not known.any():
        shown = ", ".join(map(str, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        raise PinlabDataError(
            f"none of the {len(unknown)} pin ids in the history is in the catalogue ({shown}); "
            "use ids from search results or the dataset's pins"
        )
    items = found[known].astype(np.int64)
    cut = window is not None and len(items) > window
    return SessionHistory(
        items=items[-window:] if cut and window is not None else items,
        given=len(wanted),
        unknown=unknown,
        truncated_from=len(items) if cut else None,
    )
