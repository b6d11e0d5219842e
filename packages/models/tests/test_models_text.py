"""The packaged MiniLM text encoder: offline, normalised, meaningful, and strict about input."""

from __future__ import annotations

import numpy as np
import pytest

from pinlab_models import PinlabModelError, TextEncoder


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder("cpu")


def test_embeddings_are_unit_vectors_of_the_documented_size(encoder: TextEncoder) -> None:
    vectors = encoder.encode(["a red circle", "a blue square", "a red circle"])
    assert vectors.shape == (3, TextEncoder.embedding_dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-5)


def test_related_texts_are_closer_than_unrelated_ones(encoder: TextEncoder) -> None:
    query, near, far = encoder.encode(
        ["a photo of a cat", "a kitten sleeping", "stock prices fell"]
    )
    assert float(query @ near) > float(query @ far) + 0.2


def test_empty_text_is_rejected_with_its_position(encoder: TextEncoder) -> None:
    with pytest.raises(PinlabModelError, match="position 1"):
        encoder.encode(["fine", "   "])
    with pytest.raises(PinlabModelError, match="list of texts"):
        encoder.encode("one string")
    assert encoder.encode([]).shape == (0, TextEncoder.embedding_dim)


def test_one_pass_gives_the_sentence_vectors_and_the_token_embeddings(
    encoder: TextEncoder,
) -> None:
    texts = ["x", "a striped warm star on a pale ground, three dots beside it", "a red circle"]
    sentence, tokens, mask = encoder.encode_with_tokens(texts, 6)
    np.testing.assert_allclose(sentence, encoder.encode(texts), atol=1e-5)
    assert tokens.shape == (3, 6, TextEncoder.embedding_dim) and mask.shape == (3, 6)
    words = encoder._model.tokenizer(texts)["input_ids"]
    assert mask.sum(axis=1).tolist() == [min(len(w), 6) for w in words]  # [CLS] x [SEP]: 3
    assert not tokens[~mask].any()
    # What sentence-transformers gives as token embeddings, and padding in a batch changes none.
    alone = encoder._model.encode(texts[:1], output_value="token_embeddings")[0]
    np.testing.assert_allclose(tokens[0, :3], alone.numpy(), atol=1e-4)
    assert encoder.encode_with_tokens([], 4)[1].shape == (0, 4, TextEncoder.embedding_dim)
