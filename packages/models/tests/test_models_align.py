"""Image-text alignment: the loss, training into the MiniLM space, checkpoints, zero-shot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention

from pinlab_data import SynthConfig, synthesize
from pinlab_models import (
    AlignConfig,
    ImageTextModel,
    PinlabModelError,
    TextEncoder,
    TrainContext,
    load_image_text_model,
    train_alignment,
    zero_shot_labels,
)
from pinlab_models._align import alignment_loss

SMALL = AlignConfig(epochs=2, widths=(8, 16), projection_dim=32, batch_size=32)


@pytest.fixture(scope="module")
def world() -> tuple[np.ndarray, list[str], list[str]]:
    config = SynthConfig(num_pins=96, num_users=5, num_categories=3, num_creators=5, seed=2)
    _, pins, _, _, images, _ = synthesize(config)
    return images, pins.column("caption").to_pylist(), pins.column("category").to_pylist()


@pytest.fixture(scope="module")
def trained(
    world: tuple[np.ndarray, list[str], list[str]], tmp_path_factory: pytest.TempPathFactory
) -> ImageTextModel:
    images, captions, _ = world
    ctx = TrainContext(run_dir=tmp_path_factory.mktemp("align"), progress=False)
    model, report = train_alignment(images, captions, SMALL, ctx, validate=lambda m: 0.5)
    assert report.model == "align" and report.epochs == 2
    assert (ctx.run_dir / "metrics.jsonl").read_text().count("\n") == 2
    return model


def test_loss_prefers_matching_pairs_and_treats_shared_captions_as_positives() -> None:
    texts = F.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    text_of_image = torch.tensor([0, 0, 1, 2])  # images 0 and 1 share a caption
    aligned = texts[text_of_image]
    scale = torch.tensor(20.0)
    matched = alignment_loss(aligned, texts, text_of_image, scale)
    shuffled = alignment_loss(aligned.flip(0), texts, text_of_image, scale)
    assert float(matched) < float(shuffled)
    # With the shared caption a positive, two identical images of it cost no more than one.
    alone = alignment_loss(aligned[1:], texts, text_of_image[1:], scale)
    assert float(matched) == pytest.approx(float(alone), abs=0.05)


def test_embeddings_share_one_unit_space(
    trained: ImageTextModel, world: tuple[np.ndarray, list[str], list[str]]
) -> None:
    images, captions, _ = world
    image_vectors = trained.embed_images(images[:10])
    text_vectors = trained.embed_texts(captions[:4])
    assert image_vectors.shape == (10, 384) and text_vectors.shape == (4, 384)
    assert image_vectors.dtype == np.float32 and text_vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(image_vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(trained.embed(images[:10]), image_vectors)
    assert 0 < trained.temperature < 1


def test_checkpoint_round_trip(
    trained: ImageTextModel, world: tuple[np.ndarray, list[str], list[str]], tmp_path: Path
) -> None:
    images = world[0][:8]
    model_id = trained.save(tmp_path / "image_text.pt")
    loaded = load_image_text_model(tmp_path / "image_text.pt")
    assert model_id.startswith("align-") and loaded.model_id == model_id
    assert loaded.config == trained.config
    np.testing.assert_allclose(loaded.embed_images(images), trained.embed_images(images), atol=1e-6)
    payload = torch.load(tmp_path / "image_text.pt", weights_only=True)
    torch.save({**payload, "text_model": "another/model"}, tmp_path / "other.pt")
    with pytest.raises(PinlabModelError, match="aligned to 'another/model'"):
        load_image_text_model(tmp_path / "other.pt")


def test_zero_shot_labels_index_the_names(
    trained: ImageTextModel, world: tuple[np.ndarray, list[str], list[str]]
) -> None:
    images, _, categories = world
    names = sorted(set(categories))
    predicted = zero_shot_labels(trained, images[:12], names)
    assert predicted.shape == (12,) and predicted.dtype == np.int64
    assert set(predicted.tolist()) <= set(range(len(names)))
    with pytest.raises(PinlabModelError, match="needs a"):
        zero_shot_labels(trained, images[:2], names, template="no slot")
    with pytest.raises(PinlabModelError, match="at least one label"):
        zero_shot_labels(trained, images[:2], [])


def test_bad_input_is_refused(
    trained: ImageTextModel, world: tuple[np.ndarray, list[str], list[str]], tmp_path: Path
) -> None:
    images, captions, _ = world
    with pytest.raises(PinlabModelError, match="empty"):
        trained.embed_texts(["a star", ""])
    with pytest.raises(PinlabModelError, match="shape"):
        trained.embed_images(images[:, :16, :16])
    ctx = TrainContext(run_dir=tmp_path, progress=False)
    with pytest.raises(PinlabModelError, match="one caption each"):
        train_alignment(images[:4], captions[:3], SMALL, ctx)
    with pytest.raises(PinlabModelError, match="image_size"):
        train_alignment(images[:4, :16, :16], captions[:4], SMALL, ctx)
    with pytest.raises(PinlabModelError, match="empty"):
        train_alignment(images[:2], ["a star", " "], SMALL, ctx, text_encoder=TextEncoder())


def test_align_config_refuses_unknown_and_bad_settings() -> None:
    assert AlignConfig().model_dump()["init_temperature"] == 0.07
    with pytest.raises(ValueError, match="extra"):
        AlignConfig.model_validate({"epoch": 3})
    with pytest.raises(ValueError, match="greater than 0"):
        AlignConfig(init_temperature=0)


@pytest.mark.slow
def test_a_timm_tower_trains_saves_and_loads(
    world: tuple[np.ndarray, list[str], list[str]], tmp_path: Path
) -> None:
    images, captions, _ = world
    config = AlignConfig(arch="lcnet_050", epochs=1, projection_dim=32, batch_size=16)
    ctx = TrainContext(run_dir=tmp_path / "run", progress=False)
    model, report = train_alignment(images[:32], captions[:32], config, ctx)
    assert report.epochs == 1
    model.save(tmp_path / "timm.pt")
    loaded = load_image_text_model(tmp_path / "timm.pt")
    assert loaded.config.arch == "lcnet_050"
    np.testing.assert_allclose(
        loaded.embed_images(images[:4]), model.embed_images(images[:4]), atol=1e-5
    )
    with pytest.raises(PinlabModelError, match="unknown encoder architecture"):
        train_alignment(images[:4], captions[:4], AlignConfig(arch="resnet-999"), ctx)
