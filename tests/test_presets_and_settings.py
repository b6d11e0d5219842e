"""Every shipped preset loads and validates; settings come from the environment and flags."""

from __future__ import annotations

import pytest

from pinlab_models import recommender_names
from pinlab_tasks.presets import PRESETS, DemoPreset
from pinlab_tasks.settings import PinlabSettings


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_and_name_registered_models(name: str) -> None:
    preset = PRESETS[name]
    assert DemoPreset.model_validate(preset.model_dump()) == preset
    assert "popularity" in preset.recommenders
    assert set(preset.recommenders) <= set(recommender_names())


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINLAB_SEED", "7")
    monkeypatch.setenv("PINLAB_DEVICE", "cpu")
    monkeypatch.setenv("PINLAB_LOG_LEVEL", "debug")
    s = PinlabSettings()
    assert (s.seed, s.device, s.log_level) == (7, "cpu", "DEBUG")


def test_settings_refuse_unsafe_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINLAB_DEVICE", "tpu")
    with pytest.raises(ValueError, match="device"):
        PinlabSettings()
    monkeypatch.setenv("PINLAB_DEVICE", "cpu")
    monkeypatch.setenv("PINLAB_THREADS", "0")
    with pytest.raises(ValueError, match="threads"):
        PinlabSettings()
