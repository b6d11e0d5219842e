"""The text-to-image generator: training, seed-determinism, checkpoints, refused requests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention

import pinlab_models._generator as generator_module
from pinlab_data import SynthConfig, synthesize
from pinlab_models import (
    CNNEncoder,
    Conditioning,
    EncoderConfig,
    GenerateLimits,
    GeneratorConfig,
    PinlabModelError,
    TextToImage,
    TrainContext,
    load_generator,
    train_generator,
    validation_loss,
)
from pinlab_models._category_prior import CategoryPrior
from pinlab_models._cnn_encoder import ConvNet, to_input
from pinlab_models._generator import FeatureAlignment, GeneratorNet, denoising_loss

# float32: `mixed_precision` times a step both ways and may choose either where they time
# alike, and tests that compare two trainings need both in the same precision.
TINY = GeneratorConfig(
    image_size=16, patch=2, widths=(16, 32), heads=2, text_tokens=8, epochs=3, batch_size=16,
    mixed_precision=False,
)  # fmt: skip


def teacher() -> ConvNet:
    """A frozen stand-in for the run's image encoder: a seeded, untrained CNN."""
    torch.manual_seed(5)
    net = ConvNet((8, 16), embedding_dim=8).eval()  # an 8x8 map of 16x16 images
    return net.requires_grad_(False)


@pytest.fixture(scope="module")
def world() -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    config = SynthConfig(
        num_pins=48, num_users=5, num_categories=3, num_creators=5, image_size=16, seed=3
    )
    _, pins, _, _, images, _ = synthesize(config)
    names = sorted(set(pins.column("category").to_pylist()))
    labels = np.array([names.index(c) for c in pins.column("category").to_pylist()])
    return images, pins.column("caption").to_pylist(), labels, names


def train_tiny(
    world: tuple[np.ndarray, list[str], np.ndarray, list[str]],
    config: GeneratorConfig,
    run_dir: Path,
) -> tuple[TextToImage, list[float]]:
    """Train on the tiny world, validating on its first 16 pins: the model, each epoch's loss."""
    images, captions, labels, names = world
    ctx = TrainContext(run_dir=run_dir, seed=1, progress=False)
    losses: list[float] = []

    def validate(model: TextToImage) -> float:
        cond = model.conditioning(captions[:16], [len(names)] * 16)
        losses.append(validation_loss(model, images[:16], cond, seed=0))
        return -losses[-1]

    model, report = train_generator(
        images, captions, labels, names, config, ctx, validate, teacher=teacher().feature_map
    )
    assert report.model == "generator" and report.epochs == len(losses) == 3
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 3
    return model, losses


@pytest.fixture(scope="module")
def trained(
    world: tuple[np.ndarray, list[str], np.ndarray, list[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[TextToImage, list[float]]:
    return train_tiny(world, TINY, tmp_path_factory.mktemp("generator"))


def test_training_lowers_the_validation_loss(trained: tuple[TextToImage, list[float]]) -> None:
    _, losses = trained
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_generation_is_seed_deterministic(trained: tuple[TextToImage, list[float]]) -> None:
    model, _ = trained
    first = model.generate(["a striped warm circle"] * 2, steps=3, seed=7)
    again = model.generate(["a striped warm circle"] * 2, steps=3, seed=7)
    other = model.generate(["a striped warm circle"] * 2, steps=3, seed=8)
    assert first.shape == (2, 16, 16, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # Image i starts from the seed's i-th draw: asking for more keeps the first ones.
    more = model.generate(["a striped warm circle"] * 3, steps=3, seed=7)
    np.testing.assert_allclose(more[:2].astype(int), first.astype(int), atol=1)


def test_the_prompt_and_the_category_change_the_images(
    trained: tuple[TextToImage, list[float]],
) -> None:
    model, _ = trained
    circle = model.generate(["a striped warm circle"], steps=3, seed=1, infer_category=False)
    square = model.generate(["a plain icy square"], steps=3, seed=1, infer_category=False)
    named = model.generate(["a striped warm circle"], steps=3, seed=1, category=model.categories[0])
    assert not np.array_equal(circle, square)
    assert not np.array_equal(circle, named)


def test_checkpoint_round_trip(
    trained: tuple[TextToImage, list[float]],
    world: tuple[np.ndarray, list[str], np.ndarray, list[str]],
    tmp_path: Path,
) -> None:
    model, _ = trained
    model_id = model.save(tmp_path / "generator.pt")
    loaded = load_generator(tmp_path / "generator.pt")
    assert loaded.model_id == model_id and model_id.startswith("gen-")
    assert loaded.categories == model.categories and loaded.config == model.config
    np.testing.assert_array_equal(
        loaded.generate(["a dotted cool ring"], steps=2, seed=4),
        model.generate(["a dotted cool ring"], steps=2, seed=4),
    )
    captions = world[1]
    assert loaded.prior is not None
    assert loaded.infer_categories(captions) == model.infer_categories(captions)
    # Generators saved before the caption prior load without one: a caption alone, as then.
    payload = torch.load(tmp_path / "generator.pt", weights_only=True)
    del payload["prior"]
    torch.save(payload, tmp_path / "old.pt")
    old = load_generator(tmp_path / "old.pt")
    assert old.prior is None and old.infer_categories(captions[:3]) == [None] * 3


def test_the_caption_prior_names_the_category_and_sampling_conditions_on_it(
    trained: tuple[TextToImage, list[float]],
    world: tuple[np.ndarray, list[str], np.ndarray, list[str]],
) -> None:
    model, _ = trained
    _, captions, labels, names = world
    inferred = model.infer_categories(captions)
    assert np.mean([c == names[k] for c, k in zip(inferred, labels, strict=True)]) >= 0.9
    prompt, category = next((p, c) for p, c in zip(captions, inferred, strict=True) if c)
    assert model.resolve_categories([prompt], None, True) == [category]
    assert model.resolve_categories([prompt], None, False) == [None]
    assert model.resolve_categories([prompt], names[0], True) == [names[0]]  # given wins
    same = model.generate([prompt], steps=2, seed=4, category=category)
    np.testing.assert_array_equal(model.generate([prompt], steps=2, seed=4), same)
    alone = model.generate([prompt], steps=2, seed=4, infer_category=False)
    assert not np.array_equal(alone, same)
    meta = model.png_text(
        prompt, seed=4, index=0, steps=2, guidance=3.0, category=category, category_inferred=True
    )
    assert meta["pinlab:category"] == category and meta["pinlab:category_inferred"] == "true"


def test_data_without_categories_trains_no_prior(
    world: tuple[np.ndarray, list[str], np.ndarray, list[str]], tmp_path: Path
) -> None:
    images, captions, _, _ = world
    config = TINY.model_copy(update={"epochs": 1, "align_weight": 0.0})
    ctx = TrainContext(run_dir=tmp_path, seed=1, progress=False)
    model, _ = train_generator(images, captions, None, [], config, ctx)
    assert model.prior is None and model.infer_categories(captions[:2]) == [None, None]
    np.testing.assert_array_equal(
        model.generate(captions[:1], steps=2, seed=3),
        model.generate(captions[:1], steps=2, seed=3, infer_category=False),
    )


def test_the_caption_prior_is_sure_only_where_the_caption_says() -> None:
    """Hand-made: two categories along two axes. The fit is convex, so it is the same each
    time; a vector between them is named by neither at a threshold above one half."""
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    y = torch.tensor([0, 0, 1, 1])
    prior = CategoryPrior.fit(x, y, 2)
    again = CategoryPrior.fit(x, y, 2)
    assert torch.equal(prior.weight, again.weight) and torch.equal(prior.bias, again.bias)
    probs = prior.probabilities(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
    assert probs[0, 0] > 0.9 and probs[1, 1] > 0.9
    assert abs(float(probs[2, 0]) - 0.5) < 0.05
    test = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert prior.infer(test, ["star", "ring"], 0.6) == ["star", None]
    assert prior.infer(test, ["star", "ring"], 0.4)[1] is not None  # its argmax, below 0.6
    loaded = CategoryPrior.from_state(prior.state())
    assert torch.equal(loaded.probabilities(test), prior.probabilities(test))


@pytest.mark.parametrize(
    ("prompts", "steps", "guidance", "says"),
    [
        ([" "], 5, 3.0, "prompt is empty"),
        (["x" * 201], 5, 3.0, "limit is 200"),
        ([], 5, 3.0, "1..64"),
        (["a star"] * 65, 5, 3.0, "1..64"),
        (["a star"], 0, 3.0, "1..200"),
        (["a star"], 201, 3.0, "1..200"),
        (["a star"], 5, -1.0, "0..20"),
        (["a star"], 5, float("nan"), "0..20"),
    ],
)
def test_requests_out_of_range_are_refused_with_the_range(
    trained: tuple[TextToImage, list[float]],
    prompts: list[str],
    steps: int,
    guidance: float,
    says: str,
) -> None:
    model, _ = trained
    with pytest.raises(PinlabModelError, match=says.replace(".", r"\.")):
        model.generate(prompts, steps=steps, guidance=guidance)


def test_limits_are_the_callers_to_set(trained: tuple[TextToImage, list[float]]) -> None:
    model, _ = trained
    with pytest.raises(PinlabModelError, match=r"1\.\.2"):
        model.generate(["a star"] * 3, steps=2, limits=GenerateLimits(max_images=2))


def test_unknown_category_and_bad_training_input(
    trained: tuple[TextToImage, list[float]], tmp_path: Path
) -> None:
    model, _ = trained
    with pytest.raises(PinlabModelError, match="unknown category"):
        model.generate(["a star"], steps=2, category="no-such-shape")
    ctx = TrainContext(run_dir=tmp_path, progress=False)
    images = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(PinlabModelError, match=r"shape \(N, 16, 16, 3\)"):
        train_generator(images, ["a"] * 4, None, [], TINY, ctx)
    with pytest.raises(PinlabModelError, match="one caption each"):
        train_generator(images[:, :16, :16], ["a"] * 3, None, [], TINY, ctx)


def test_config_refuses_a_unet_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="halve"):
        GeneratorConfig(image_size=20, patch=2, widths=(16, 32, 64))
    with pytest.raises(ValueError, match="multiples of 8"):
        GeneratorConfig(widths=(12, 24))
    for threshold in (0.0, 1.5):
        with pytest.raises(ValueError, match="prior_threshold"):
            GeneratorConfig(prior_threshold=threshold)


def test_ddpm_v_still_trains_and_samples(
    world: tuple[np.ndarray, list[str], np.ndarray, list[str]], tmp_path: Path
) -> None:
    model, losses = train_tiny(world, TINY.model_copy(update={"objective": "ddpm-v"}), tmp_path)
    assert losses[-1] < losses[0]
    first = model.generate(["a striped warm circle"] * 2, steps=3, seed=7)
    np.testing.assert_array_equal(
        first, model.generate(["a striped warm circle"] * 2, steps=3, seed=7)
    )


def test_a_checkpoint_from_before_flow_matching_loads_as_ddpm(
    trained: tuple[TextToImage, list[float]], tmp_path: Path
) -> None:
    model, _ = trained
    model.save(tmp_path / "generator.pt")
    payload = torch.load(tmp_path / "generator.pt", weights_only=True)
    del payload["config"]["objective"]  # what generators saved before the field existed wrote
    torch.save(payload, tmp_path / "old.pt")
    old = load_generator(tmp_path / "old.pt")
    assert old.config.objective == "ddpm-v" and model.config.objective == "flow"


def test_flow_loss_is_the_velocity_error_at_logit_normal_times(
    trained: tuple[TextToImage, list[float]],
) -> None:
    """The network sees float times in (0, 1000), and predicting zero velocity costs
    E|noise - x|^2 = 1 + E|x|^2 for unit noise independent of the images."""
    model, _ = trained
    images = torch.rand(64, 3, 16, 16) * 2 - 1

    class Zero(torch.nn.Module):
        def pack(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def forward(self, x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
            assert t.dtype.is_floating_point and float(t.min()) > 0 and float(t.max()) < 1000
            return torch.zeros_like(x)

    cond = model.conditioning(["a plain warm circle"] * 64, [0] * 64)
    loss = denoising_loss(Zero(), model.config, images, cond, torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    expected = 1 + float(images.pow(2).mean())
    assert abs(float(loss) - expected) < 0.05


@pytest.mark.parametrize("pays", [True, False])
def test_training_and_validation_run_in_the_precision_the_probe_chose(
    world: tuple[np.ndarray, list[str], np.ndarray, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pays: bool,
) -> None:
    monkeypatch.setattr(generator_module, "bfloat16_pays", lambda net, loss, device: pays)
    autocast: set[bool] = set()
    forward = GeneratorNet.forward

    def watched(self: GeneratorNet, *args: Any) -> torch.Tensor:
        autocast.add(torch.is_autocast_enabled("cpu"))
        return forward(self, *args)

    monkeypatch.setattr(GeneratorNet, "forward", watched)
    model, _ = train_tiny(world, TINY.model_copy(update={"mixed_precision": True}), tmp_path)
    assert model.train_bfloat16 == pays
    bfloat16 = pays and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert autocast == {bfloat16}  # every training step and every validation
    autocast.clear()
    model.generate(["a plain warm circle"], steps=2, seed=0)
    assert autocast == {False}  # sampling stays float32


def test_float32_training_still_learns(
    world: tuple[np.ndarray, list[str], np.ndarray, list[str]], tmp_path: Path
) -> None:
    model, losses = train_tiny(world, TINY, tmp_path)
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.net.parameters())


def test_cpu_training_attends_by_plain_matmul_to_the_same_result(
    trained: tuple[TextToImage, list[float]],
) -> None:
    """CPU training swaps in diffusers' plain `AttnProcessor` (PyTorch's CPU flash-attention
    backward is slow on short sequences); it computes what the default SDPA processor does."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    model, _ = trained
    processors = model.net.unet.attn_processors.values()
    assert processors and all(type(p) is AttnProcessor for p in processors)
    x = torch.randn(4, 12, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10.0, 300.0, 600.0, 990.0])
    cond = model.conditioning(["a plain warm circle", "striped star", "x", "a ring"], [0, 1, 2, 3])
    with torch.no_grad():
        plain = model.net(x, t, cond)
        sdpa = copy.deepcopy(model.net)
        sdpa.unet.set_attn_processor(AttnProcessor2_0())
        assert torch.allclose(plain, sdpa(x, t, cond), atol=1e-5)


def test_alignment_needs_an_encoder_and_is_not_saved(
    world: tuple[np.ndarray, list[str], np.ndarray, list[str]],
    trained: tuple[TextToImage, list[float]],
    tmp_path: Path,
) -> None:
    images, captions, labels, names = world
    ctx = TrainContext(run_dir=tmp_path, progress=False)
    assert TINY.align_weight > 0
    with pytest.raises(PinlabModelError, match=r"align_weight 0\.5 .* no encoder was given"):
        train_generator(images, captions, labels, names, TINY, ctx)
    # Without alignment the same seed trains other weights, in a checkpoint of the same shape.
    plain, _ = train_tiny(world, TINY.model_copy(update={"align_weight": 0.0}), tmp_path / "p")
    aligned = trained[0].net.state_dict()
    assert plain.net.state_dict().keys() == aligned.keys()
    assert not all(torch.equal(v, aligned[k]) for k, v in plain.net.state_dict().items())
    # Generators saved before the field existed were trained without it.
    trained[0].save(tmp_path / "generator.pt")
    payload = torch.load(tmp_path / "generator.pt", weights_only=True)
    del payload["config"]["align_weight"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_generator(tmp_path / "old.pt").config.align_weight == 0.0


def test_alignment_pulls_the_mid_block_towards_the_teacher() -> None:
    """The hook keeps the mid block's (N, C, 4, 4) features; the targets are the teacher's
    deepest stage at least 4 wide, its 8x8 one, pooled to those cells; training the net and
    head on -similarity raises the similarity."""
    torch.manual_seed(0)
    net = GeneratorNet(TINY, num_categories=3)
    align = FeatureAlignment(net, teacher().feature_map, image_size=16)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    images = to_input(torch.from_numpy(pixels))
    targets = align.targets(pixels, "cpu", batch_size=3)  # chunks of 3, 3 and 2
    expected = F.avg_pool2d(align.teacher(images, 4), 2)
    assert targets.shape == (8, 16, 4, 4) and torch.allclose(targets, expected, atol=1e-6)
    cond = Conditioning(
        torch.randn(8, 8, 384), torch.ones(8, 8, dtype=torch.bool), torch.randn(8, 384),
        torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.bool),
    )  # fmt: skip
    with pytest.raises(PinlabModelError, match="forward first"):
        align.similarity(targets)
    optimizer = torch.optim.Adam([*net.parameters(), *align.parameters()], lr=1e-2)
    similarities = []
    for _ in range(30):
        net(net.pack(images) + torch.randn(8, 12, 8, 8), torch.full((8,), 500.0), cond)
        assert align.features is not None and align.features.shape == (8, 32, 4, 4)
        similarity = align.similarity(targets)
        similarities.append(float(similarity.detach()))
        optimizer.zero_grad()
        torch.autograd.backward(-similarity)
        optimizer.step()
    assert similarities[-1] > similarities[0] + 0.3
    assert not any(k.startswith("head") for k in net.state_dict())  # the head is not the net's


def test_the_encoder_gives_its_deepest_map_at_least_so_wide() -> None:
    images = torch.zeros(2, 3, 16, 16)
    assert teacher().feature_map(images, 8).shape == (2, 16, 8, 8)
    assert teacher().feature_map(images, 9).shape == (2, 8, 16, 16)
    encoder = CNNEncoder(EncoderConfig(image_size=16, widths=(8, 16, 32)))
    assert encoder.feature_map(images, 4).shape == (2, 32, 4, 4)
    timm = CNNEncoder(EncoderConfig(arch="lcnet_050", image_size=16, embedding_dim=8))
    assert timm.feature_map(images, 4).ndim == 4  # a timm CNN: its last map, whatever its width
    encoder.net = torch.nn.Linear(2, 2)  # a network with no spatial map
    with pytest.raises(PinlabModelError, match=r"no spatial feature map .* align_weight=0"):
        encoder.feature_map(images, 4)


@pytest.fixture(scope="module")
def guided(
    world: tuple[np.ndarray, list[str], np.ndarray, list[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> TextToImage:
    """Trained like `trained`, but keeping the average after epoch 1 as the guide."""
    model, _ = train_tiny(
        world, TINY.model_copy(update={"guide_epoch": 1}), tmp_path_factory.mktemp("guided")
    )
    return model


def test_the_guide_is_the_early_average_and_is_saved(
    guided: TextToImage, trained: tuple[TextToImage, list[float]], tmp_path: Path
) -> None:
    assert guided.guide is not None and guided.autoguidance() == 1.5
    net, guide = guided.net.state_dict(), guided.guide.state_dict()
    assert net.keys() == guide.keys() and not all(torch.equal(v, guide[k]) for k, v in net.items())
    # Same seed and data: the kept network is the one trained without a guide.
    assert all(torch.equal(v, trained[0].net.state_dict()[k]) for k, v in net.items())
    # A run that never reached guide_epoch (TINY's 10 of 3 epochs) keeps none: no guidance.
    assert trained[0].guide is None and trained[0].autoguidance(3.0) == 1.0
    guided.save(tmp_path / "generator.pt")
    loaded = load_generator(tmp_path / "generator.pt")
    assert loaded.guide is not None
    assert all(torch.equal(v, loaded.guide.state_dict()[k]) for k, v in guide.items())
    np.testing.assert_array_equal(
        loaded.generate(["a dotted cool ring"], steps=2, seed=4),
        guided.generate(["a dotted cool ring"], steps=2, seed=4),
    )
    # Generators saved before autoguidance load with no guide.
    payload = torch.load(tmp_path / "generator.pt", weights_only=True)
    del payload["config"]["guide_epoch"], payload["guide"]
    torch.save(payload, tmp_path / "old.pt")
    old = load_generator(tmp_path / "old.pt")
    assert old.config.guide_epoch is None and old.guide is None


def test_autoguidance_steps_away_from_what_the_guide_predicts(guided: TextToImage) -> None:
    prompts = ["a striped warm circle"] * 2
    unguided = guided.generate(prompts, steps=3, seed=7, autoguidance=1.0)
    assert not np.array_equal(guided.generate(prompts, steps=3, seed=7), unguided)
    # The guide enters only through its difference from the net: a guide equal to the net
    # changes nothing, at any weight and with or without classifier-free guidance.
    same = TextToImage(
        guided.net, guided.config, guided.categories, text_encoder=guided.text_encoder,
        guide=copy.deepcopy(guided.net), prior=guided.prior,
    )  # fmt: skip
    # (atol 1: the guide runs on half the batch the net does, so float round-off may differ)
    np.testing.assert_allclose(
        same.generate(prompts, steps=3, seed=7, autoguidance=4.0).astype(int),
        unguided.astype(int),
        atol=1,
    )
    np.testing.assert_array_equal(
        same.generate(prompts, steps=3, seed=7, guidance=1.0, autoguidance=4.0),
        guided.generate(prompts, steps=3, seed=7, guidance=1.0, autoguidance=1.0),
    )
    meta = guided.png_text("a star", seed=1, index=0, steps=3, guidance=3.0)
    assert meta["pinlab:autoguidance"] == "1.5"
    for bad in (-0.5, 21.0, float("nan")):
        with pytest.raises(PinlabModelError, match=r"autoguidance = .* use 0\.\.20"):
            guided.generate(prompts, steps=3, autoguidance=bad)


def test_mirroring_shows_the_net_mirrored_images_with_their_own_targets(
    world: tuple[np.ndarray, list[str], np.ndarray, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `hflip`, about half the training images arrive mirrored, and the REPA target of
    each is the teacher's map of the image the net was shown, not of its unmirrored source."""
    images, captions, labels, names = world
    seen: list[torch.Tensor] = []
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    loss, similarity = generator_module.denoising_loss, FeatureAlignment.similarity

    def recording_loss(
        net: GeneratorNet, config: GeneratorConfig, x: torch.Tensor, *a: object
    ) -> torch.Tensor:
        seen.append(x.detach().clone())
        return loss(net, config, x, *a)  # type: ignore[arg-type]

    def recording_similarity(self: FeatureAlignment, targets: torch.Tensor) -> torch.Tensor:
        pairs.append((seen[-1], targets.detach().clone()))
        return similarity(self, targets)

    monkeypatch.setattr(generator_module, "denoising_loss", recording_loss)
    monkeypatch.setattr(FeatureAlignment, "similarity", recording_similarity)
    config = TINY.model_copy(update={"hflip": True, "epochs": 2})
    ctx = TrainContext(run_dir=tmp_path, seed=1, progress=False)
    model, _ = train_generator(
        images, captions, labels, names, config, ctx, teacher=teacher().feature_map
    )
    originals = to_input(torch.from_numpy(images))
    shown = torch.cat(seen)
    plain = (shown[:, None] == originals[None]).flatten(2).all(-1).any(1)
    mirrored = (shown[:, None] == originals.flip(-1)[None]).flatten(2).all(-1).any(1)
    assert bool((plain | mirrored).all())  # every image is a training image, or its mirror
    assert 0.3 < float((mirrored & ~plain).float().mean()) < 0.7
    for x, goal in pairs:
        expected = F.adaptive_avg_pool2d(teacher().feature_map(x, 4), 4)
        assert torch.allclose(goal, expected, atol=1e-5)
    # Generators saved before mirroring trained without it.
    model.save(tmp_path / "generator.pt")
    payload = torch.load(tmp_path / "generator.pt", weights_only=True)
    assert payload["config"]["hflip"] is True
    del payload["config"]["hflip"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_generator(tmp_path / "old.pt").config.hflip is False
