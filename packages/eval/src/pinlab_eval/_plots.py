"""Pictures of embeddings: a 2-D map coloured by class, saved as a PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np

from pinlab_data import write_bytes_atomic
from pinlab_data.contracts import Float32Array, PinlabDataError

mpl.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt

MAX_POINTS = 5_000


def project_2d(embeddings: Float32Array) -> Float32Array:
    """The first two principal components (centred SVD), deterministic up to sign."""
    if embeddings.ndim != 2 or len(embeddings) < 2:
        raise PinlabDataError(f"need (n >= 2, d) embeddings to project, got {embeddings.shape}")
    centred = np.asarray(embeddings, dtype=np.float64)
    centred = centred - centred.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:2] if len(vt) >= 2 else np.vstack([vt, np.zeros_like(vt)])
    points = centred @ components.T
    signs = np.sign(points[np.abs(points).argmax(axis=0), [0, 1]])
    projected: Float32Array = (points * np.where(signs == 0, 1, signs)).astype(np.float32)
    return projected


def embedding_map(
    embeddings: Float32Array, labels: Sequence[str], path: Path, title: str, seed: int = 0
) -> Path:
    """Scatter the embeddings' 2-D PCA projection, one colour per label; write `path` (PNG).

    At most MAX_POINTS points are drawn (a seeded sample), so big sets stay readable.
    """
    if len(labels) != len(embeddings):
        raise PinlabDataError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    rows = np.arange(len(embeddings))
    if len(rows) > MAX_POINTS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_POINTS, replace=False))
    points = project_2d(np.asarray(embeddings)[rows])
    names = np.asarray(labels, dtype=object)[rows]
    classes = sorted(set(names.tolist()))
    colours = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    try:
        for k, name in enumerate(classes):
            mask = names == name
            ax.scatter(
                points[mask, 0],
                points[mask, 1],
                s=6,
                alpha=0.7,
                color=colours(k % colours.N),
                label=name,
            )
        ax.set_title(title)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        if len(classes) <= 20:
            ax.legend(markerscale=2.5, fontsize=7, loc="best", frameon=False)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    write_bytes_atomic(Path(path), buffer.getvalue())
    return Path(path)
