"""MLflow tracking and provenance: real SQLite stores in tmp_path, read back with MLflow's API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from pinlab_data import SynthConfig, dataset_fingerprint, write_synth
from pinlab_tasks._app import use_settings
from pinlab_tasks.cli import run
from pinlab_tasks.provenance import provenance
from pinlab_tasks.settings import PinlabSettings
from pinlab_tasks.tracking import flatten_params, metric_key, numbers, tracked


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tracking") / "data"
    write_synth(out, SynthConfig(num_pins=200, num_users=40, num_categories=4, seed=2))
    return out


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made: creating them takes seconds, copying not."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path) -> Path:
    """Tracking on, into a fresh default store: sqlite:///tmp_path/runs/mlflow.db."""
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copyfile(empty_store, runs / "mlflow.db")
    monkeypatch.setenv("PINLAB_TRACKING", "on")
    monkeypatch.setenv("PINLAB_RUNS_DIR", str(runs))
    monkeypatch.delenv("PINLAB_TRACKING_URI", raising=False)
    return runs


def client(runs_dir: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{runs_dir.resolve() / 'mlflow.db'}")


def cli_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    """Exit code, the parsed stdout (must be exactly one JSON document), and stderr."""
    code = run([*args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def train_mf(
    data: Path, run_dir: Path, seed: int, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    args = ["train", "recommender", "--data", str(data), "--model", "mf", "--run", str(run_dir)]
    code, result, err = cli_json(
        [*args, "--seed", str(seed), "--set", "epochs=3", "--set", "dim=8"], capsys
    )
    assert code == 0, err
    assert isinstance(result, dict)
    return result


def test_train_logs_params_epochs_artifacts_and_provenance(
    data: Path, runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = train_mf(data, tmp_path / "run", 3, capsys)

    runs = client(runs_dir).search_runs(
        [client(runs_dir).get_experiment_by_name("pinlab").experiment_id]  # type: ignore[union-attr]
    )
    assert len(runs) == 1
    tracked_run = runs[0]
    assert tracked_run.info.status == "FINISHED"
    assert tracked_run.data.params["model"] == "mf"
    assert tracked_run.data.params["seed"] == "3"
    assert tracked_run.data.params["config.dim"] == "8"
    assert tracked_run.data.metrics["best_valid"] == pytest.approx(result["best_valid"])
    history = client(runs_dir).get_metric_history(tracked_run.info.run_id, "train_loss")
    assert [m.step for m in history] == [r["epoch"] for r in result["history"]]
    assert [m.value for m in history] == pytest.approx([r["train_loss"] for r in result["history"]])

    tags = tracked_run.data.tags
    facts = provenance()
    assert tags["mlflow.source.git.commit"] == str(facts["git_commit"])
    assert tags["pinlab.version.pinlab-tasks"] == facts["versions"]["pinlab-tasks"]
    assert tags["pinlab.dataset_fingerprint"] == dataset_fingerprint(data)
    assert tags["pinlab.run_dir"] == str((tmp_path / "run").resolve())
    artifacts = {a.path for a in client(runs_dir).list_artifacts(tracked_run.info.run_id)}
    assert {"run.json", "train.json", "metrics.jsonl", "provenance.json"} <= artifacts
    # Artifacts live beside the default store, not in the current directory.
    assert list((runs_dir / "mlartifacts").rglob("metrics.jsonl"))


def test_run_json_records_provenance(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_mf(data, tmp_path / "run", 5, capsys)  # tracking off: run.json has it all the same
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    facts = record["provenance"]
    assert {"git_commit", "git_dirty", "versions", "cpu", "logical_cores", "gpu"} <= set(facts)
    assert {"torch", "numpy", "pinlab-data", "pinlab-tasks"} <= set(facts["versions"])
    assert record["seeds"] == {"train recommender": 5}
    assert record["dataset_fingerprint"] == dataset_fingerprint(data)
    assert record["steps"][0]["dataset_fingerprint"] == dataset_fingerprint(data)


def test_dataset_fingerprint_follows_the_bytes(tmp_path: Path) -> None:
    (tmp_path / "a.parquet").write_bytes(b"one")
    first = dataset_fingerprint(tmp_path)
    assert dataset_fingerprint(tmp_path) == first
    (tmp_path / "a.parquet").write_bytes(b"two")
    assert dataset_fingerprint(tmp_path) != first


def test_runs_nest_and_close(runs_dir: Path) -> None:
    use_settings(PinlabSettings(runs_dir=runs_dir, tracking=True, tracking_uri=None))
    with tracked("bench", {"suite": "recsys"}) as bench:
        with (
            tracked("model", {"name": "mf"}) as model,
            tracked("seed", {"seed": 1}) as seed,
            tracked("trial", {"lr": 0.1}) as trial,
        ):
            trial.log_metrics({"ndcg@10": 0.5}, step=2)
        with tracked("model", {"name": "ease"}) as other:
            pass
    with tracked("alone") as alone:
        pass
    mlflow = client(runs_dir)

    def parent(tracker: Any) -> str | None:
        return mlflow.get_run(tracker.run_id).data.tags.get("mlflow.parentRunId")

    assert parent(bench) is None
    assert parent(model) == bench.run_id
    assert parent(seed) == model.run_id
    assert parent(trial) == seed.run_id
    assert parent(other) == bench.run_id
    assert parent(alone) is None
    history = mlflow.get_metric_history(str(trial.run_id), "ndcg_at_10")
    assert [(m.step, m.value) for m in history] == [(2, 0.5)]


def test_failed_work_marks_the_run_failed(runs_dir: Path) -> None:
    use_settings(PinlabSettings(runs_dir=runs_dir, tracking=True, tracking_uri=None))
    with pytest.raises(RuntimeError), tracked("breaks") as tracker:
        raise RuntimeError("boom")
    assert client(runs_dir).get_run(str(tracker.run_id)).info.status == "FAILED"


def test_a_torn_run_record_is_reported_by_the_command_not_by_the_tracker(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tracker uploads run.json as the command ends, also when the command failed."""
    torn = tmp_path / "run"
    torn.mkdir()
    (torn / "run.json").write_text('{"steps": [')
    for args in (["card", str(torn)], ["eval", "visual", "--run", str(torn)]):
        code, result, _ = cli_json(args, capsys)
        assert code == 2, result
        assert result["error"].startswith(f"{torn / 'run.json'} is not valid JSON")


def test_tracking_off_writes_no_store(
    data: Path, runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--no-tracking", "train", "recommender", "--data", str(data), "--model", "popularity"]
    code, result, _ = cli_json([*args, "--run", str(tmp_path / "run")], capsys)
    assert code == 0
    assert (tmp_path / "run" / "run.json").is_file()
    assert not list(runs_dir.glob("mlartifacts"))
    assert client(runs_dir).search_experiments(filter_string="name = 'pinlab'") == []
    assert result["model"] == "popularity"


def test_unreachable_store_warns_once_and_the_run_goes_on(
    data: Path, runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--tracking-uri", "http://127.0.0.1:9", "train", "recommender", "--data", str(data)]
    code, result, err = cli_json(
        [*args, "--model", "mf", "--set", "epochs=2", "--run", str(tmp_path / "run")], capsys
    )
    assert code == 0
    # Validation chose 1 or 2 of the 2 epochs; the refit ran that many.
    assert 1 <= result["epochs"] <= 2 and len(result["history"]) == result["epochs"]
    assert err.count("warning") == 1
    assert "http://127.0.0.1:9" in err
    assert (tmp_path / "run" / "recommender" / "mf" / "model.pt").is_file()


def test_runs_list_show_compare(
    data: Path, runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_mf(data, tmp_path / "a", 1, capsys)
    train_mf(data, tmp_path / "b", 2, capsys)

    code, listed, _ = cli_json(["runs", "list"], capsys)
    assert code == 0
    newest, older = listed["runs"]
    assert newest["run_dir"] == str((tmp_path / "b").resolve())

    code, shown, _ = cli_json(["runs", "show", older["run_id"]], capsys)
    assert code == 0
    assert shown["params"]["seed"] == "1"
    assert "metrics.jsonl" in shown["artifacts"]

    code, compared, _ = cli_json(["runs", "compare", older["run_id"], newest["run_id"]], capsys)
    assert code == 0
    params = {row["key"]: row for row in compared["params"]}
    assert params["seed"] == {"key": "seed", "a": "1", "b": "2", "differs": True}
    assert params["model"]["differs"] is False
    assert "best_valid" in {row["key"] for row in compared["metrics"]}

    assert run(["runs", "compare", older["run_id"], newest["run_id"]]) == 0
    table = capsys.readouterr().out
    assert "seed" in table
    assert "*" in table


def test_unknown_run_id_exits_2(
    data: Path, runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_mf(data, tmp_path / "a", 1, capsys)
    assert run(["runs", "show", "0123456789abcdef"]) == 2
    assert "no run '0123456789abcdef'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["runs", "list"], ["runs", "show", "0123456789abcdef"]])
def test_a_store_that_is_no_database_is_named_by_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """`runs list` used to exit 1 with SQLAlchemy's error, `runs show` to say 'no run'."""
    store = tmp_path / "mlflow.db"
    store.write_bytes(b"not a database, " * 100)
    code, result, _ = cli_json(["--tracking-uri", f"sqlite:///{store}", *command], capsys)
    assert code == 2
    assert result["error"] == (
        f"cannot read the MLflow store sqlite:///{store} (DatabaseError: (sqlite3.DatabaseError) "
        "file is not a database); check PINLAB_TRACKING_URI or --tracking-uri"
    )


@pytest.mark.parametrize("command", [["runs", "list"], ["runs", "show", "0123456789abcdef"]])
def test_a_store_named_on_purpose_that_is_not_there_is_named_by_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """A mistyped --tracking-uri used to list no runs, as a store never written to does."""
    store = tmp_path / "typo" / "mlflow.db"
    code, result, _ = cli_json(["--tracking-uri", f"sqlite:///{store}", *command], capsys)
    assert code == 2 and result["error"].startswith(f"no MLflow store at sqlite:///{store} ")
    assert not store.parent.exists()
    code, result, _ = cli_json(["--runs-dir", str(tmp_path / "fresh"), "runs", "list"], capsys)
    assert (code, result) == (0, {"runs": []})  # the default store, before any run: none yet


def test_keys_and_params_are_mlflow_safe() -> None:
    assert metric_key("ndcg@10") == "ndcg_at_10"
    assert metric_key("a:b") == "a_b"
    flat = flatten_params({"model": {"dims": [8, 16], "lr": 0.1}, "long": "x" * 900})
    assert flat["model.dims"] == "[8, 16]"
    assert flat["model.lr"] == "0.1"
    assert len(flat["long"]) == 500
    assert numbers({"mf": {"ndcg@10": 0.25, "name": "mf"}, "ok": True, "n": 3}) == {
        "mf.ndcg@10": 0.25,
        "n": 3.0,
    }


def test_bench_recsys_nests_bench_model_seed_and_trial_runs(
    data: Path, runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", "recsys", "--data", str(data), "--models", "popularity,ease"]
    code, result, err = cli_json(
        [*args, "--seeds", "2", "--trials", "3", "--run", str(tmp_path / "bench")], capsys
    )
    assert code == 0, err
    store = client(runs_dir)
    experiment = store.get_experiment_by_name("pinlab")
    assert experiment is not None
    runs = store.search_runs([experiment.experiment_id], max_results=1000)
    by_id = {r.info.run_id: r for r in runs}
    name = {r.info.run_id: r.info.run_name for r in runs}
    parent = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in runs}
    (bench,) = [i for i in by_id if name[i] == "bench recsys"]
    assert parent[bench] is None
    models = {name[i]: i for i in by_id if parent[i] == bench}
    assert set(models) == {"popularity", "ease"}
    seeds = [i for i in by_id if parent[i] == models["ease"]]
    assert sorted(name[i] for i in seeds) == ["ease seed 0", "ease seed 1"]
    trials = [i for i in by_id if parent[i] == seeds[0]]
    assert len(trials) == 3 and all(name[t].startswith("trial ") for t in trials)
    ease = next(row for row in result["results"] if row["model"] == "ease")
    logged = by_id[models["ease"]].data.metrics[metric_key("ndcg@10")]
    assert logged == pytest.approx(ease["metrics"]["ndcg@10"])
