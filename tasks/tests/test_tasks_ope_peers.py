"""obp as a peer: ours and obp's estimates on identical inputs, and the Open Bandit check."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from pinlab_data import BanditFeedback
from pinlab_tasks import ope_peers

needs_obp = pytest.mark.skipif(
    importlib.util.find_spec("obp") is None,
    reason="obp is an optional extra: uv sync --all-packages --extra obp",
)


def slate_logs(
    seed: int, rounds: int, n_actions: int, len_list: int
) -> tuple[BanditFeedback, np.ndarray, np.ndarray]:
    """Logs of a random context-dependent logger, a random target and a random reward model."""
    rng = np.random.default_rng(seed)
    n = rounds * len_list
    logger = rng.dirichlet(np.ones(n_actions), size=(n, len_list)).transpose(0, 2, 1)
    position = np.arange(n) % len_list
    action = np.array([rng.choice(n_actions, p=logger[i, :, position[i]]) for i in range(n)])
    fb = BanditFeedback(
        n_actions=n_actions,
        len_list=len_list,
        round_id=np.arange(n) // len_list,
        action=action,
        position=position,
        reward=rng.binomial(1, 0.3, n).astype(float),
        pscore=logger[np.arange(n), action, position],
        context=rng.normal(size=(n, 3)),
    )
    target = rng.dirichlet(np.ones(n_actions), size=(n, len_list)).transpose(0, 2, 1)
    return fb, target, rng.uniform(size=(n, n_actions, len_list))


def test_without_obp_the_reason_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "obp" else real(name, *a)
    )
    fb, target, model = slate_logs(0, 10, 3, 1)
    for payload in (ope_peers.obp_agreement(fb, target, model), ope_peers.open_bandit_check()):
        assert payload["available"] is False and "--extra obp" in payload["reason"]


def test_click_model_is_a_cross_fitted_probability() -> None:
    fb, _, _ = slate_logs(1, 100, 5, 2)
    out = ope_peers.click_model(fb, folds=3, seed=0)
    assert out.shape == (200, 5, 2) and ((out > 0) & (out < 1)).all()
    # cross-fitting: flipping one row's click leaves that row's own predictions unchanged
    reward = fb.reward.copy()
    reward[7] = 1 - reward[7]
    flipped = ope_peers.click_model(BanditFeedback(**{**fb.__dict__, "reward": reward}), seed=0)
    np.testing.assert_allclose(flipped[7], out[7])
    assert not np.allclose(flipped, out)


@pytest.mark.slow  # importing obp (and the torch it imports) takes seconds
@needs_obp
@pytest.mark.parametrize(
    ("len_list", "tau", "lam"), [(1, 2.0, 5.0), (3, 20.0, 100.0), (1, math.inf, 0.0)]
)
def test_ours_and_obps_agree_on_identical_inputs(len_list: int, tau: float, lam: float) -> None:
    fb, target, model = slate_logs(2, 400, 6, len_list)
    payload = ope_peers.obp_agreement(fb, target, model, tau=tau, lam=lam)
    assert payload["available"] and payload["agree"], payload
    assert payload["max_abs_diff"] <= ope_peers.OBP_TOLERANCE
    expected = {"dm", "ips", "snips", "dr", "switch-dr", "dr-os"}
    if len_list == 1:
        expected.add("pseudo-inverse")
    assert set(payload["estimators"]) == expected
    # the values differ across estimators, so agreement is not agreement on a constant
    values = {round(row["ours"], 9) for row in payload["estimators"].values()}
    assert len(values) >= 4


@pytest.mark.slow  # obp's BTS simulation and the reward model's fits take a while
@needs_obp
def test_open_bandit_check_estimates_bts_from_random_logs() -> None:
    payload = ope_peers.open_bandit_check(campaign="all")
    assert payload["available"] and payload["rows"] == 10_000
    truth = payload["on_policy"]["value"]
    assert truth == pytest.approx(0.0042)  # 42 clicks in the shipped sample's 10,000 BTS rows
    by_name = {row["name"]: row for row in payload["estimates"]}
    assert set(by_name) == {"dm", "ips", "snips", "dr", "switch-dr", "dr-os"}  # rows, not slates
    for row in by_name.values():
        assert row["supported"] and row["relative_error"] == pytest.approx(
            abs(row["value"] - truth) / truth
        )
    assert payload["agreement"]["agree"], payload["agreement"]
    # IPS is unbiased and its interval is wide with ~40 clicks: it must cover the on-policy rate
    assert by_name["ips"]["covers_on_policy"]
