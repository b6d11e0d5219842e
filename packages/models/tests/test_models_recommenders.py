"""The contract every registered recommender meets, plus what each one must learn."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pinlab_data.contracts import InteractionLog
from pinlab_models import (
    EnsembleConfig,
    HistoryScorer,
    HistoryUpdatable,
    MFConfig,
    PinlabModelError,
    Recommender,
    TrainContext,
    build_recommender,
    load_recommender,
    recommender_names,
    recommender_spec,
)
from pinlab_models._linear import ItemItem
from pinlab_models._runtime import epoch_line
from pinlab_models.testing import tribe_features, two_tribes

FAST: dict[str, dict[str, Any]] = {
    "mf": {"epochs": 30, "dim": 8, "batch_size": 64, "lr": 0.05},
    "bpr": {"epochs": 30, "dim": 8, "batch_size": 64, "lr": 0.05},
    "ials": {"dim": 8, "iterations": 5, "l2": 1.0},
    "itemknn": {"neighbours": 5},
    "rp3beta": {"neighbours": 5},
    "hybrid": {"epochs": 30, "dim": 8, "batch_size": 64, "lr": 0.02},
    "sasrec": {"dim": 16, "layers": 1, "max_len": 12, "epochs": 40, "eval_every": 1},
    # On 20 items, many draws are the user's own tribe, and gBCE's beta < 1 weighs the
    # positive down: it does not learn the tribes in 40 epochs. One draw at t=0 (plain BCE)
    # does; gBCE itself is checked by hand in test_models_sequential.py.
    "gsasrec": {
        "dim": 16,
        "layers": 1,
        "max_len": 12,
        "epochs": 40,
        "eval_every": 1,
        "negatives": 1,
        "gbce_t": 0.0,
    },
    "bert4rec": {"dim": 16, "layers": 1, "max_len": 12, "epochs": 40, "eval_every": 1},
    "hstu": {"dim": 16, "layers": 1, "max_len": 12, "epochs": 40, "eval_every": 1, "lr": 1e-2},
    "two-tower": {"dim": 16, "epochs": 30, "batch_size": 32},
    "ensemble": {"member_settings": {"ials": {"dim": 8, "iterations": 5, "l2": 1.0}}},
}

# Models whose scores are a user vector against item vectors, so any subset costs its size.
CANDIDATE_SCORERS = {
    "popularity",
    "mf",
    "bpr",
    "ials",
    "sasrec",
    "gsasrec",
    "two-tower",
    "hybrid",
    "mult-vae",
    # pinlab new: candidate scorers go above this line
}


def ctx(tmp_path: Path) -> TrainContext:
    return TrainContext(
        run_dir=tmp_path / "run", seed=0, progress=False, item_features=tribe_features()
    )


@pytest.mark.parametrize("name", ["sasrec", "gsasrec", "hstu"])
def test_next_item_models_refuse_a_split_with_no_item_and_next(name: str, tmp_path: Path) -> None:
    """Every user with one training item: exit 1 with PyTorch's reshape error before."""
    log = InteractionLog(
        users=np.arange(3, dtype=np.int64),
        items=np.array([0, 1, 2], dtype=np.int64),
        timestamps=np.ones(3, dtype=np.int64),
        weights=np.ones(3, dtype=np.float32),
        user_ids=np.arange(3, dtype=np.int64),
        item_ids=np.arange(3, dtype=np.int64),
    )
    with pytest.raises(PinlabModelError, match=rf"^{name} learns from users with at least 2"):
        build_recommender(name, {"epochs": 1}).fit(log, ctx(tmp_path))


@pytest.mark.parametrize("name", recommender_names())
def test_every_recommender_meets_the_contract(name: str, tmp_path: Path) -> None:
    log = two_tribes()
    model = build_recommender(name, FAST.get(name))
    assert isinstance(model, Recommender)
    calls: list[float] = []

    def validate(scorer: object) -> float:
        calls.append(1.0)
        return float(len(calls))  # always improving: trains every epoch

    report = model.fit(log, ctx(tmp_path), validate)
    assert report.model == name
    assert len(calls) == report.epochs >= 1
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == report.epochs

    users = np.array([0, 3, 7], dtype=np.int64)
    scores = model.score(users)
    assert scores.shape == (3, log.num_items)
    assert scores.dtype == np.float32
    assert np.isfinite(scores).all()

    model.save(tmp_path / "model.pt")
    loaded = load_recommender(tmp_path / "model.pt")
    assert loaded.name == name
    np.testing.assert_allclose(loaded.score(users), scores, rtol=1e-6)

    with pytest.raises(PinlabModelError, match="out of range"):
        model.score(np.array([log.num_users], dtype=np.int64))

    # Sampled evaluation scores only each user's candidates where a model can.
    assert hasattr(model, "score_candidates") == (name in CANDIDATE_SCORERS)
    if name in CANDIDATE_SCORERS:
        picker: Any = model  # score_candidates is beyond the Recommender Protocol
        candidates = np.array([[4, 0, 19], [19, 19, 2], [7, 8, 9]], dtype=np.int64)
        picked = picker.score_candidates(users, candidates)
        assert picked.dtype == np.float32
        np.testing.assert_allclose(
            picked, np.take_along_axis(scores, candidates, axis=1), rtol=1e-5, atol=1e-6
        )
        with pytest.raises(PinlabModelError, match="out of range"):
            picker.score_candidates(users, candidates + log.num_items - 7)
        with pytest.raises(PinlabModelError, match="one row per"):
            picker.score_candidates(users, candidates[:2])


# Models that must score a visitor from a history alone (a live session); others may too.
HISTORY_SCORERS = {
    "sasrec", "gsasrec", "bert4rec", "hstu", "two-tower", "ease", "dlae", "itemknn", "rp3beta",
    "mult-vae",
}  # fmt: skip
# Those whose scores of a user are not just those of the user's history: two-tower also reads
# the user's id vector, hstu the times, which a session lacks.
READS_MORE = {"two-tower", "hstu"}


@pytest.mark.parametrize("name", recommender_names())
def test_history_scorers_score_visitors(name: str, tmp_path: Path) -> None:
    model = build_recommender(name, FAST.get(name))
    assert isinstance(model, HistoryScorer) or name not in HISTORY_SCORERS
    if not isinstance(model, HistoryScorer):
        return
    scorer: Any = model
    with pytest.raises(PinlabModelError, match="not been fitted"):
        scorer.score_histories([np.array([1], dtype=np.int64)])
    log = two_tribes()
    model.fit(log, ctx(tmp_path))
    # Each user's training items, oldest first: the history a visitor would bring.
    order = np.lexsort((np.arange(len(log)), log.timestamps, log.users))
    histories = [log.items[order][log.users[order] == u] for u in (0, 3, 7)]
    scores = scorer.score_histories(histories)
    assert scores.shape == (3, log.num_items) and scores.dtype == np.float32
    # Batched with a shorter history (as the service batches concurrent sessions), each
    # history scores as it does alone: padding must not leak into the scores.
    pair = [histories[0], histories[1][:2]]
    alone = np.stack([scorer.score_histories([h])[0] for h in pair])
    np.testing.assert_allclose(scorer.score_histories(pair), alone, rtol=1e-4, atol=1e-5)
    if name not in READS_MORE:
        users = np.array([0, 3, 7], dtype=np.int64)
        np.testing.assert_allclose(scores, model.score(users), rtol=1e-4, atol=1e-5)
    # A visitor who saw only the first tribe's items is scored like the first tribe.
    half = log.num_items // 2
    visitor = scorer.score_histories([np.arange(1, 6, dtype=np.int64)])[0]
    assert visitor[6:half].mean() > visitor[half:].mean()
    loaded: Any = load_recommender(_saved(model, tmp_path))
    np.testing.assert_allclose(loaded.score_histories(histories), scores, rtol=1e-5, atol=1e-6)
    with pytest.raises(PinlabModelError, match="history 1 is empty"):
        scorer.score_histories([histories[0], np.array([], dtype=np.int64)])
    with pytest.raises(PinlabModelError, match="out of range"):
        scorer.score_histories([np.array([log.num_items], dtype=np.int64)])


# Models whose only per-user state is the history, so a bench can score test users without a
# refit (`bench recsys --no-refit`); two-tower also has user vectors, learnt ones.
HISTORY_UPDATABLE = {
    "sasrec", "gsasrec", "bert4rec", "hstu", "ease", "dlae", "itemknn", "rp3beta", "mult-vae",
}  # fmt: skip


@pytest.mark.parametrize("name", recommender_names())
def test_updated_histories_change_the_scores_and_nothing_else(name: str, tmp_path: Path) -> None:
    model = build_recommender(name, FAST.get(name))
    assert isinstance(model, HistoryUpdatable) or name not in HISTORY_UPDATABLE
    if not isinstance(model, HistoryUpdatable):
        return
    log = two_tribes()
    with pytest.raises(PinlabModelError, match="not been fitted"):
        model.update_histories(log)
    model.fit(log, ctx(tmp_path))
    users = np.arange(log.num_users, dtype=np.int64)
    before = model.score(users)
    # Users 0-2 each take one item of the other tribe, as their most recent action.
    grown = np.array([0, 1, 2], dtype=np.int64)
    later = replace(
        log,
        users=np.concatenate([log.users, grown]),
        items=np.concatenate([log.items, np.where(grown % 2 == 0, 15, 5)]),
        timestamps=np.concatenate([log.timestamps, log.timestamps.max() + 1 + grown]),
        weights=np.ones(len(log) + len(grown), dtype=np.float32),
    )
    model.update_histories(later)
    after = model.score(users)
    for u in grown:
        assert not np.allclose(after[u], before[u]), f"user {u}'s new item changed nothing"
    # Equal up to float noise: transformers batch users by history length.
    np.testing.assert_allclose(after[3:], before[3:], rtol=1e-5, atol=1e-6)
    if name not in READS_MORE and isinstance(model, HistoryScorer):
        order = np.lexsort((np.arange(len(later)), later.timestamps, later.users))
        history = later.items[order][later.users[order] == 0]
        np.testing.assert_allclose(
            model.score_histories([history])[0], after[0], rtol=1e-4, atol=1e-5
        )
    model.update_histories(log)
    # The weights never moved.
    np.testing.assert_allclose(model.score(users), before, rtol=1e-5, atol=1e-6)
    with pytest.raises(PinlabModelError, match="fitted on 20 items"):
        model.update_histories(two_tribes(num_items=30))


def _saved(model: Recommender, tmp_path: Path) -> Path:
    path = tmp_path / "saved.pt"
    model.save(path)
    return path


@pytest.mark.parametrize("name", recommender_names())
def test_unfitted_models_refuse_to_score(name: str) -> None:
    with pytest.raises(PinlabModelError, match="not been fitted"):
        build_recommender(name).score(np.array([0], dtype=np.int64))


def test_popularity_ranks_by_distinct_users(tmp_path: Path) -> None:
    log = two_tribes()
    model = build_recommender("popularity")
    model.fit(log, ctx(tmp_path))
    scores = model.score(np.array([0], dtype=np.int64))[0]
    assert scores.argmax() == 0
    assert scores[0] == log.num_users  # every user engaged with item 0 once


LEARNERS = [
    ("mf", {"loss": "bpr"}),
    ("mf", {"loss": "softmax"}),
    ("sasrec", {"loss": "sampled-softmax", "negatives": 8}),
] + [(name, {}) for name in recommender_names() if name not in ("mf", "popularity")]


@pytest.mark.parametrize(("name", "settings"), LEARNERS)
def test_models_learn_which_half_each_user_likes(
    name: str, settings: dict[str, object], tmp_path: Path
) -> None:
    log = two_tribes()
    model = build_recommender(name, {**FAST.get(name, {}), **settings})
    model.fit(log, ctx(tmp_path))
    scores = model.score(np.arange(log.num_users, dtype=np.int64))
    half = log.num_items // 2
    first, second = scores[:, 1:half].mean(axis=1), scores[:, half:].mean(axis=1)
    even = np.arange(log.num_users) % 2 == 0
    # Every user scores their own tribe's items above the other tribe's on average.
    assert (first[even] > second[even]).all()
    assert (second[~even] > first[~even]).all()


def test_mf_sampled_softmax_when_catalogue_exceeds_negatives(tmp_path: Path) -> None:
    log = two_tribes(num_items=40)
    model = build_recommender("mf", {**FAST["mf"], "loss": "softmax", "negatives": 8})
    report = model.fit(log, ctx(tmp_path))
    assert np.isfinite(report.history[-1].train_loss)


def test_registry_errors_name_the_choices() -> None:
    with pytest.raises(PinlabModelError, match=re.escape(", ".join(recommender_names()))):
        build_recommender("sasrec-ultra")
    with pytest.raises(PinlabModelError, match="bad mf setting 'dim'"):
        build_recommender("mf", {"dim": -3})
    with pytest.raises(PinlabModelError, match="bad mf setting 'colour'"):
        build_recommender("mf", {"colour": "red"})


def test_early_stopping_restores_the_best_epoch(tmp_path: Path) -> None:
    log = two_tribes()
    model = build_recommender("mf", {**FAST["mf"], "patience": 2})
    values = iter([0.1, 0.5, 0.2, 0.2, 0.2, 0.2])
    snapshots: list[np.ndarray] = []

    def validate(scorer: object) -> float:
        assert hasattr(scorer, "score")
        snapshots.append(model.score(np.array([0], dtype=np.int64)))
        return next(values)

    report = model.fit(log, ctx(tmp_path), validate)
    assert report.best_epoch == 2
    assert report.epochs == 4  # two epochs without gain after the best
    np.testing.assert_allclose(model.score(np.array([0], dtype=np.int64)), snapshots[1])


def test_mf_config_is_strict() -> None:
    assert MFConfig().loss in ("bpr", "softmax")
    with pytest.raises(ValueError, match="extra"):
        MFConfig.model_validate({"nope": 1})


def test_ease_matches_its_closed_form(tmp_path: Path) -> None:
    log = two_tribes()
    model = build_recommender("ease", {"l2": 3.0})
    model.fit(log, ctx(tmp_path))
    x = np.zeros((log.num_users, log.num_items))
    x[log.users, log.items] = 1.0
    p = np.linalg.inv(x.T @ x + 3.0 * np.eye(log.num_items))
    b = np.eye(log.num_items) - p / np.diag(p)  # Steck (2019), eq. 8
    np.testing.assert_allclose(model.score(np.arange(4)), x[:4] @ b, rtol=1e-4, atol=1e-5)
    # Row-major, or every sparse product copies the whole item-item matrix first.
    assert isinstance(model, ItemItem) and model.weights is not None
    assert model.weights.flags.c_contiguous


def test_dlae_without_normalisation_is_denoising_ridge(tmp_path: Path) -> None:
    log = two_tribes()
    model = build_recommender("dlae", {"l2": 2.0, "dropout": 0.25, "user_norm": 0.0})
    model.fit(log, ctx(tmp_path))
    x = np.zeros((log.num_users, log.num_items))
    x[log.users, log.items] = 1.0
    gram = x.T @ x
    penalty = np.diag(2.0 + 0.25 / 0.75 * np.diag(gram))
    b = np.linalg.solve(gram + penalty, gram)  # argmin |X - XB|^2 + |penalty^1/2 B|^2
    np.testing.assert_allclose(model.score(np.arange(4)), x[:4] @ b, rtol=1e-4, atol=1e-5)


def test_ials_conjugate_gradient_approaches_the_exact_solve(tmp_path: Path) -> None:
    log = two_tribes()
    base = {"dim": 6, "iterations": 8, "l2": 0.5, "alpha": 4.0}
    exact = build_recommender("ials", {**base, "cg_steps": 0})
    exact.fit(log, ctx(tmp_path / "exact"))
    cg = build_recommender("ials", {**base, "cg_steps": 6})
    cg.fit(log, ctx(tmp_path / "cg"))
    users = np.arange(log.num_users, dtype=np.int64)
    a, b = exact.score(users), cg.score(users)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_ensemble_blends_standardised_member_scores(tmp_path: Path) -> None:
    log = two_tribes()
    settings = {"members": ("ease", "popularity"), "weights": (0.75, 0.25)}
    model = build_recommender("ensemble", settings)
    model.fit(log, ctx(tmp_path))
    users = np.arange(5, dtype=np.int64)
    parts = []
    for name in ("ease", "popularity"):
        member = build_recommender(name)
        member.fit(log, ctx(tmp_path / name))
        s = member.score(users)
        parts.append((s - s.mean(1, keepdims=True)) / (s.std(1, keepdims=True) + 1e-8))
    np.testing.assert_allclose(model.score(users), 0.75 * parts[0] + 0.25 * parts[1], atol=1e-5)
    with pytest.raises(PinlabModelError, match="one weight per member"):
        build_recommender("ensemble", {"members": ("ease", "ials"), "weights": (1.0,)})
    # The same blend over members fitted once: what a weight search scores per trial.
    fitted = list(model.members)  # type: ignore[attr-defined]
    config = EnsembleConfig.model_validate(settings)
    reused = recommender_spec("ensemble").of_fitted
    assert reused is not None
    np.testing.assert_array_equal(reused(config, fitted).score(users), model.score(users))
    with pytest.raises(PinlabModelError, match="2 members, got 1"):
        reused(config, fitted[:1])


@pytest.mark.parametrize(
    "settings",
    [
        {"loss": "softmax"},
        pytest.param({"loss": "bce"}, marks=pytest.mark.slow),
        pytest.param({"dense_window": 3}, marks=pytest.mark.slow),
    ],
)
def test_sasrec_learns_what_comes_next(settings: dict[str, Any], tmp_path: Path) -> None:
    """Users walk a ring of items in order; the next item is the one after their last."""
    rng = np.random.default_rng(0)
    num_items, users, items, times = 12, [], [], []
    for u in range(60):
        start, length = rng.integers(num_items), rng.integers(4, 9)
        walk = (start + np.arange(length)) % num_items
        users += [u] * length
        items += list(walk)
        times += list(range(length))
    n = len(users)
    log = InteractionLog(
        users=np.array(users, dtype=np.int64),
        items=np.array(items, dtype=np.int64),
        timestamps=np.array(times, dtype=np.int64),
        weights=np.ones(n, dtype=np.float32),
        user_ids=np.arange(60, dtype=np.int64),
        item_ids=np.arange(num_items, dtype=np.int64),
    )
    config = {"dim": 16, "layers": 1, "max_len": 8, "epochs": 60, "dropout": 0.0, **settings}
    model = build_recommender("sasrec", config)
    model.fit(log, ctx(tmp_path))
    last = dict(zip(users, items, strict=True))  # in time order per user
    # The dense loss spreads each position over the next `window` items, so any of them may
    # come first; the next one must still be among them.
    window = int(settings.get("dense_window", 1))
    top = np.argsort(-model.score(np.arange(60, dtype=np.int64)), axis=1)[:, :window]
    hits = np.mean([(last[u] + 1) % num_items in top[u] for u in range(60)])
    assert hits >= 0.9


def test_epoch_line_states_the_time_left() -> None:
    # 3 of 10 epochs in 30 s: 10 s each, 70 s left; a deadline 20 s away caps it.
    line = epoch_line("train mf (validation trial 2)", 3, 10, 30.0, "loss 0.500", None)
    assert line == (
        "train mf (validation trial 2): epoch 3/10 (10.0 s/epoch), loss 0.500; at most 0:01:10 left"
    )
    capped = epoch_line("train mf", 3, 10, 30.0, "loss 0.500", time.monotonic() + 20)
    assert capped.endswith("at most 0:00:20 left")
    assert epoch_line("x", 1, 1, 5.0, "", time.monotonic() - 60).endswith("0:00:00 left")


def test_epoch_lines_print_off_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Piped output (a log, `--json` runs) gets a line per epoch; a quiet context gets none."""
    monkeypatch.setattr("pinlab_models._runtime.LINE_EVERY_SECONDS", 0.0)
    epochs = {**FAST["mf"], "epochs": 3, "patience": 5}
    build_recommender("mf", epochs).fit(two_tribes(), ctx(tmp_path), lambda _: 0.5)
    assert capsys.readouterr().err == ""  # ctx() trains without progress
    labelled = TrainContext(run_dir=tmp_path / "p", seed=0, progress=True, label="trial 1")
    build_recommender("mf", epochs).fit(two_tribes(), labelled, lambda _: 0.5)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert [line.split(":")[0] for line in lines] == ["train mf (trial 1)"] * 3
    assert [line.split("epoch ")[1].split(" ")[0] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("valid 0.5000" in line and "left" in line for line in lines)
