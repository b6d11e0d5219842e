"""Public types of pinlab_eval: what metrics consume and the reports they return.

Metric names are lower case `name@k` (`ndcg@10`); whole-ranking metrics have no `@`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from pinlab_data.contracts import Float32Array, Int64Array

Float64Array = npt.NDArray[np.float64]

Csr = tuple[Int64Array, Int64Array]
"""Rows of item lists as `(indptr, indices)`: row `r` holds `indices[indptr[r]:indptr[r + 1]]`."""


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores every item for a batch of users (higher is better).

    `score(users)` returns shape (len(users), num_items) for user indices.
    """

    def score(self, users: Int64Array) -> Float32Array: ...


Metrics = dict[str, float]


class RankingReport(BaseModel):
    """Recommendation metrics under a named protocol, averaged over evaluated users."""

    protocol: str
    num_users: int
    num_items: int
    metrics: Metrics = Field(default_factory=dict)


class RetrievalReport(BaseModel):
    """Image retrieval metrics: queries and gallery share a label space (category)."""

    protocol: str
    num_queries: int
    metrics: Metrics = Field(default_factory=dict)
