"""Search-space contracts, the specs' declarations, and one error for a duplicate name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from pinlab_models import (
    Choice,
    FloatRange,
    IntRange,
    PinlabModelError,
    PopularityConfig,
    RecommenderSpec,
    SearchParam,
    Simplex,
    TrainContext,
    build_recommender,
    recommender_names,
    recommender_spec,
    register,
    register_encoder_arch,
)
from pinlab_models._architectures import builtin_archs
from pinlab_models._recommenders import Popularity


def test_edges_by_hand() -> None:
    linear = FloatRange(low=0.0, high=1.0)
    assert linear.on_edge(0.0) and linear.on_edge(0.985) and not linear.on_edge(0.5)
    log = FloatRange(low=1.0, high=1e4, log=True)
    # 2% of four decades is 0.08 decades: 1.2 is inside the margin, 1.3 is not.
    assert log.on_edge(1.2) and not log.on_edge(1.3) and log.on_edge(9000.0)
    assert IntRange(low=5, high=50).on_edge(50) and not IntRange(low=5, high=50).on_edge(49)
    assert Choice(values=(16, 64, 256)).on_edge(16) and not Choice(values=(16, 64, 256)).on_edge(64)
    assert not Choice(values=("bpr", "softmax")).on_edge("bpr")  # unordered: no edge
    assert Simplex().on_edge((0.97, 0.03)) and not Simplex().on_edge((0.6, 0.4))


@settings(max_examples=50, deadline=None)
@given(st.floats(0.001, 1000), st.floats(1.01, 1000), st.floats(0, 1))
def test_a_log_range_is_on_its_edge_only_near_its_ends(low: float, ratio: float, at: float) -> None:
    assume(abs(at - 0.02) > 1e-6 and abs(at - 0.98) > 1e-6)  # float noise at the margin
    space = FloatRange(low=low, high=low * ratio, log=True)
    assert space.on_edge(low * ratio**at) == (at < 0.02 or at > 0.98)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "float", "low": 2.0, "high": 1.0}, "low < high"),
        ({"kind": "float", "low": 0.0, "high": 1.0, "log": True}, "log-scale range needs low > 0"),
        ({"kind": "choice", "values": ["only"]}, "at least 2"),
        ({"kind": "grid", "values": [1, 2]}, "does not match any of the expected tags"),
    ],
)
def test_bad_spaces_are_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TypeAdapter(SearchParam).validate_python(data)


@pytest.mark.parametrize("name", recommender_names())
def test_every_spec_declares_what_its_config_has(name: str) -> None:
    spec = recommender_spec(name)
    fields = spec.config_type.model_fields
    assert set(spec.search_space) <= set(fields)
    if spec.epoch_field:
        assert fields[spec.epoch_field].annotation is not None
    if spec.members is not None:
        members = spec.members(spec.config_type())
        assert members and all(m in recommender_names() for m in members)
    # Every space is JSON-able and its defaults build.
    for param in spec.search_space.values():
        assert TypeAdapter(SearchParam).validate_python(param.model_dump()) == param
    build_recommender(name)


def test_a_spec_naming_a_missing_field_is_refused() -> None:
    with pytest.raises(PinlabModelError, match="names 'l2', which PopularityConfig does not"):
        RecommenderSpec(
            name="broken",
            summary="",
            config_type=PopularityConfig,
            build=Popularity,
            from_checkpoint=Popularity.from_checkpoint,
            search_space={"l2": FloatRange(low=1, high=2)},
        )


def test_registries_refuse_a_duplicate_name_the_same_way() -> None:
    with pytest.raises(PinlabModelError, match="recommender 'ease' is already registered"):
        register(recommender_spec("ease"))
    arch = builtin_archs()[0]
    with pytest.raises(PinlabModelError, match=f"encoder architecture '{arch}' is already"):
        register_encoder_arch(arch, lambda config: None)  # type: ignore[arg-type,return-value]


def test_epoch_training_stops_at_the_deadline(tmp_path: Path) -> None:
    import time

    from pinlab_data.contracts import InteractionLog

    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 600), rng.integers(0, 40, 600)
    log = InteractionLog(
        users=users, items=items, timestamps=np.arange(600), weights=np.ones(600, np.float32),
        user_ids=np.arange(30), item_ids=np.arange(40),
    )  # fmt: skip
    model = build_recommender("mf", {"epochs": 50, "dim": 8, "patience": 50})
    spent = TrainContext(run_dir=tmp_path, progress=False, deadline=time.monotonic() - 1)
    report = model.fit(log, spent, validate=lambda scorer: 0.5)
    assert report.epochs == 1 and report.best_epoch == 1
    free = TrainContext(run_dir=tmp_path / "free", progress=False)
    assert (
        build_recommender("mf", {"epochs": 3, "dim": 8}).fit(log, free, lambda s: 0.5).epochs == 3
    )
