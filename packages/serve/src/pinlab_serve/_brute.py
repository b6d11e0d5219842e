"""Plain-NumPy brute-force search: the baseline the FAISS index is measured against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pinlab_data.contracts import Float32Array, Int64Array
from pinlab_serve._index import PinIndex, _check_k, _unit_rows
from pinlab_serve.contracts import Hit, PinlabServeError, PinNotFoundError


class NumpySearcher:
    """The index's vectors in one matrix; every query is a full matrix product and a sort."""

    def __init__(self, index: PinIndex) -> None:
        self._ids = index.ids()
        self._matrix = index.vectors(self._ids)
        self._row = {int(p): i for i, p in enumerate(self._ids.tolist())}

    @property
    def dim(self) -> int:
        return int(self._matrix.shape[1])

    def __len__(self) -> int:
        return len(self._ids)

    def vector(self, pin_id: int) -> Float32Array:
        row = self._row.get(int(pin_id))
        if row is None:
            raise PinNotFoundError(f"pin {pin_id} is not in the index")
        return np.asarray(self._matrix[row], dtype=np.float32)

    def vectors(self, pin_ids: Int64Array) -> Float32Array:
        return (
            np.stack([self.vector(int(p)) for p in pin_ids])
            if len(pin_ids)
            else (np.zeros((0, self.dim), dtype=np.float32))
        )

    def search(
        self,
        queries: Float32Array,
        k: int,
        exclude: Sequence[int | None] | None = None,
        *,
        allow: Int64Array | None = None,
        deny: Sequence[int] = (),
    ) -> list[list[Hit]]:
        _check_k(k)
        vectors = _unit_rows(queries, "queries", self.dim)
        if exclude is not None and len(exclude) != vectors.shape[0]:
            raise PinlabServeError("exclude must give one id (or None) per query")
        scores = vectors @ self._matrix.T
        mask = np.zeros(len(self._ids), dtype=bool)
        if allow is not None:
            mask |= ~np.isin(self._ids, allow)
        for pin in deny:
            row = self._row.get(int(pin))
            if row is not None:
                mask[row] = True
        scores[:, mask] = -np.inf
        results = []
        for i, row_scores in enumerate(scores):
            own = None if exclude is None else exclude[i]
            skip = None if own is None else self._row.get(int(own))
            if skip is not None:
                row_scores[skip] = -np.inf
            top = min(k, len(row_scores))
            part = np.argpartition(-row_scores, top - 1)[:top]
            order = part[np.argsort(-row_scores[part], kind="stable")]
            results.append(
                [
                    Hit(pin_id=int(self._ids[j]), score=float(row_scores[j]))
                    for j in order
                    if np.isfinite(row_scores[j])
                ]
            )
        return results
