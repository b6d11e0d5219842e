"""Clustered unit vectors for measuring indexes: a seeded Gaussian mixture, made in chunks.

Uniform random points in 64 dimensions have no neighbours worth finding (every distance is
about the same); embeddings do: they gather in clusters, and within a cluster most of the
spread lies along a few directions. So: `clusters` centres drawn from N(0, I); around each,
noise whose variance along the j-th of `dim` directions falls as 1/j^`decay` (total variance
`noise`^2 x dim), in one random orthogonal basis so no axis is special (product quantisation
does not get sub-vectors aligned with the spread for free; OPQ has to find them). Rows are
L2-normalised, as pinlab's embeddings are.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pinlab_data.contracts import Float32Array


class ClusteredVectors:
    """One mixture (fixed by `seed`); `sample` and `chunks` draw rows from it."""

    def __init__(
        self, dim: int, clusters: int, seed: int = 0, noise: float = 0.5, decay: float = 1.0
    ) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.centres = rng.standard_normal((clusters, dim)).astype(np.float32)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        scales = np.arange(1, dim + 1, dtype=np.float64) ** (-decay / 2)
        scales *= noise * np.sqrt(dim / np.sum(scales**2))
        # Noise = z * scales @ basis.T: a diagonal covariance, rotated.
        self._mix = (scales[:, None] * basis.T).astype(np.float32)

    def sample(self, rows: int, seed: int) -> Float32Array:
        """`rows` unit vectors, drawn with `seed`."""
        rng = np.random.default_rng(seed)
        cluster = rng.integers(0, len(self.centres), size=rows)
        noise = rng.standard_normal((rows, self.dim), dtype=np.float32) @ self._mix
        x = self.centres[cluster] + noise
        return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)

    def chunks(self, rows: int, seed: int, chunk_rows: int = 1 << 20) -> Iterator[Float32Array]:
        """`rows` vectors in chunks of `chunk_rows`, each chunk seeded by (seed, its number):
        the same rows whatever else is drawn, and never more than a chunk in memory."""
        for number, start in enumerate(range(0, rows, chunk_rows)):
            yield self.sample(min(chunk_rows, rows - start), seed * 1_000_003 + number)
