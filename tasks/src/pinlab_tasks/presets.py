"""Named, typed configurations of the demo: the world, the encoder and the recommenders."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pinlab_data import SynthConfig
from pinlab_models import AlignConfig, EncoderConfig


class DemoPreset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    synth: SynthConfig
    encoder: EncoderConfig
    recommenders: dict[str, dict[str, Any]] = Field(
        description="Registered recommender name to its settings (defaults when empty)."
    )
    align: AlignConfig = Field(
        default_factory=AlignConfig, description="Image-text alignment (`pinlab demo --align`)."
    )


PRESETS: dict[str, DemoPreset] = {
    # What the tests run: every stage, at the smallest size that still exercises it.
    "tiny": DemoPreset(
        synth=SynthConfig(
            num_pins=300, num_users=120, num_categories=6, num_creators=20, interactions_per_user=15
        ),
        encoder=EncoderConfig(epochs=2, widths=(8, 16, 32), embedding_dim=32),
        recommenders={"popularity": {}, "mf": {"epochs": 3, "dim": 16}},
        align=AlignConfig(epochs=2, widths=(8, 16, 32), projection_dim=64),
    ),
    "default": DemoPreset(
        synth=SynthConfig(),
        encoder=EncoderConfig(),
        recommenders={"popularity": {}, "mf": {}},
    ),
}
