"""Encoder registry (CNN and timm), recipe losses by hand, augmentations and training runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pinlab_models import (
    CNNEncoder,
    EncoderConfig,
    ImageEncoder,
    PinlabModelError,
    ProxyAnchorLoss,
    RecipeConfig,
    TrainContext,
    builtin_archs,
    check_arch,
    nt_xent_loss,
    product_augment,
    train_with_recipe,
)
from pinlab_models import _architectures as encoders
from pinlab_models._recipes import _hue_rotation

TINY = EncoderConfig(image_size=16, widths=(4, 8), embedding_dim=8, epochs=2, batch_size=8)


def blobs(n: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes: a bright square top-left or bottom-right, on noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    images[labels == 0, 2:8, 2:8] = 230
    images[labels == 1, 8:14, 8:14] = 230
    return images, labels.astype(np.int64)


def test_registry_has_the_cnn_and_any_timm_name(tmp_path: Path) -> None:
    assert "cnn" in builtin_archs()
    check_arch("cnn")
    check_arch("resnet18")
    config = TINY.model_copy(update={"arch": "test_resnet", "embedding_dim": 12})
    encoder = CNNEncoder(config)
    assert isinstance(encoder, ImageEncoder)
    images, _ = blobs(4)
    emb = encoder.embed(images)
    assert emb.shape == (4, 12) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    model_id = encoder.save(tmp_path / "enc.pt")
    assert model_id.startswith("test_resnet-")
    loaded = CNNEncoder.load(tmp_path / "enc.pt")
    assert loaded.config.arch == "test_resnet" and loaded.model_id == model_id
    assert np.allclose(loaded.embed(images), emb, atol=1e-5)


def test_unknown_arch_suggests_close_names() -> None:
    with pytest.raises(PinlabModelError, match="did you mean resnet18") as exc:
        check_arch("resnet18x")
    assert "\n" not in str(exc.value)
    with pytest.raises(PinlabModelError, match="unknown encoder architecture"):
        CNNEncoder(TINY.model_copy(update={"arch": "qqqqzzzz"}))


def test_pretrained_offline_says_how_to_train_from_scratch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encoders, "cached_weights", lambda hub_id: None)
    monkeypatch.setattr(encoders, "hub_reachable", lambda timeout=3.0: False)
    config = TINY.model_copy(update={"arch": "resnet18", "pretrained": True})
    with pytest.raises(PinlabModelError, match="--no-pretrained"):
        CNNEncoder(config)


def test_nt_xent_matches_the_formula() -> None:
    torch.manual_seed(0)
    z1 = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    z2 = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    t = 0.5
    views = torch.cat([z1, z2])
    expected = 0.0
    for i in range(6):
        j = (i + 3) % 6
        others = [k for k in range(6) if k != i]
        denominator = sum(math.exp(float(views[i] @ views[k]) / t) for k in others)
        expected += -math.log(math.exp(float(views[i] @ views[j]) / t) / denominator)
    assert float(nt_xent_loss(z1, z2, t)) == pytest.approx(expected / 6, rel=1e-5)


def test_proxy_anchor_matches_the_formula() -> None:
    loss = ProxyAnchorLoss(num_labels=3, dim=2, margin=0.1, alpha=4.0)
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]))
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0], [0.9, -0.1]]), dim=1)
    labels = torch.tensor([0, 1, 0])
    cos = z @ torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]).T
    a, m = 4.0, 0.1
    pull = [
        math.log1p(sum(math.exp(-a * (float(cos[i, p]) - m)) for i in range(3) if labels[i] == p))
        for p in (0, 1)
    ]  # proxy 2 has no positive in the batch: it only pushes
    push = [
        math.log1p(sum(math.exp(a * (float(cos[i, p]) + m)) for i in range(3) if labels[i] != p))
        for p in (0, 1, 2)
    ]
    expected = sum(pull) / 2 + sum(push) / 3
    assert float(loss(z, labels).detach()) == pytest.approx(expected, rel=1e-5)


def test_product_augment_is_seeded_and_keeps_range() -> None:
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    config = RecipeConfig(hue=0.3, grayscale_p=0.5)
    a = product_augment(x, config, torch.Generator().manual_seed(1))
    b = product_augment(x, config, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= -1 and a.max() <= 1 and not torch.allclose(a, x)
    still = RecipeConfig(
        crop_scale=1.0, rotation_degrees=0, color_jitter=0, hue=0, grayscale_p=0, hflip=False
    )
    same = product_augment(x, still, torch.Generator().manual_seed(0))
    # A square crop of the whole image, unrotated: only the resampling's aspect jitter is left.
    assert torch.allclose(same.mean(), x.mean(), atol=0.05)


def test_hue_rotation_keeps_greys_and_turns_full_circle() -> None:
    turns = torch.tensor([0.0, 2 * math.pi, 1.0])
    matrices = _hue_rotation(turns)
    assert torch.allclose(matrices[0], torch.eye(3), atol=1e-5)
    assert torch.allclose(matrices[1], torch.eye(3), atol=1e-5)
    grey = torch.full((3,), 0.3)
    assert torch.allclose(matrices[2] @ grey, grey, atol=1e-5)


@pytest.mark.parametrize("recipe", ["supcon", "simclr", "proxy-anchor"])
def test_each_recipe_trains_and_checkpoints(tmp_path: Path, recipe: str) -> None:
    images, labels = blobs()
    ctx = TrainContext(run_dir=tmp_path, seed=0, progress=False)
    given = None if recipe == "simclr" else labels
    scores: list[float] = []

    def validate(encoder: ImageEncoder) -> float:
        emb = encoder.embed(images)
        scores.append(float((emb @ emb.T).mean()))
        return scores[-1]

    encoder, report = train_with_recipe(
        images, given, TINY, RecipeConfig(recipe=recipe), ctx, validate
    )
    assert report.epochs == 2 and report.model == f"cnn-{recipe}" and len(scores) == 2
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2
    assert np.isfinite(report.history[-1].train_loss)
    encoder.save(tmp_path / "enc.pt")
    assert np.allclose(CNNEncoder.load(tmp_path / "enc.pt").embed(images), encoder.embed(images))


def test_labelled_recipes_refuse_missing_labels(tmp_path: Path) -> None:
    images, labels = blobs(8)
    ctx = TrainContext(run_dir=tmp_path, progress=False)
    with pytest.raises(PinlabModelError, match="use --recipe simclr"):
        train_with_recipe(images, None, TINY, RecipeConfig(recipe="supcon"), ctx)
    with pytest.raises(PinlabModelError, match="at least 2 labels"):
        train_with_recipe(images, labels * 0, TINY, RecipeConfig(recipe="proxy-anchor"), ctx)
    with pytest.raises(PinlabModelError, match="image_size"):
        train_with_recipe(images, labels, EncoderConfig(), RecipeConfig(), ctx)


def test_recipe_config_refuses_unknown_fields_and_bad_ranges() -> None:
    assert RecipeConfig().recipe == "supcon"
    assert (
        RecipeConfig.model_validate(RecipeConfig(recipe="simclr").model_dump()).recipe == "simclr"
    )
    for bad in ({"recipe": "arcface"}, {"hue": 0.7}, {"crop_scale": 0}, {"colour": 1}):
        with pytest.raises(ValueError, match="validation error"):
            RecipeConfig.model_validate(bad)
    assert EncoderConfig(arch="resnet18", pretrained=True).arch == "resnet18"
