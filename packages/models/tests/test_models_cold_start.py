"""The hybrid recommender scores items nobody engaged with from their features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pinlab_data.contracts import Float32Array, InteractionLog
from pinlab_models import HybridConfig, HybridRecommender, PinlabModelError, TrainContext

FAST = HybridConfig(epochs=20, dim=8, hidden_dim=16, batch_size=64, lr=0.03)


def tribes_with_cold_items(num_users: int = 60, num_items: int = 24) -> InteractionLog:
    """Even users like the first half of the items, odd users the second; the last two items
    of each half (cold) have no interactions at all."""
    rng = np.random.default_rng(0)
    half = num_items // 2
    users, items = [], []
    for u in range(num_users):
        offset = 0 if u % 2 == 0 else half
        liked = rng.choice(half - 2, 6, replace=False) + offset
        users += [u] * 6
        items += list(liked)
    n = len(users)
    return InteractionLog(
        users=np.array(users, dtype=np.int64),
        items=np.array(items, dtype=np.int64),
        timestamps=np.arange(n, dtype=np.int64),
        weights=np.ones(n, dtype=np.float32),
        user_ids=np.arange(num_users, dtype=np.int64),
        item_ids=np.arange(num_items, dtype=np.int64),
    )


def half_features(num_items: int = 24) -> Float32Array:
    side = (np.arange(num_items) >= num_items // 2).astype(np.float32)
    noise = np.random.default_rng(1).normal(0, 0.1, (num_items, 4))
    return np.column_stack([side, 1 - side, noise]).astype(np.float32)


# 20 warm items: the full softmax, and a sampled one of 5 uniform draws per step.
@pytest.mark.parametrize("negatives", [4096, 5])
def test_cold_items_are_ranked_by_their_features(negatives: int, tmp_path: Path) -> None:
    log = tribes_with_cold_items()
    ctx = TrainContext(run_dir=tmp_path, progress=False, item_features=half_features())
    model = HybridRecommender(FAST.model_copy(update={"negatives": negatives}))
    model.fit(log, ctx)
    scores = model.score(np.arange(log.num_users, dtype=np.int64))
    cold_first, cold_second = [10, 11], [22, 23]
    even = np.arange(log.num_users) % 2 == 0
    mine = np.where(even[:, None], scores[:, cold_first], scores[:, cold_second])
    theirs = np.where(even[:, None], scores[:, cold_second], scores[:, cold_first])
    assert (mine.mean(axis=1) > theirs.mean(axis=1)).all()
    # Cold items never had an id vector; the checkpoint keeps the features they are scored by.
    assert model.net is not None and not model.net.items.weight[cold_first + cold_second].any()


def test_features_must_be_given_and_fit_the_catalogue(tmp_path: Path) -> None:
    log = tribes_with_cold_items()
    with pytest.raises(PinlabModelError, match="needs item features"):
        HybridRecommender(FAST).fit(log, TrainContext(run_dir=tmp_path, progress=False))
    wrong = TrainContext(run_dir=tmp_path, progress=False, item_features=half_features(10))
    with pytest.raises(PinlabModelError, match=r"expected \(24, d\)"):
        HybridRecommender(FAST).fit(log, wrong)
    bad = half_features()
    bad[3, 0] = np.nan
    with pytest.raises(PinlabModelError, match="NaN"):
        HybridRecommender(FAST).fit(
            log, TrainContext(run_dir=tmp_path, progress=False, item_features=bad)
        )


def test_hybrid_config_is_strict() -> None:
    with pytest.raises(ValueError, match="less than 1"):
        HybridConfig(item_dropout=1.0)
    with pytest.raises(ValueError, match="extra"):
        HybridConfig.model_validate({"dropout": 0.5})
