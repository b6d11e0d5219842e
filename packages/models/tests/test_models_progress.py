"""Progress events of epoch training: the event contract, the ETA arithmetic, a real fit."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from pinlab_data.contracts import InteractionLog
from pinlab_models import (
    EncoderConfig,
    ProgressEvent,
    TrainContext,
    build_recommender,
    train_encoder,
)
from pinlab_models._runtime import eta_seconds


def small_log(num_users: int = 30, num_items: int = 12) -> InteractionLog:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(num_users), 4).astype(np.int64)
    items = ((users % 2) * (num_items // 2) + rng.integers(0, num_items // 2, len(users))).astype(
        np.int64
    )
    return InteractionLog(
        users=users,
        items=items,
        timestamps=np.arange(len(users), dtype=np.int64),
        weights=np.ones(len(users), dtype=np.float32),
        user_ids=np.arange(num_users, dtype=np.int64),
        item_ids=np.arange(num_items, dtype=np.int64),
    )


def test_eta_is_the_epochs_left_at_the_mean_epoch_time() -> None:
    assert eta_seconds(3, 10, 30.0) == pytest.approx(70.0)  # 10 s an epoch, 7 left
    assert eta_seconds(10, 10, 30.0) == 0.0
    assert eta_seconds(3, 10, 30.0, time_left=20.0) == pytest.approx(20.0)  # the budget caps it
    assert eta_seconds(3, 10, 30.0, time_left=500.0) == pytest.approx(70.0)
    assert eta_seconds(3, 10, 30.0, time_left=-5.0) == 0.0  # past the deadline: nothing left
    assert eta_seconds(12, 10, 30.0) == 0.0  # never negative


def test_progress_event_refuses_unknown_kinds_and_fields() -> None:
    line = '{"event": "epoch", "epoch": 2, "epochs": 5, "eta_s": 1.5, "loss": 0.3}'
    assert ProgressEvent.model_validate_json(line).eta_s == 1.5
    with pytest.raises(ValidationError):
        ProgressEvent.model_validate({"event": "tick"})
    with pytest.raises(ValidationError):
        ProgressEvent.model_validate({"event": "epoch", "speed": 3})
    with pytest.raises(ValidationError):
        ProgressEvent.model_validate({"event": "epoch", "eta_s": -1.0})


def test_a_fit_sends_start_each_epoch_and_end_to_its_sink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events: list[ProgressEvent] = []
    ctx = TrainContext(run_dir=tmp_path, progress=events.append, label="trial 1", metric="ndcg@10")
    values = iter([0.1, 0.3, 0.2])
    model = build_recommender("mf", {"epochs": 3, "patience": 5, "dim": 4})
    model.fit(small_log(), ctx, lambda _: next(values))
    assert capsys.readouterr().err == ""  # a sink replaces the bar and the lines
    assert [e.event for e in events] == ["start", "epoch", "epoch", "epoch", "end"]
    epochs = [e for e in events if e.event == "epoch"]
    assert [e.epoch for e in epochs] == [1, 2, 3]
    assert [e.value for e in epochs] == [0.1, 0.3, 0.2]
    assert [e.best for e in epochs] == [0.1, 0.3, 0.3]
    assert all(e.label == "train mf (trial 1)" and e.metric == "ndcg@10" for e in events)
    assert all(e.eta_s is not None and math.isfinite(e.eta_s) for e in epochs)
    assert epochs[-1].eta_s == 0.0
    end = events[-1]
    assert (end.epoch, end.best, end.best_epoch) == (3, 0.3, 2)


def test_a_spent_budget_caps_the_eta_at_zero(tmp_path: Path) -> None:
    """Past `ctx.deadline` the fit stops at the next validation, so nothing is left."""
    events: list[ProgressEvent] = []
    ctx = TrainContext(run_dir=tmp_path, progress=events.append, deadline=time.monotonic() - 1)
    build_recommender("mf", {"epochs": 5, "dim": 4}).fit(small_log(), ctx, lambda _: 0.5)
    epochs = [e for e in events if e.event == "epoch"]
    assert [(e.epoch, e.eta_s) for e in epochs] == [(1, 0.0)]
    assert events[-1].event == "end" and events[-1].epoch == 1


def test_the_encoder_sends_its_epochs_too(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (32, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(32, dtype=np.int64) % 2
    config = EncoderConfig(image_size=16, widths=(8, 16), embedding_dim=8, epochs=2, batch_size=16)
    events: list[ProgressEvent] = []
    ctx = TrainContext(run_dir=tmp_path, progress=events.append, metric="recall@1")
    train_encoder(images, labels, config, ctx, lambda _: 0.5)
    assert [(e.event, e.epoch) for e in events] == [
        ("start", None), ("epoch", 1), ("epoch", 2), ("end", 2),
    ]  # fmt: skip
    assert all(e.label == "train encoder" and e.metric == "recall@1" for e in events)
