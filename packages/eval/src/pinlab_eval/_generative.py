"""Metrics of generated images against real ones, in any feature space the caller chooses.

- Fréchet distance (Heusel et al. 2017, FID's formula) between Gaussians fitted to two sets.
- Improved precision and recall (Kynkäänniemi et al. 2019): the share of one set inside the
  union of the other's k-nearest-neighbour balls.
- Near-duplicates of reference (training) images: pinlab's dedupe test (perceptual hash,
  colour thumbnails, embedding cosine) applied between two sets instead of within one.
- Nearest-neighbour distances and their quantiles, to compare generated images' closeness to
  the training set with that of real held-out images.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pinlab_data import color_thumbnails, perceptual_hashes
from pinlab_data.contracts import Float32Array, ImageArray
from pinlab_eval.contracts import NearDuplicates

FloatArray = npt.NDArray[np.floating]
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
CHUNK = 1024
"""Rows of the first set compared at a time, so memory stays bounded."""


def gaussian_frechet_distance(
    mu1: FloatArray, cov1: FloatArray, mu2: FloatArray, cov2: FloatArray
) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)) for PSD covariances.

    Tr((C1 C2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric C1^(1/2) C2 C1^(1/2), which has the same spectrum, so no complex matrix square
    root (and no imaginary residue to discard) is involved.
    """
    m1, m2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    c1, c2 = np.asarray(cov1, dtype=np.float64), np.asarray(cov2, dtype=np.float64)
    if m1.shape != m2.shape or c1.shape != c2.shape or c1.shape != m1.shape * 2:
        raise ValueError(
            f"means {m1.shape}, {m2.shape} and covariances {c1.shape}, {c2.shape} "
            "do not describe two Gaussians of one dimension"
        )
    root1 = _psd_sqrt(c1)
    middle = np.linalg.eigvalsh(root1 @ c2 @ root1)
    trace_root = float(np.sqrt(np.clip(middle, 0.0, None)).sum())
    distance = float(((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * trace_root)
    return max(distance, 0.0)  # rounding can leave a tiny negative for equal Gaussians


def frechet_distance(a: FloatArray, b: FloatArray) -> float:
    """The Fréchet distance between Gaussians fitted to feature rows `a` and `b` (n, d).

    Each set needs at least 2 rows. The estimate is biased upwards for small sets, so compare
    sets of equal size (e.g. against a real-vs-real floor of the same size).
    """
    a, b = _features(a, "a"), _features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    return gaussian_frechet_distance(
        a.mean(axis=0), np.cov(a, rowvar=False).reshape(a.shape[1], a.shape[1]),
        b.mean(axis=0), np.cov(b, rowvar=False).reshape(b.shape[1], b.shape[1]),
    )  # fmt: skip


def improved_precision_recall(
    real: FloatArray, generated: FloatArray, k: int = 3
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) in Euclidean feature space.

    Each real row gets a ball reaching its k-th nearest other real row; precision is the share
    of generated rows inside at least one real ball. Recall swaps the roles. Both sets need
    more than k rows.
    """
    real, generated = _features(real, "real"), _features(generated, "generated")
    if min(len(real), len(generated)) <= k or k < 1:
        raise ValueError(
            f"k = {k} needs k >= 1 and more than k rows per set; got {len(real)} real and "
            f"{len(generated)} generated"
        )
    precision = _inside_share(generated, real, _knn_radii(real, k))
    recall = _inside_share(real, generated, _knn_radii(generated, k))
    return precision, recall


def nearest_distances(queries: FloatArray, reference: FloatArray) -> Float32Array:
    """Each query row's Euclidean distance to its nearest reference row."""
    queries, reference = _features(queries, "queries", 1), _features(reference, "reference", 1)
    out = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), CHUNK):
        out[start : start + CHUNK] = np.sqrt(
            _squared(queries[start : start + CHUNK], reference).min(axis=1)
        )
    return out


def distance_quantiles(distances: FloatArray) -> dict[str, float]:
    """The 5th, 25th, 50th, 75th and 95th percentiles, keyed `p5`... `p95`."""
    values = np.quantile(np.asarray(distances, dtype=np.float64), QUANTILES)
    return {
        f"p{round(q * 100)}": round(float(v), 5) for q, v in zip(QUANTILES, values, strict=True)
    }


def near_duplicates(
    generated: ImageArray,
    reference: ImageArray,
    generated_embeddings: FloatArray,
    reference_embeddings: FloatArray,
    *,
    max_distance: int = 6,
    max_color_diff: float = 12.0,
    min_cosine: float = 0.9,
) -> NearDuplicates:
    """The generated images that are near-duplicates of some reference image.

    The test `pinlab data dedupe --run` applies within a dataset: 64-bit pHashes within
    `max_distance` bits, 8x8 colour thumbnails within `max_color_diff` (0-255) on average, and
    embedding cosine (unit rows) at least `min_cosine`.
    """
    if len(generated) != len(generated_embeddings) or len(reference) != len(reference_embeddings):
        raise ValueError("one embedding row per image is needed, in both sets")
    hashes_g, hashes_r = perceptual_hashes(generated), perceptual_hashes(reference)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(generated), CHUNK):
        block = hashes_g[start : start + CHUNK, None] ^ hashes_r[None, :]
        rows, cols = np.nonzero(np.bitwise_count(block) <= max_distance)
        pairs.extend(zip((rows + start).tolist(), cols.tolist(), strict=True))
    linked = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    if len(linked):
        thumbs_g = color_thumbnails(generated[np.unique(linked[:, 0])])
        thumbs_r = color_thumbnails(reference[np.unique(linked[:, 1])])
        at_g = np.searchsorted(np.unique(linked[:, 0]), linked[:, 0])
        at_r = np.searchsorted(np.unique(linked[:, 1]), linked[:, 1])
        diff = np.abs(thumbs_g[at_g] - thumbs_r[at_r]).mean(axis=(1, 2, 3))
        cosine = (
            np.asarray(generated_embeddings)[linked[:, 0]]
            * np.asarray(reference_embeddings)[linked[:, 1]]
        ).sum(axis=1)
        linked = linked[(diff <= max_color_diff) & (cosine >= min_cosine)]
    copies = np.unique(linked[:, 0])
    return NearDuplicates(
        total=len(generated),
        count=len(copies),
        share=len(copies) / len(generated) if len(generated) else 0.0,
        pairs=[(int(g), int(r)) for g, r in linked.tolist()],
        max_distance=max_distance,
        max_color_diff=max_color_diff,
        min_cosine=min_cosine,
    )


def _features(x: FloatArray, name: str, min_rows: int = 2) -> npt.NDArray[np.float64]:
    rows = np.asarray(x, dtype=np.float64)
    if rows.ndim != 2 or len(rows) < min_rows:
        raise ValueError(f"{name} must be a (n, d) array with n >= {min_rows}, got {rows.shape}")
    if not np.isfinite(rows).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return rows


def _psd_sqrt(matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    root: npt.NDArray[np.float64] = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    return root


def _squared(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    d = (a**2).sum(axis=1)[:, None] + (b**2).sum(axis=1)[None, :] - 2 * a @ b.T
    clipped: npt.NDArray[np.float64] = np.clip(d, 0.0, None)
    return clipped


def _knn_radii(rows: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.float64]:
    """Squared distance from each row to its k-th nearest other row."""
    radii = np.empty(len(rows))
    for start in range(0, len(rows), CHUNK):
        d = _squared(rows[start : start + CHUNK], rows)
        d[np.arange(len(d)), np.arange(start, start + len(d))] = np.inf  # not itself
        radii[start : start + len(d)] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return radii


def _inside_share(
    points: npt.NDArray[np.float64],
    centres: npt.NDArray[np.float64],
    radii: npt.NDArray[np.float64],
) -> float:
    inside = 0
    for start in range(0, len(points), CHUNK):
        d = _squared(points[start : start + CHUNK], centres)
        inside += int((d <= radii[None, :]).any(axis=1).sum())
    return inside / len(points)
