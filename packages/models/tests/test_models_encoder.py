"""The CNN encoder: embeddings, checkpoints, the contrastive loss, and that training learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pinlab_models import (
    CNNEncoder,
    EncoderConfig,
    ImageEncoder,
    PinlabModelError,
    TrainContext,
    augment,
    supcon_loss,
    train_encoder,
)
from pinlab_models._runtime import save_checkpoint

SMALL = EncoderConfig(image_size=16, widths=(8, 16), embedding_dim=8, epochs=3, batch_size=16)


def two_kinds(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half the images carry a bright horizontal bar, half a vertical one, in random colours."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % 2
    for i in range(n):
        pos = rng.integers(3, 13)
        colour = rng.integers(150, 256, 3, dtype=np.uint8)
        if labels[i] == 0:
            images[i, pos - 2 : pos + 2, 2:14] = colour
        else:
            images[i, 2:14, pos - 2 : pos + 2] = colour
    return images, labels


def test_embeddings_are_normalised_and_shaped() -> None:
    encoder = CNNEncoder(SMALL)
    assert isinstance(encoder, ImageEncoder)
    images, _ = two_kinds(10)
    emb = encoder.embed(images, batch_size=3)
    assert emb.shape == (10, 8)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_wrong_image_shape_is_refused() -> None:
    with pytest.raises(PinlabModelError, match=r"\(N, 16, 16, 3\)"):
        CNNEncoder(SMALL).embed(np.zeros((2, 32, 32, 3), dtype=np.uint8))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    encoder = CNNEncoder(SMALL)
    model_id = encoder.save(tmp_path / "enc.pt")
    loaded = CNNEncoder.load(tmp_path / "enc.pt")
    assert loaded.model_id == model_id
    images, _ = two_kinds(6)
    np.testing.assert_allclose(loaded.embed(images), encoder.embed(images), rtol=1e-5)


def test_loading_the_wrong_file_says_what_it_is(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "rec.pt", {"kind": "pinlab-recommender"})
    with pytest.raises(PinlabModelError, match="expected 'pinlab-image-encoder'"):
        CNNEncoder.load(tmp_path / "rec.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PinlabModelError, match="not a readable pinlab checkpoint"):
        CNNEncoder.load(tmp_path / "junk.pt")
    with pytest.raises(PinlabModelError, match="no checkpoint"):
        CNNEncoder.load(tmp_path / "missing.pt")


def test_supcon_prefers_embeddings_that_group_labels() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    grouped = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1]]))
    mixed = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0, 1], [1, 0.1], [0.1, 1]]))
    assert supcon_loss(grouped, labels, 0.1) < supcon_loss(mixed, labels, 0.1)


def test_supcon_matches_a_hand_computation() -> None:
    # Two orthogonal unit vectors with the same label, temperature 1: each anchor has one
    # other view (its positive) with logit 0, so loss = -log(e^0 / e^0) = 0.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(supcon_loss(z, torch.tensor([0, 0]), 1.0)) == pytest.approx(0.0, abs=1e-6)
    # Three vectors: anchor 0 with positive 1 (logit 1) and negative 2 (logit 0):
    # -log(e / (e + 1)) for anchors 0 and 1; anchor 2 has no positive and adds 0.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    expected = 2 * -np.log(np.e / (np.e + 1)) / 3
    assert float(supcon_loss(z, torch.tensor([0, 0, 1]), 1.0)) == pytest.approx(expected, rel=1e-5)


def test_augment_keeps_shape_and_is_seeded() -> None:
    x = torch.randn(4, 3, 16, 16)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b)


def test_training_separates_the_two_kinds(tmp_path: Path) -> None:
    images, labels = two_kinds(96)
    ctx = TrainContext(run_dir=tmp_path, seed=0, progress=False)
    config = SMALL.model_copy(update={"epochs": 8, "lr": 0.01})
    encoder, report = train_encoder(images, labels, config, ctx)
    assert report.epochs == 8
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 8
    assert report.history[-1].train_loss < report.history[0].train_loss
    test_images, test_labels = two_kinds(40, seed=1)
    emb = encoder.embed(test_images)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(axis=1)
    assert (test_labels[nearest] == test_labels).mean() >= 0.9


def test_training_needs_labels_for_every_image(tmp_path: Path) -> None:
    images, labels = two_kinds(8)
    with pytest.raises(PinlabModelError, match="at least 2 labelled images"):
        train_encoder(images, labels[:3], SMALL, TrainContext(run_dir=tmp_path, progress=False))
