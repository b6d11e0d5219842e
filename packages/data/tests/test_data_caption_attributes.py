"""caption_attributes reads back what the synthetic world wrote into each caption."""

from __future__ import annotations

from pinlab_data import SynthConfig, caption_attributes, synthesize


def test_every_synthetic_caption_names_its_pin() -> None:
    config = SynthConfig(num_pins=300, num_users=10, num_categories=16, num_creators=10, seed=5)
    _, pins, _, _, _, truth = synthesize(config)
    captions = pins.column("caption").to_pylist()
    for caption, category, palette in zip(
        captions, pins.column("category").to_pylist(), truth.pin_palette, strict=True
    ):
        named = caption_attributes(caption)
        assert named.keys() == {"shape", "palette", "texture"}
        assert named["shape"] == category
        assert named["palette"] == truth.palettes[palette]
    assert len({caption_attributes(c)["texture"] for c in captions}) == 5


def test_unknown_words_are_ignored() -> None:
    assert caption_attributes("a lovely photo") == {}
    assert caption_attributes("Neon STAR, on a wall") == {"shape": "star", "palette": "neon"}
