"""Slate policies: valid, exact propensities; the learners learn; REINFORCE beats its logger."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pinlab_data import BanditFeedback, MatrixPreference, SimConfig, Simulator
from pinlab_models import (
    POLICIES,
    PinlabModelError,
    PolicyInputs,
    ReinforceConfig,
    StationaryPolicy,
    build_policy,
    fit_reward_model,
    plackett_luce_marginals,
    train_reinforce,
)
from pinlab_models._bandits import plackett_luce_slate_probability

ITEMS = np.random.default_rng(0).normal(size=(8, 3))
CONTEXT = np.random.default_rng(1).normal(size=(5, 3))
STATIONARY = ("random", "greedy", "softmax", "epsilon-greedy")


def _brute_force_marginals(p: np.ndarray, k: int) -> np.ndarray:
    """Every ordered slate's Plackett-Luce probability, summed per item and position."""
    out = np.zeros((len(p), k))
    for slate in itertools.permutations(range(len(p)), k):
        prob, left = 1.0, 1.0
        for item in slate:
            prob *= p[item] / left
            left -= p[item]
        for pos, item in enumerate(slate):
            out[item, pos] += prob
    return out


@pytest.mark.parametrize("k", [1, 2, 3])
def test_plackett_luce_marginals_are_exact(k: int) -> None:
    p = np.random.default_rng(k).dirichlet(np.full(6, 0.7), 3)
    got = plackett_luce_marginals(p, k)
    for row in range(3):
        np.testing.assert_allclose(got[row], _brute_force_marginals(p[row], k), atol=1e-12)
    with pytest.raises(PinlabModelError, match="up to 3"):
        plackett_luce_marginals(p, 4)


@pytest.mark.parametrize("name", STATIONARY)
def test_stationary_policies_have_valid_exact_propensities(name: str) -> None:
    policy = build_policy(name, PolicyInputs(items=ITEMS, slate_size=3))
    assert isinstance(policy, StationaryPolicy)
    marg = policy.marginals(CONTEXT)
    assert marg.shape == (5, 8, 3) and (marg >= 0).all()
    np.testing.assert_allclose(marg.sum(axis=1), 1.0)  # a distribution at every position
    assert (marg.sum(axis=2) <= 1 + 1e-12).all()  # an item fills at most one position
    rng = np.random.default_rng(2)
    choice = policy.act(CONTEXT, rng)
    slates = choice.slates
    assert slates.shape == (5, 3) and all(len(set(row)) == 3 for row in slates.tolist())
    assert choice.pscore is not None and choice.pscore_slate is not None
    rows = np.arange(5)[:, None]
    np.testing.assert_allclose(choice.pscore, marg[rows, slates, np.arange(3)[None, :]])
    # The logged slate probability matches how often the policy shows that slate.
    draws = 4000
    same = np.zeros(5)
    for _ in range(draws):
        same += (policy.act(CONTEXT, rng).slates == slates).all(axis=1)
    np.testing.assert_allclose(same / draws, choice.pscore_slate, atol=0.02)


def test_softmax_marginals_match_its_draws_and_temperature_sharpens() -> None:
    inputs = PolicyInputs(items=ITEMS, slate_size=3)
    policy = build_policy("softmax", inputs, {"temperature": 0.7})
    assert isinstance(policy, StationaryPolicy)
    rng = np.random.default_rng(3)
    counts = np.zeros((5, 8, 3))
    for _ in range(3000):
        slates = policy.act(CONTEXT, rng, propensities=False).slates
        counts[np.arange(5)[:, None], slates, np.arange(3)[None, :]] += 1
    np.testing.assert_allclose(counts / 3000, policy.marginals(CONTEXT), atol=0.03)
    cold = build_policy("softmax", inputs, {"temperature": 0.1})
    assert isinstance(cold, StationaryPolicy)
    sharp = cold.marginals(CONTEXT)[:, :, 0].max(axis=1)
    assert (sharp > policy.marginals(CONTEXT)[:, :, 0].max(axis=1)).all()


def test_slate_probability_of_plackett_luce_sums_to_one() -> None:
    p = np.random.default_rng(4).dirichlet(np.ones(5), 2)
    slates = np.array(list(itertools.permutations(range(5), 2)))
    for row in range(2):
        probs = plackett_luce_slate_probability(np.repeat(p[row : row + 1], len(slates), 0), slates)
        assert probs.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("name", [n for n in POLICIES if n not in STATIONARY])
def test_learners_show_valid_slates_and_update(name: str) -> None:
    settings = {"first_refit": 10} if name == "neural-linear" else {}
    policy = build_policy(name, PolicyInputs(items=ITEMS, slate_size=3), settings)
    rng = np.random.default_rng(5)
    for _ in range(5):
        choice = policy.act(CONTEXT, rng)
        assert all(len(set(row)) == 3 for row in choice.slates.tolist())
        assert choice.slates.min() >= 0 and choice.slates.max() < 8
        if choice.pscore is not None:
            assert ((choice.pscore > 0) & (choice.pscore <= 1)).all()
        policy.update(CONTEXT, choice.slates, (rng.random((5, 3)) < 0.3).astype(float))


def test_thompson_estimates_its_propensities_when_asked() -> None:
    inputs = PolicyInputs(items=ITEMS, slate_size=2)
    policy = build_policy("thompson", inputs, {"propensity_samples": 50})
    choice = policy.act(CONTEXT, np.random.default_rng(6))
    assert choice.pscore is not None
    assert ((choice.pscore >= 1 / 51) & (choice.pscore <= 1)).all()
    silent = build_policy("thompson", inputs).act(CONTEXT, np.random.default_rng(6))
    assert silent.pscore is None


def test_unknown_policies_and_settings_are_refused() -> None:
    inputs = PolicyInputs(items=ITEMS, slate_size=3)
    with pytest.raises(PinlabModelError, match="unknown policy 'nope'"):
        build_policy("nope", inputs)
    with pytest.raises(PinlabModelError, match="train_reinforce"):
        build_policy("reinforce", inputs)
    with pytest.raises(PinlabModelError, match="takes no settings"):
        build_policy("greedy", inputs, {"epsilon": 0.1})
    with pytest.raises(ValueError, match="epsilon"):
        build_policy("epsilon-greedy", inputs, {"epsilon": 2})
    with pytest.raises(PinlabModelError, match="up to 3"):
        build_policy("softmax", PolicyInputs(items=ITEMS, slate_size=4))
    with pytest.raises(PinlabModelError, match="contexts of shape"):
        build_policy("greedy", inputs).act(np.zeros((2, 5)), np.random.default_rng(0))


# --- a tiny world where the truth is linear in what policies see ---------------------------------


def _tiny_world(seed: int = 0) -> tuple[np.ndarray, np.ndarray, MatrixPreference]:
    """Users' contexts and items' vectors (what policies see) and attraction from a truth that
    the contexts explain linearly per item but the fitted item vectors only roughly."""
    rng = np.random.default_rng(seed)
    users, items, d = 200, 20, 4
    contexts = rng.normal(size=(users, d))
    true_items = rng.normal(size=(items, d))
    logits = contexts @ true_items.T - 2.0
    attraction = 1 / (1 + np.exp(-logits))
    fitted = true_items + rng.normal(scale=1.0, size=true_items.shape)  # a mediocre recommender
    return contexts, fitted, MatrixPreference(attraction)


def _regret(name: str, seed: int, rounds: int = 4000) -> float:
    contexts, items, truth = _tiny_world()
    sim = Simulator(
        truth, SimConfig(slate_size=2, fatigue=0, drift=0, users_per_step=20, seed=seed)
    )
    policy = build_policy(name, PolicyInputs(items=items, slate_size=2, seed=seed))
    rng = np.random.default_rng(seed + 100)
    regret = 0.0
    while sim.rounds < rounds:
        users = sim.draw_users()
        choice = policy.act(contexts[users], rng, propensities=False)
        outcome = sim.step(users, choice.slates)
        policy.update(contexts[users], choice.slates, outcome.clicks)
        regret += float(outcome.regret.sum())
    return regret


def test_linucb_and_thompson_beat_greedy_on_a_tiny_world() -> None:
    """Over a few thousand rounds, exploring learners lose less than the greedy ones (summed
    over three seeds; no timing, the regret itself can fail)."""
    regret = {
        name: sum(_regret(name, seed) for seed in range(3))
        for name in ("online-greedy", "greedy", "linucb", "thompson")
    }
    for learner in ("linucb", "thompson"):
        for baseline in ("online-greedy", "greedy"):
            assert regret[learner] < regret[baseline], regret


def _logs(policy_name: str, rounds: int, seed: int) -> tuple[BanditFeedback, np.ndarray, Simulator]:
    contexts, items, truth = _tiny_world()
    config = SimConfig(slate_size=2, fatigue=0, drift=0, users_per_step=50, seed=seed)
    sim = Simulator(truth, config)
    policy = build_policy(policy_name, PolicyInputs(items=items, slate_size=2), {"epsilon": 0.3})
    assert isinstance(policy, StationaryPolicy)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "a", "r", "p", "d")}
    while sim.rounds < rounds:
        users = sim.draw_users()
        choice = policy.act(contexts[users], rng)
        outcome = sim.step(users, choice.slates)
        assert choice.pscore is not None
        parts["x"].append(np.repeat(contexts[users], 2, axis=0))
        parts["a"].append(choice.slates.ravel())
        parts["r"].append(outcome.clicks.ravel())
        parts["p"].append(choice.pscore.ravel())
        parts["d"].append(np.repeat(policy.marginals(contexts[users]), 2, axis=0))
    n = sum(len(a) for a in parts["a"])
    fb = BanditFeedback(
        n_actions=len(items),
        len_list=2,
        round_id=np.repeat(np.arange(n // 2), 2),
        action=np.concatenate(parts["a"]),
        position=np.tile([0, 1], n // 2),
        reward=np.concatenate(parts["r"]),
        pscore=np.concatenate(parts["p"]),
        context=np.concatenate(parts["x"]),
        logger_dist=np.concatenate(parts["d"]),
    )
    return fb, items, Simulator(truth, config)


def test_reinforce_improves_on_its_logger_on_a_tiny_world() -> None:
    fb, items, sim = _logs("epsilon-greedy", 6000, seed=7)
    contexts = _tiny_world()[0]
    logger = build_policy(
        "epsilon-greedy", PolicyInputs(items=items, slate_size=2), {"epsilon": 0.3}
    )
    learned = train_reinforce(fb, items, ReinforceConfig(epochs=30), seed=0)
    assert isinstance(logger, StationaryPolicy)
    value_logger = sim.on_policy_value(logger.marginals(contexts))
    value_learned = sim.on_policy_value(learned.marginals(contexts))
    assert value_learned > value_logger * 1.05, (value_learned, value_logger)
    assert learned.report["rows"] == len(fb) and len(learned.report["loss_per_epoch"]) == 30
    # Its propensities are valid like any stationary policy's.
    marg = learned.marginals(contexts[:4])
    np.testing.assert_allclose(marg.sum(axis=1), 1.0)


def test_reinforce_with_a_learned_beta_trains_too() -> None:
    fb, items, _ = _logs("epsilon-greedy", 1000, seed=8)
    policy = train_reinforce(fb, items, ReinforceConfig(beta="learned", epochs=2), seed=0)
    assert policy.report["beta"] == "learned" and 0 <= policy.report["capped_share"] <= 1


def test_reward_model_is_cross_fitted_and_learns_the_clicks() -> None:
    fb, items, _ = _logs("epsilon-greedy", 3000, seed=9)
    q = fit_reward_model(fb, items, folds=2, seed=0)
    assert q.shape == (len(fb), len(items), 2) and ((q > 0) & (q < 1)).all()
    contexts, _, truth = _tiny_world()
    # Predictions at position 0 rank items like the true attraction does (per logged row).
    rows = np.arange(0, len(fb), 2)
    user_of_row = np.array(
        [np.flatnonzero((contexts == fb.context[r]).all(axis=1))[0] for r in rows[:200]]
    )
    true = truth.attraction(user_of_row)
    corr = [np.corrcoef(q[r, :, 0], true[i])[0, 1] for i, r in enumerate(rows[:200])]
    assert np.mean(corr) > 0.5
    # Cross-fitting: a row's own reward never reaches its prediction.
    flipped = BanditFeedback(
        **{**fb.__dict__, "reward": np.where(np.arange(len(fb)) == 0, 1 - fb.reward, fb.reward)}
    )
    q2 = fit_reward_model(flipped, items, folds=2, seed=0)
    np.testing.assert_allclose(q2[0], q[0])
    with pytest.raises(PinlabModelError, match="2 folds"):
        fit_reward_model(fb, items, folds=1)
