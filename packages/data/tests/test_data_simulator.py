"""The simulator: seeded, its click models and dynamics do what the docs say, bad slates refused."""

from __future__ import annotations

import numpy as np
import pytest

from pinlab_data import (
    MatrixPreference,
    PinlabDataError,
    SimConfig,
    Simulator,
    SynthTruth,
    synth_preferences,
)

RNG = np.random.default_rng(0)
ATTRACTION = RNG.uniform(0.05, 0.6, (50, 12))


def _uniform_slates(sim: Simulator, users: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keys = rng.random((len(users), sim.num_items))
    return np.argsort(keys, axis=1)[:, : sim.config.slate_size]


def _run(config: SimConfig, steps: int = 5) -> list[np.ndarray]:
    sim = Simulator(MatrixPreference(ATTRACTION), config)
    out = []
    for step in range(steps):
        users = sim.draw_users()
        outcome = sim.step(users, _uniform_slates(sim, users, step))
        out += [users, outcome.clicks, outcome.expected]
    return out


@pytest.mark.parametrize("click_model", ["pbm", "cascade"])
def test_same_seed_same_clicks(click_model: str) -> None:
    config = SimConfig(click_model=click_model, users_per_step=20, seed=4)
    a, b = _run(config), _run(config)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    other = _run(config.model_copy(update={"seed": 5}))
    assert any(not np.array_equal(x, y) for x, y in zip(a, other, strict=True))


def test_position_bias_lowers_clicks_down_the_slate() -> None:
    """The same attraction everywhere: pbm's click rate falls with the position, as 1/(p+1)."""
    flat = MatrixPreference(np.full((400, 10), 0.5))
    sim = Simulator(flat, SimConfig(slate_size=4, fatigue=0, drift=0, users_per_step=400))
    clicks = np.zeros(4)
    for step in range(20):
        users = sim.draw_users()
        clicks += sim.step(users, _uniform_slates(sim, users, step)).clicks.sum(axis=0)
    rate = clicks / (20 * 400)
    assert (np.diff(rate) < 0).all()
    np.testing.assert_allclose(rate, 0.5 / np.arange(1, 5), atol=0.02)


def test_cascade_clicks_once_and_stops() -> None:
    flat = MatrixPreference(np.full((300, 8), 0.4))
    sim = Simulator(flat, SimConfig(click_model="cascade", fatigue=0, drift=0, users_per_step=300))
    users = sim.draw_users()
    outcome = sim.step(users, _uniform_slates(sim, users, 0))
    assert outcome.clicks.sum(axis=1).max() == 1  # at most one click a slate
    rate = outcome.clicks.mean(axis=0)
    assert rate[0] > rate[1] > rate[2]  # 0.4, 0.24, 0.144: later items are reached less often
    np.testing.assert_allclose(outcome.expected, 1 - 0.6**3)


def test_fatigue_lowers_repeat_clicks() -> None:
    """Showing one user the same slate again and again: its clicks fall; without fatigue not."""
    pref = MatrixPreference(np.full((1, 6), 0.6))
    rates = {}
    for fatigue in (0.0, 0.5):
        sim = Simulator(pref, SimConfig(fatigue=fatigue, drift=0, seed=1))
        expected = [
            float(sim.step(np.array([0]), np.array([[0, 1, 2]])).expected[0]) for _ in range(6)
        ]
        rates[fatigue] = expected
    assert rates[0.0] == [rates[0.0][0]] * 6
    assert all(b < a for a, b in zip(rates[0.5], rates[0.5][1:], strict=False))
    # Items never shown keep their full attraction.
    assert sim.attraction(np.array([0]))[0, 3] == pytest.approx(0.6)


def test_drift_moves_interests_towards_the_end_preference() -> None:
    start = np.full((2, 4), 0.1)
    end = np.full((2, 4), 0.1)
    end[:, 3] = 0.9
    sim = Simulator(
        MatrixPreference(start),
        SimConfig(fatigue=0, drift=0.1, slate_size=1),
        drift_to=MatrixPreference(end),
    )
    before = sim.attraction(np.array([0, 1]))[:, 3]
    for _ in range(30):
        sim.step(np.array([0]), np.array([[0]]))  # only user 0 is served
    after = sim.attraction(np.array([0, 1]))[:, 3]
    assert after[0] > before[0] + 0.5  # moved most of the way
    assert after[1] == before[1]  # a user not served does not drift


def test_best_slate_is_never_beaten() -> None:
    for click_model in ("pbm", "cascade"):
        sim = Simulator(
            MatrixPreference(ATTRACTION),
            SimConfig(click_model=click_model, users_per_step=50),
        )
        for step in range(10):
            users = sim.draw_users()
            outcome = sim.step(users, _uniform_slates(sim, users, step))
            assert (outcome.regret >= -1e-12).all()


def test_on_policy_value_matches_a_long_run() -> None:
    """The exact value of the uniform policy equals its mean clicks over many rounds."""
    config = SimConfig(fatigue=0, drift=0, users_per_step=50, seed=2)
    sim = Simulator(MatrixPreference(ATTRACTION), config)
    k = config.slate_size
    exact = sim.on_policy_value(np.full((50, 12, k), 1 / 12))
    clicks = [
        sim.step(users, _uniform_slates(sim, users, s)).clicks.mean()
        for s in range(800)
        for users in [sim.draw_users()]
    ]
    assert np.mean(clicks) == pytest.approx(exact, rel=0.05)
    with pytest.raises(PinlabDataError, match="stationary"):
        Simulator(MatrixPreference(ATTRACTION), SimConfig()).on_policy_value(
            np.full((50, 12, k), 1 / 12)
        )


def test_synthetic_preference_follows_taste() -> None:
    rng = np.random.default_rng(1)
    users, pins, cats = 30, 60, 4
    truth = SynthTruth(
        categories=list("abcd"),
        palettes=list("xyz"),
        taste_start=rng.dirichlet(np.full(cats, 0.3), users).astype(np.float32),
        taste_end=rng.dirichlet(np.full(cats, 0.3), users).astype(np.float32),
        palette_taste=rng.dirichlet(np.full(3, 0.6), users).astype(np.float32),
        pin_category=rng.integers(0, cats, pins),
        pin_palette=rng.integers(0, 3, pins),
        pin_appeal=rng.lognormal(0, 1, pins).astype(np.float32),
    )
    start, end = synth_preferences(truth, np.arange(users), np.arange(pins))
    a = start.attraction(np.arange(users))
    assert a.shape == (users, pins) and a.min() >= 0 and a.max() < 1
    # A user's favourite category holds the items they find most attractive on average.
    per_cat = np.stack([a[:, truth.pin_category == c].mean(axis=1) for c in range(cats)], axis=1)
    agree = per_cat.argmax(axis=1) == truth.taste_start.argmax(axis=1)
    assert agree.mean() > 0.7
    assert not np.allclose(a, end.attraction(np.arange(users)))
    with pytest.raises(PinlabDataError, match="pin rows"):
        synth_preferences(truth, np.arange(users), np.array([pins]))


@pytest.mark.parametrize(
    ("slates", "message"),
    [
        (np.array([[0, 1, 99]]), "outside the catalogue"),
        (np.array([[0, 1, 1]]), "shows an item twice"),
        (np.array([[0, 1]]), r"slates must be \(users, 3\)"),
    ],
)
def test_bad_slates_are_refused(slates: np.ndarray, message: str) -> None:
    sim = Simulator(MatrixPreference(ATTRACTION), SimConfig())
    with pytest.raises(PinlabDataError, match=message):
        sim.step(np.array([0]), slates)


def test_bad_preferences_are_refused() -> None:
    with pytest.raises(PinlabDataError, match="within"):
        MatrixPreference(np.full((2, 3), 1.5))
    with pytest.raises(PinlabDataError, match="fewer than a slate"):
        Simulator(MatrixPreference(np.full((2, 2), 0.5)), SimConfig(slate_size=3))


def test_scores_become_calibrated_attraction() -> None:
    scores = np.array([[1.0, 2.0, 3.0, 4.0], [10.0, 0.0, 5.0, 5.0]])
    pref = MatrixPreference.from_scores(scores, base_rate=0.05, spread=1.5)
    a = pref.attraction(np.array([0, 1]))
    assert (np.argsort(a, axis=1) == np.argsort(scores, axis=1)).all()  # order kept
    assert a[1, 2] == pytest.approx(0.05)  # an average score gets the base rate
