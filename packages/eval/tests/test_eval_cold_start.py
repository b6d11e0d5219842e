"""The cold-start protocol: items held out entirely, rankings over the cold items only."""

from __future__ import annotations

import numpy as np
import pytest

from pinlab_data import holdout_mask
from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_eval import ProtocolSpec, apply_protocol, evaluate_holdout, protocol_spec


def random_log(seed: int, num_users: int = 80, num_items: int = 50) -> InteractionLog:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, num_users, 1500)
    items = rng.integers(0, num_items, 1500)
    return InteractionLog(
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        timestamps=rng.permutation(1500).astype(np.int64),
        weights=np.ones(1500, dtype=np.float32),
        user_ids=np.arange(num_users, dtype=np.int64) + 100,
        item_ids=np.arange(num_items, dtype=np.int64) + 1000,
    )


@pytest.mark.parametrize("seed", [0, 7])
def test_cold_items_are_held_out_entirely(seed: int) -> None:
    log = random_log(seed)
    spec = protocol_spec("cold-start", {"cold_fraction": 0.3, "seed": seed})
    split = apply_protocol(log, spec)
    test = split.test
    cold = np.flatnonzero(holdout_mask(log.item_ids, 0.3, seed))
    assert 0 < len(cold) < log.num_items
    assert not np.isin(test.train.items, cold).any()
    assert np.isin(test.target.items, cold).all()
    # Every interaction with a cold item is a target, once per (user, item) pair.
    with_cold = np.isin(log.items, cold)
    pairs = np.unique(log.users[with_cold] * log.num_items + log.items[with_cold])
    assert len(test.target) == len(pairs) - test.counts.dropped_interactions
    assert test.candidates is not None
    np.testing.assert_array_equal(test.candidates, np.setdiff1d(np.arange(50), test.train.items))
    # Validation holds out warm items inside the training part; test items stay unseen there.
    valid = split.valid
    assert valid.candidates is not None
    assert not np.isin(valid.train.items, valid.candidates).any()
    assert not np.isin(valid.target.items, cold).any()
    again = apply_protocol(log, spec)
    np.testing.assert_array_equal(again.test.target.items, test.target.items)


class PrefersWarm:
    """Scores items by index, so the warm items with high indices would win a full ranking."""

    def __init__(self, num_items: int) -> None:
        self.num_items = num_items

    def score(self, users: Int64Array) -> Float32Array:
        return np.tile(np.arange(self.num_items, dtype=np.float32), (len(users), 1))


def test_rankings_cover_only_the_cold_items() -> None:
    log = random_log(1)
    split = apply_protocol(log, ProtocolSpec(name="cold-start", cold_fraction=0.2, seed=3))
    result = evaluate_holdout(PrefersWarm(log.num_items), split.test, ks=(5,))
    assert split.test.candidates is not None
    best_cold = np.sort(split.test.candidates)[::-1][:5]
    # Cold items are found at the rate a cold-only list gives, and coverage is those 5 items.
    assert result.lists["coverage@5"] == pytest.approx(len(best_cold) / log.num_items)
    targets = split.test.target
    hit = [np.isin(best_cold, targets.items[targets.users == u]).any() for u in result.users]
    np.testing.assert_allclose(result.per_user["hr@5"], np.array(hit, dtype=float))


def test_cold_fraction_belongs_to_the_cold_start_protocol() -> None:
    assert ProtocolSpec(name="cold-start").label() == "cold-start(cold_fraction=0.2, seed=42)"
    with pytest.raises(ValueError, match="setting of the cold-start protocol"):
        ProtocolSpec(name="stratified", cold_fraction=0.5)
    with pytest.raises(ValueError, match="less than 1"):
        ProtocolSpec(name="cold-start", cold_fraction=1.0)
