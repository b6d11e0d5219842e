"""`--progress json`: a training streams validated events on stderr, stdout stays one document."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pinlab_data import SynthConfig, write_synth
from pinlab_models import ProgressEvent
from pinlab_tasks.cli import run


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("progress") / "data"
    write_synth(out, SynthConfig(num_pins=200, num_users=40, num_categories=4, seed=2))
    return out


def events_of(err: str) -> list[ProgressEvent]:
    """Every stderr line that looks like JSON must be a valid event."""
    return [
        ProgressEvent.model_validate_json(line) for line in err.splitlines() if line.startswith("{")
    ]


def test_training_streams_epoch_events_on_stderr(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "recommender", "--data", str(world), "--model", "mf", "--set", "epochs=3"]
    code = run(["--progress", "json", *args, "--set", "dim=8", "--run", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["model"] == "mf"  # exactly one JSON document on stdout
    events = events_of(err)
    assert events and all(e.command == "train recommender" for e in events)
    fits = sorted({e.label or "" for e in events})
    assert fits == [
        "train mf",
        "train mf (validation trial 1)",
    ]  # validation (defaults), then the refit
    valid = [e for e in events if e.label == "train mf (validation trial 1)"]
    assert [e.event for e in valid] == ["start", "epoch", "epoch", "epoch", "end"]
    epochs = [e for e in valid if e.event == "epoch"]
    assert [(e.epoch, e.epochs) for e in epochs] == [(1, 3), (2, 3), (3, 3)]
    assert all(e.eta_s is not None and math.isfinite(e.eta_s) for e in epochs)
    assert all(e.metric == "ndcg@10" and e.value is not None for e in epochs)
    assert all(e.loss is not None and e.elapsed_s is not None for e in epochs)
    refit = [e for e in events if e.label == "train mf"]
    assert refit[0].event == "start" and refit[-1].event == "end"


def test_progress_off_and_auto_print_no_events(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "recommender", "--data", str(world), "--model", "popularity"]
    for mode in ("off", "auto"):
        code = run(["--progress", mode, *args, "--run", str(tmp_path / mode), "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        json.loads(out)
        assert events_of(err) == []


def test_an_unknown_progress_value_exits_2_naming_the_choices(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(["--progress", "loud", "describe", "--json"]) == 2
    err = capsys.readouterr().err
    assert all(choice in err for choice in ("auto", "rich", "json", "off"))
    monkeypatch.setenv("PINLAB_PROGRESS", "loud")
    assert run(["describe", "--json"]) == 2
    err = capsys.readouterr().err
    assert "progress" in err and all(c in err for c in ("auto", "rich", "json", "off"))


def test_describe_documents_the_progress_events(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["describe", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    progress = described["progress"]
    assert progress["event_schema"] == ProgressEvent.model_json_schema()
    assert set(progress["event_schema"]["properties"]) >= {"event", "epoch", "eta_s", "metric"}
    flags = {flag for option in described["global_options"] for flag in option["flags"]}
    assert "--progress" in flags
