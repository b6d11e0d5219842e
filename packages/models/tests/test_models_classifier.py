"""The multi-head classifier that judges generated images: training, checkpoints, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pinlab_models import (
    ClassifierConfig,
    PinlabModelError,
    TrainContext,
    _classifier,
    load_classifier,
    train_classifier,
)

SMALL = ClassifierConfig(image_size=8, widths=(8, 16), epochs=30, batch_size=16, lr=1e-2)


def _world(n: int = 64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Head `half`: which half of the image is bright; head `colour`: red or blue."""
    rng = np.random.default_rng(0)
    half, colour = rng.integers(0, 2, n), rng.integers(0, 2, n)
    images = np.zeros((n, 8, 8, 3), dtype=np.uint8)
    for i in range(n):
        channel = 0 if colour[i] == 0 else 2
        rows = slice(0, 4) if half[i] == 0 else slice(4, 8)
        images[i, rows, :, channel] = 220
    return images, {"half": half, "colour": colour}


def test_every_head_learns_and_the_checkpoint_round_trips(tmp_path: Path) -> None:
    images, targets = _world()
    labels = {"half": ["top", "bottom"], "colour": ["red", "blue"]}
    ctx = TrainContext(run_dir=tmp_path, seed=0, progress=False)
    model, report = train_classifier(images, targets, labels, SMALL, ctx)
    assert report.model == "classifier" and (tmp_path / "metrics.jsonl").is_file()
    predicted = model.predict(images)
    # Turns and flips are the training views: colour survives them all, the bright half only
    # up to a turn, so colour must be learned exactly and the half at least as a colour hint.
    assert (predicted["colour"] == targets["colour"]).mean() == 1.0
    assert set(predicted) == {"half", "colour"}
    model_id = model.save(tmp_path / "classifier.pt")
    loaded = load_classifier(tmp_path / "classifier.pt")
    assert loaded.model_id == model_id and loaded.labels == labels
    for head in predicted:
        np.testing.assert_array_equal(loaded.predict(images)[head], predicted[head])


def test_bad_targets_and_images_are_refused(tmp_path: Path) -> None:
    images, targets = _world(8)
    ctx = TrainContext(run_dir=tmp_path, progress=False)
    with pytest.raises(PinlabModelError, match="same heads"):
        train_classifier(images, targets, {"half": ["a", "b"]}, SMALL, ctx)
    with pytest.raises(PinlabModelError, match=r"0\.\.0"):
        train_classifier(images, {"half": targets["half"]}, {"half": ["a"]}, SMALL, ctx)
    model, _ = train_classifier(
        images, targets, {"half": ["a", "b"], "colour": ["r", "b"]},
        SMALL.model_copy(update={"epochs": 1}), ctx,
    )  # fmt: skip
    with pytest.raises(PinlabModelError, match="shape"):
        model.predict(np.zeros((2, 16, 16, 3), dtype=np.uint8))


def test_a_checkpoint_of_another_layout_is_refused_in_one_line(tmp_path: Path) -> None:
    images, targets = _world(16)
    labels = {"half": ["top", "bottom"], "colour": ["red", "blue"]}
    ctx = TrainContext(run_dir=tmp_path, seed=0, progress=False)
    model, _ = train_classifier(
        images, targets, labels, SMALL.model_copy(update={"epochs": 1}), ctx
    )
    path = tmp_path / "classifier.pt"
    model.save(path)
    payload = torch.load(path, weights_only=False)
    payload["state"] = {k.replace("head_", ""): v for k, v in payload["state"].items()}
    torch.save(payload, path)  # head names as an older pinlab wrote them
    with pytest.raises(PinlabModelError, match="another layout"):
        load_classifier(path)


def test_mixed_precision_trains_in_bfloat16_only_where_the_probe_says_it_pays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, targets = _world()
    labels = {"half": ["top", "bottom"], "colour": ["red", "blue"]}

    def fit(mixed: bool, pays: bool) -> dict[str, torch.Tensor]:
        monkeypatch.setattr(_classifier, "bfloat16_pays", lambda net, loss, device: pays)
        config = SMALL.model_copy(update={"mixed_precision": mixed})
        ctx = TrainContext(run_dir=tmp_path / f"{mixed}-{pays}", seed=0, progress=False)
        model, _ = train_classifier(images, targets, labels, config, ctx)
        assert model.train_bfloat16 == (mixed and pays)
        assert (model.predict(images)["colour"] == targets["colour"]).all()  # both learn
        return model.net.state_dict()

    float32 = fit(False, True)
    # Where bfloat16 does not pay, mixed precision trains the float32 net to the last bit.
    assert all(torch.equal(v, float32[k]) for k, v in fit(True, False).items())
    bfloat16 = fit(True, True)
    same = all(torch.equal(bfloat16[k], float32[k]) for k in float32)
    assert same != torch.ops.mkldnn._is_mkldnn_bf16_supported()
