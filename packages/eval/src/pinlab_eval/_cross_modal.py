"""Cross-modal retrieval: text queries ranking a gallery of images by inner product."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pinlab_data.contracts import Float32Array, Int64Array, PinlabDataError
from pinlab_eval.contracts import RetrievalReport


def evaluate_text_to_image(
    text_embeddings: Float32Array,
    text_keys: Int64Array,
    image_embeddings: Float32Array,
    image_keys: Int64Array,
    ks: Sequence[int] = (1, 10),
    protocol: str = "held-out-pins",
    batch_size: int = 1024,
) -> RetrievalReport:
    """Text-to-image Recall@k: the share of text queries with a relevant image in the top k.

    Each text query ranks every gallery image by inner product (pass L2-normalised embeddings
    for cosine). An image is relevant to a query when their keys are equal: the caller decides
    what a key holds (the category, or the category and the attributes a caption names).
    Queries whose key no image has are not counted (`num_queries` counts the rest). Ties
    count against the query: a relevant image tied with irrelevant ones ranks after them, so
    a collapsed image tower scores low, never perfect.
    """
    if (
        text_embeddings.ndim != 2
        or image_embeddings.ndim != 2
        or text_embeddings.shape[1] != image_embeddings.shape[1]
        or text_keys.shape != (len(text_embeddings),)
        or image_keys.shape != (len(image_embeddings),)
    ):
        raise PinlabDataError(
            f"text {text_embeddings.shape} / keys {text_keys.shape} and image "
            f"{image_embeddings.shape} / keys {image_keys.shape} must be (n, d) / (n,) and "
            "(m, d) / (m,) with the same d"
        )
    if not ks or min(ks) <= 0:
        raise PinlabDataError(f"ks must be positive cut-offs, got {tuple(ks)}")
    texts = np.asarray(text_embeddings, dtype=np.float32)
    images = np.asarray(image_embeddings, dtype=np.float32)
    if not (np.isfinite(texts).all() and np.isfinite(images).all()):
        raise PinlabDataError("embeddings contain NaN or infinity; the model diverged")
    queries = np.flatnonzero(np.isin(text_keys, image_keys))
    if len(queries) == 0:
        raise PinlabDataError("no text query has a relevant image, so nothing can be found")
    first_hit = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), batch_size):
        batch = queries[start : start + batch_size]
        sims = texts[batch] @ images.T
        relevant = image_keys[None, :] == text_keys[batch, None]
        best = np.where(relevant, sims, -np.inf).max(axis=1)
        # 0-based rank of the best relevant image: every irrelevant one scoring at least as much
        # goes ahead of it.
        first_hit[start : start + len(batch)] = ((sims >= best[:, None]) & ~relevant).sum(axis=1)
    metrics = {f"recall@{k}": float((first_hit < k).mean()) for k in sorted(set(ks))}
    return RetrievalReport(protocol=protocol, num_queries=len(queries), metrics=metrics)
