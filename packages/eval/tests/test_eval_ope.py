"""Off-policy estimators: hand-computed values, their defining identities, support, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinlab_data import BanditFeedback
from pinlab_eval import (
    ESTIMATORS,
    CiMethod,
    Float64Array,
    OpeEstimate,
    OpeEstimatorName,
    OpeInputError,
    estimate,
    estimate_all,
    round_rewards,
)

PROPERTY = settings(max_examples=25, deadline=None)


def tiny() -> tuple[BanditFeedback, Float64Array, Float64Array]:
    """Four single-action rounds over two actions, a target and a reward model."""
    fb = BanditFeedback(
        n_actions=2,
        len_list=1,
        round_id=np.arange(4),
        action=np.array([0, 1, 0, 1]),
        position=np.zeros(4, dtype=np.int64),
        reward=np.array([1.0, 0.0, 0.0, 1.0]),
        pscore=np.array([0.5, 0.5, 0.8, 0.2]),
        context=np.zeros((4, 0)),
    )
    target = np.array([[0.5, 0.5], [0.2, 0.8], [1.0, 0.0], [0.4, 0.6]])[:, :, None]
    model = np.tile([0.6, 0.4], (4, 1))[:, :, None]
    return fb, target, model


def value(name: OpeEstimatorName, **kwargs: float) -> float | None:
    fb, target, model = tiny()
    return estimate(name, fb, target, model, **kwargs).value  # type: ignore[arg-type]


def test_hand_computed_single_action() -> None:
    # w = pi(a)/pscore = [0.5/0.5, 0.8/0.5, 1/0.8, 0.6/0.2] = [1, 1.6, 1.25, 3]; w r = [1, 0, 0, 3]
    assert value("ips") == pytest.approx(4 / 4)
    assert value("snips") == pytest.approx(4 / (1 + 1.6 + 1.25 + 3))
    # dm_i = 0.6 pi(0) + 0.4 pi(1) = [0.5, 0.44, 0.6, 0.48]
    assert value("dm") == pytest.approx(2.02 / 4)
    # r - q(a) = [0.4, -0.4, -0.6, 0.6]; w (r - q) = [0.4, -0.64, -0.75, 1.8]
    assert value("dr") == pytest.approx((2.02 + 0.4 - 0.64 - 0.75 + 1.8) / 4)
    # tau = 2 drops row 3's correction (w = 3 > 2)
    assert value("switch-dr", tau=2.0) == pytest.approx((2.02 + 0.4 - 0.64 - 0.75) / 4)
    # lambda = 1: w' = w / (w^2 + 1) = [1/2, 1.6/3.56, 1.25/2.5625, 3/10]
    shrunk = 0.4 / 2 - 0.4 * 1.6 / 3.56 - 0.6 * 1.25 / 2.5625 + 0.6 * 3 / 10
    assert value("dr-os", lam=1.0) == pytest.approx((2.02 + shrunk) / 4)
    assert value("pseudo-inverse") == pytest.approx(value("ips"))


def test_hand_computed_pseudo_inverse_on_slates() -> None:
    # Two rounds of two positions; the target is the same everywhere:
    # position 0: [0.5, 0.25, 0.25], position 1: [0.25, 0.5, 0.25].
    fb = BanditFeedback(
        n_actions=3,
        len_list=2,
        round_id=np.array([0, 0, 1, 1]),
        action=np.array([0, 1, 2, 0]),
        position=np.array([0, 1, 0, 1]),
        reward=np.array([1.0, 0.0, 0.0, 1.0]),
        pscore=np.array([0.5, 0.25, 0.25, 0.5]),
        context=np.zeros((4, 1)),
        # the logger: [0.5, 0.25, 0.25] at both positions (the logs alone miss some pairs)
        logger_dist=np.tile(np.array([[0.5, 0.5], [0.25, 0.25], [0.25, 0.25]]), (4, 1, 1)),
    )
    target = np.tile(np.array([[0.5, 0.25], [0.25, 0.5], [0.25, 0.25]]), (4, 1, 1))
    # round 0: w = [1, 2], slate reward 1 -> 1 * (3 - 1) = 2; round 1: w = [1, 0.5] -> 0.5
    pi = estimate("pseudo-inverse", fb, target)
    assert pi.value == pytest.approx((2 + 0.5) / 2)
    assert pi.n_rounds == 2 and pi.n == 4
    # ips stays per impression: w r = [1, 0, 0, 0.5] over 4 rows
    assert estimate("ips", fb, target).value == pytest.approx(1.5 / 4)


def logs(
    seed: int, n: int, n_actions: int, len_list: int = 1
) -> tuple[BanditFeedback, Float64Array]:
    """Random logs from a random context-dependent logger (full support), and that logger."""
    rng = np.random.default_rng(seed)
    logger = rng.dirichlet(np.ones(n_actions), size=(n, len_list)).transpose(0, 2, 1)
    action = np.array(
        [rng.choice(n_actions, p=logger[i, :, i % len_list]) for i in range(n)], dtype=np.int64
    )
    position = np.arange(n) % len_list
    fb = BanditFeedback(
        n_actions=n_actions,
        len_list=len_list,
        round_id=np.arange(n) // len_list,
        action=action,
        position=position,
        reward=rng.normal(size=n),
        pscore=logger[np.arange(n), action, position],
        context=rng.normal(size=(n, 2)),
        logger_dist=logger,
    )
    return fb, logger


def random_target(seed: int, fb: BanditFeedback) -> Float64Array:
    rng = np.random.default_rng(seed + 1)
    return rng.dirichlet(np.ones(fb.n_actions), size=(len(fb), fb.len_list)).transpose(0, 2, 1)


seeds = st.integers(0, 10_000)
sizes = st.integers(2, 40)
catalogues = st.integers(1, 6)


@PROPERTY
@given(seeds, sizes, catalogues)
def test_ips_of_the_logger_itself_is_the_logged_mean(seed: int, n: int, k: int) -> None:
    fb, logger = logs(seed, n, k)
    for name in ("ips", "snips"):
        assert estimate(name, fb, logger).value == pytest.approx(fb.reward.mean())


@PROPERTY
@given(seeds, sizes, catalogues, st.floats(0.05, 1.0))
def test_snips_ignores_a_common_scale_of_pscores(seed: int, n: int, k: int, c: float) -> None:
    fb, _ = logs(seed, n, k)
    target = random_target(seed, fb)
    # the scaled pscores are no longer the logger's, so support is checked against the logger
    scaled = BanditFeedback(**{**fb.__dict__, "pscore": fb.pscore * c, "logger_dist": None})
    assert estimate("snips", scaled, target, logger_dist=fb.logger_dist).value == pytest.approx(
        estimate("snips", fb, target).value
    )


@PROPERTY
@given(seeds, sizes, catalogues)
def test_the_dr_family_is_dm_when_rewards_equal_the_model(seed: int, n: int, k: int) -> None:
    fb, _ = logs(seed, n, k)
    target, model = random_target(seed, fb), random_target(seed + 7, fb)
    exact = BanditFeedback(**{**fb.__dict__, "reward": model[np.arange(n), fb.action, 0]})
    dm = estimate("dm", exact, target, model).value
    for name in ("dr", "switch-dr", "dr-os"):
        assert estimate(name, exact, target, model).value == pytest.approx(dm)


@PROPERTY
@given(seeds, sizes, catalogues)
def test_switch_and_shrinkage_span_dm_to_dr(seed: int, n: int, k: int) -> None:
    fb, _ = logs(seed, n, k)
    target, model = random_target(seed, fb), random_target(seed + 7, fb)
    dr = estimate("dr", fb, target, model).value
    dm = estimate("dm", fb, target, model).value
    assert estimate("switch-dr", fb, target, model, tau=math.inf).value == pytest.approx(dr)
    assert estimate("switch-dr", fb, target, model, tau=0.0).value == pytest.approx(dm)
    assert estimate("dr-os", fb, target, model, lam=math.inf).value == pytest.approx(dr)
    assert estimate("dr-os", fb, target, model, lam=0.0).value == pytest.approx(dm)


@PROPERTY
@given(seeds, sizes, catalogues)
def test_pseudo_inverse_is_ips_for_single_actions(seed: int, n: int, k: int) -> None:
    fb, _ = logs(seed, n, k)
    target = random_target(seed, fb)
    assert estimate("pseudo-inverse", fb, target).value == pytest.approx(
        estimate("ips", fb, target).value
    )


@PROPERTY
@given(seeds, st.integers(2, 20), st.integers(2, 5), st.integers(2, 3))
def test_intervals_hold_the_estimate(seed: int, rounds: int, k: int, slate: int) -> None:
    fb, _ = logs(seed, rounds * slate, k, slate)
    target, model = random_target(seed, fb), random_target(seed + 7, fb)
    methods: tuple[CiMethod, ...] = ("normal", "bootstrap")
    for ci in methods:
        for est in estimate_all(fb, target, model, ci=ci, n_bootstrap=200, seed=seed):
            assert est.value is not None and est.ci_low is not None and est.ci_high is not None
            assert est.n_rounds == rounds
            if ci == "normal":
                assert est.ci_low <= est.value <= est.ci_high


def test_normal_interval_is_the_textbook_one_for_single_rows() -> None:
    fb, target, _ = tiny()
    ips = estimate("ips", fb, target, alpha=0.1)
    contributions = np.array([1.0, 0.0, 0.0, 3.0])
    half = 1.6448536269514722 * contributions.std(ddof=1) / 2  # z(0.95) sd / sqrt(4)
    assert (ips.ci_low, ips.ci_high) == pytest.approx((1 - half, 1 + half))


def test_bootstrap_is_seeded() -> None:
    fb = logs(3, 200, 4)[0]
    target = random_target(3, fb)
    first = estimate("snips", fb, target, ci="bootstrap", n_bootstrap=300, seed=5)
    assert first == estimate("snips", fb, target, ci="bootstrap", n_bootstrap=300, seed=5)
    assert first != estimate("snips", fb, target, ci="bootstrap", n_bootstrap=300, seed=6)


def test_tuning_records_the_chosen_hyperparameter() -> None:
    fb, _ = logs(1, 300, 4)
    target, model = random_target(1, fb), random_target(9, fb)
    switch, shrink = estimate_all(fb, target, model, names=("switch-dr", "dr-os"))
    assert "tau" in switch.params and "chosen" in (switch.note or "")
    assert "lambda" in shrink.params
    fixed = estimate("switch-dr", fb, target, model, tau=switch.params["tau"])
    assert fixed.value == switch.value


def test_a_target_outside_the_logged_support_is_unsupported() -> None:
    fb, target, model = tiny()
    logged_zero_only = BanditFeedback(
        **{**fb.__dict__, "action": np.zeros(4, dtype=np.int64), "pscore": np.full(4, 0.5)}
    )
    results = {e.name: e for e in estimate_all(logged_zero_only, target, model)}
    for name in ("ips", "snips", "dr", "switch-dr", "dr-os", "pseudo-inverse"):
        est = results[name]
        assert not est.supported and est.value is None and est.support == "logged-pairs"
        # action 1 never logged: mass (0.5 + 0.8 + 0 + 0.6) / 4 over 3 rows
        assert est.unsupported_mass == pytest.approx(1.9 / 4) and est.unsupported_rows == 3
        assert "unsupported" in (est.note or "")
    assert results["dm"].supported and results["dm"].value is not None


def test_support_from_the_logger_distribution() -> None:
    fb, target, _ = tiny()
    logger = np.tile([0.5, 0.5], (4, 1))[:, :, None]
    logger[2] = [[0.8], [0.2]]
    logger[3] = [[0.8], [0.2]]
    assert estimate("ips", fb, target, logger_dist=logger).support == "logger_dist"
    logger[0] = [[1.0], [0.0]]  # row 0's target puts 0.5 on action 1, which the logger cannot take
    est = estimate("ips", fb, target, logger_dist=logger)
    assert not est.supported and est.unsupported_mass == pytest.approx(0.5 / 4)


def test_bad_inputs_are_refused() -> None:
    fb, target, model = tiny()
    with pytest.raises(OpeInputError, match=r"shape \(4, 3, 1\), expected"):
        estimate("ips", fb, np.ones((4, 3, 1)) / 3)
    bad = target.copy()
    bad[2, 0, 0] = 0.5
    with pytest.raises(OpeInputError, match=r"distribution .* 1 row\(s\) \(rows 2\)"):
        estimate("ips", fb, bad)
    with pytest.raises(OpeInputError, match="dr needs estimated_rewards"):
        estimate("dr", fb, target)
    with pytest.raises(OpeInputError, match="unknown estimator"):
        estimate("nope", fb, target)  # type: ignore[arg-type]
    nan_model = model.copy()
    nan_model[1] = np.nan
    with pytest.raises(
        OpeInputError, match=r"estimated_rewards is not finite; 1 row\(s\) \(rows 1\)"
    ):
        estimate("dm", fb, target, nan_model)


def test_pseudo_inverse_needs_whole_slates() -> None:
    fb, _ = logs(0, 6, 3, 2)
    partial = BanditFeedback(**{**fb.__dict__, "round_id": np.array([0, 0, 1, 2, 2, 3]) * 1})
    with pytest.raises(OpeInputError, match="whole slates"):
        estimate("pseudo-inverse", partial, random_target(0, partial))
    # and estimate_all leaves it out rather than failing
    names = [e.name for e in estimate_all(partial, random_target(0, partial))]
    assert "pseudo-inverse" not in names and "ips" in names


def test_defaults_cover_what_the_inputs_allow() -> None:
    fb, target, model = tiny()
    assert [e.name for e in estimate_all(fb, target)] == ["ips", "snips", "pseudo-inverse"]
    assert [e.name for e in estimate_all(fb, target, model)] == list(ESTIMATORS)


def test_round_rewards_sum_to_the_value() -> None:
    fb, target, model = tiny()
    a, b = round_rewards("dr", fb, target, model)
    assert a.sum() / b.sum() == pytest.approx(value("dr"))


def test_estimates_round_trip_json_with_infinite_parameters() -> None:
    fb, target, model = tiny()
    est = estimate("switch-dr", fb, target, model, tau=math.inf)
    assert OpeEstimate.model_validate_json(est.model_dump_json()) == est


def test_intervals_cover_the_truth_at_about_their_level() -> None:
    # A known bandit: uniform logger over 5 actions, Bernoulli rewards, a fixed target and a
    # biased reward model (dr stays unbiased). 300 seeded log sets of 1,000 rounds; a 95%
    # interval should cover the true value in about 285 (binomial sd about 4).
    means = np.array([0.1, 0.2, 0.3, 0.5, 0.7])
    target = np.array([0.05, 0.05, 0.1, 0.3, 0.5])
    truth = float(target @ means)
    names: tuple[OpeEstimatorName, ...] = ("ips", "snips", "dr")
    covered = dict.fromkeys(names, 0)
    n, k = 1000, len(means)
    dist = np.broadcast_to(target[None, :, None], (n, k, 1))
    model = np.broadcast_to((means + 0.1)[None, :, None], (n, k, 1))
    for seed in range(300):
        rng = np.random.default_rng(seed)
        action = rng.integers(0, k, n)
        fb = BanditFeedback(
            n_actions=k,
            len_list=1,
            round_id=np.arange(n),
            action=action,
            position=np.zeros(n, dtype=np.int64),
            reward=(rng.random(n) < means[action]).astype(float),
            pscore=np.full(n, 1 / k),
            context=np.zeros((n, 0)),
        )
        for est in estimate_all(fb, dist, model, names=names):
            assert est.ci_low is not None and est.ci_high is not None
            covered[est.name] += est.ci_low <= truth <= est.ci_high
    for name, hits in covered.items():
        assert 270 <= hits <= 298, (name, hits)


@pytest.mark.parametrize("logger", ["independent", "uniform-without-replacement"])
def test_pseudo_inverse_is_unbiased_for_additive_slate_rewards(logger: str) -> None:
    # Slates of 3 from 5 actions; the reward of a slate is the sum of Bernoulli clicks whose
    # rates depend on action and position. The target fills positions independently from
    # its own marginals. The mean of 300 seeded estimates must sit within 4 standard errors
    # of the true slate value, sum_j sum_a q_j(a) mu_j(a).
    k, slate, rounds = 5, 3, 200
    mu = np.linspace(0.05, 0.6, k)[:, None] * np.array([1.0, 0.6, 0.3])[None, :]
    q = np.array([[0.4, 0.3, 0.1, 0.1, 0.1], [0.1, 0.1, 0.2, 0.3, 0.3], [0.2] * 5]).T
    truth = float((q * mu).sum())
    independent = np.array([[0.3, 0.3, 0.2, 0.1, 0.1], [0.2] * 5, [0.1, 0.2, 0.3, 0.2, 0.2]]).T
    n = rounds * slate
    position = np.tile(np.arange(slate), rounds)
    target = np.broadcast_to(q[None], (n, k, slate))
    values = []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        if logger == "independent":
            cumulative = np.cumsum(independent, axis=0)[:, position].T  # (n, k)
            action = (rng.random(n)[:, None] > cumulative).sum(axis=1)
            pscore = independent[action, position]
        else:
            action = np.concatenate([rng.permutation(k)[:slate] for _ in range(rounds)])
            pscore = np.full(n, 1 / k)
        fb = BanditFeedback(
            n_actions=k,
            len_list=slate,
            round_id=np.repeat(np.arange(rounds), slate),
            action=action,
            position=position,
            reward=(rng.random(n) < mu[action, position]).astype(float),
            pscore=pscore,
            context=np.zeros((n, 0)),
        )
        est = estimate("pseudo-inverse", fb, target)
        assert est.value is not None
        values.append(est.value)
    spread = np.std(values, ddof=1) / np.sqrt(len(values))
    assert abs(np.mean(values) - truth) < 4 * spread, (np.mean(values), truth, spread)
