"""Experiment tracking in MLflow: params, metrics, artifacts and provenance of every run.

`tracked(name, params)` opens an MLflow run (nested under the open one, if any) and yields a
`Tracker`. By default the store is `sqlite:///RUNS_DIR/mlflow.db`, artifacts beside it, no server;
`PINLAB_TRACKING_URI` (or `--tracking-uri`) names any MLflow server. With tracking off, or a store
that fails, the Tracker does nothing: one warning on stderr, and the work goes on. MLflow is
imported on the first tracked run only (it costs about a second).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pinlab_data import PinlabDataError, RunPaths
from pinlab_tasks._app import settings
from pinlab_tasks._output import stderr
from pinlab_tasks.provenance import provenance

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, Run, RunTag

MAX_PARAM_CHARS = 500
"""Longer values are cut: MLflow servers before 2.x refuse more, and run.json has them whole."""
BATCH = 100
"""MLflow's limit of params per `log_batch` call."""
_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")

_open_runs: list[str] = []
"""Run ids of the tracked runs open in this process, innermost last: the parents of new runs."""
_failed_stores: set[str] = set()
_warned: set[str] = set()


class Tracker:
    """Logs to one MLflow run; every method does nothing when tracking is off or has failed."""

    def __init__(self, client: MlflowClient | None = None, run_id: str | None = None) -> None:
        self._client = client
        self._run_id = run_id
        self._params: dict[str, str] = {}

    @property
    def run_id(self) -> str | None:
        return self._run_id if self._client is not None else None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested dicts flatten to dotted keys; a key logged before keeps its first value."""
        from mlflow.entities import Param

        fresh = {k: v for k, v in flatten_params(params).items() if k not in self._params}
        self._params.update(fresh)
        self._log_batches("params", [Param(k, v) for k, v in fresh.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Numbers only (others are skipped); keys made MLflow-safe ('ndcg@10' -> 'ndcg_at_10')."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(metric_key(k), float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        self._log_batches("metrics", items)

    def log_artifact(self, path: Path) -> None:
        """A file, or a directory's files, uploaded to the run's artifacts."""
        if path.is_dir():
            self._call(lambda c, r: c.log_artifacts(r, str(path), path.name))
        elif path.is_file():
            self._call(lambda c, r: c.log_artifact(r, str(path)))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(metric_key(k), str(v)[:MAX_PARAM_CHARS]) for k, v in tags.items()]
        self._log_batches("tags", items)

    def _log_batches(self, kind: str, items: list[Any]) -> None:
        for start in range(0, len(items), BATCH):
            self._call(_batch(**{kind: items[start : start + BATCH]}))

    def _end(self, status: str) -> None:
        self._call(lambda c, r: c.set_terminated(r, status))

    def _call(self, action: Callable[[MlflowClient, str], object]) -> None:
        if self._client is None or self._run_id is None:
            return
        try:
            action(self._client, self._run_id)
        except Exception as exc:  # a tracking failure must never end the run it tracks
            _warn(f"MLflow logging failed ({type(exc).__name__}: {exc}); tracking stops here")
            self._client = None


def _batch(
    metrics: Sequence[Metric] = (), params: Sequence[Param] = (), tags: Sequence[RunTag] = ()
) -> Callable[[MlflowClient, str], object]:
    return lambda client, run_id: client.log_batch(run_id, metrics, params, tags)


@contextmanager
def tracked(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    tags: Mapping[str, str] | None = None,
    run_dir: Path | None = None,
) -> Iterator[Tracker]:
    """Start an MLflow run (nested under the active one if any); a no-op Tracker when tracking
    is off or the store is unreachable (one warning on stderr, the work goes on).

    A top-level run gets the provenance (git commit, versions, hardware) as tags and as
    `provenance.json`; with `run_dir`, its `run.json` is uploaded when the run ends.
    """
    tracker = _start(name, tags, run_dir)
    tracker.log_params(params or {})
    run_id = tracker.run_id
    if run_id is not None:
        _open_runs.append(run_id)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        if run_id is not None:
            _open_runs.remove(run_id)
        if run_dir is not None:
            _log_record(tracker, run_dir)
        tracker._end(status)


def _start(name: str, tags: Mapping[str, str] | None, run_dir: Path | None) -> Tracker:
    s = settings()
    if not s.tracking:
        return Tracker()
    uri = s.resolved_tracking_uri()
    if uri in _failed_stores:
        return Tracker()
    try:
        client = _client(uri)
        experiment = _experiment_id(client, uri, s.experiment)
        parent = _open_runs[-1] if _open_runs else None
        run_tags = {
            "pinlab.command": name,
            **({"mlflow.parentRunId": parent} if parent else {}),
            **({"pinlab.run_dir": str(run_dir.resolve())} if run_dir else {}),
            **(tags or {}),
        }
        run = client.create_run(experiment, run_name=name, tags=run_tags)
    except Exception as exc:
        _failed_stores.add(uri)
        _warn(
            f"tracking is off for this command: the MLflow store {uri} failed "
            f"({type(exc).__name__}: {exc}); results are still written to the run directory. "
            "Fix PINLAB_TRACKING_URI or pass --no-tracking."
        )
        return Tracker()
    tracker = Tracker(client, run.info.run_id)
    if parent is None:
        _log_provenance(tracker)
    return tracker


def _client(uri: str) -> MlflowClient:
    if uri.startswith(("http://", "https://")):
        # MLflow retries an unreachable server for minutes; one quick look decides instead.
        httpx.get(f"{uri.rstrip('/')}/health", timeout=3.0).raise_for_status()
    from mlflow import MlflowClient

    _quiet_mlflow()
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    # A SQLite store keeps artifacts beside its database, not in the current directory.
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def _quiet_mlflow() -> None:
    """MLflow and its store migrations log at INFO (MLflow sets that on import): noise here."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _log_provenance(tracker: Tracker) -> None:
    facts = provenance()
    tracker.set_tags(
        {
            "mlflow.source.git.commit": str(facts["git_commit"]),
            "pinlab.git_dirty": str(facts["git_dirty"]),
            "pinlab.argv": " ".join(facts["argv"]),
            "pinlab.python": facts["python"],
            "pinlab.cpu": facts["cpu"],
            "pinlab.gpu": str(facts["gpu"]),
            "pinlab.torch_threads": str(facts["torch_threads"]),
            **{f"pinlab.version.{k}": v for k, v in facts["versions"].items()},
        }
    )
    _log_json(tracker, "provenance.json", facts)


def _log_record(tracker: Tracker, run_dir: Path) -> None:
    """The run directory's run.json (config, seeds, dataset fingerprint) as an artifact."""
    record = RunPaths(run_dir).record
    if not record.is_file() or tracker.run_id is None:
        return
    tracker.log_artifact(record)
    try:
        facts = json.loads(record.read_text())
    except ValueError:  # the command reads run.json itself and says what is wrong with it
        return
    if isinstance(facts, dict) and facts.get("dataset_fingerprint"):
        tracker.set_tags({"pinlab.dataset_fingerprint": facts["dataset_fingerprint"]})


def _log_json(tracker: Tracker, name: str, payload: Mapping[str, Any]) -> None:
    text = json.dumps(payload, indent=2, default=str)
    tracker._call(lambda c, r: c.log_text(r, text, name))


def log_fit(tracker: Tracker, result: Mapping[str, Any], prefix: str = "") -> None:
    """A fit's per-epoch history (step = epoch) and its final numbers, from a FitReport dump."""
    for record in result.get("history", []):
        metrics = {k: v for k, v in record.items() if k != "epoch" and v is not None}
        tracker.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=record["epoch"])
    final = {k: v for k, v in result.items() if k in ("epochs", "best_epoch", "best_valid")}
    tracker.log_metrics(
        {f"{prefix}{k}": v for k, v in final.items()}
        | {f"{prefix}fit_seconds": result.get("seconds", 0.0)}
    )


def numbers(payload: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested result by dotted path: {"mf": {"ndcg@10": x}} -> mf.ndcg@10."""
    flat: dict[str, float] = {}
    for key, value in payload.items():
        if isinstance(value, Mapping):
            flat |= numbers(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists as JSON; values cut to MAX_PARAM_CHARS."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = metric_key(f"{prefix}{key}")
        if isinstance(value, Mapping):
            flat |= flatten_params(value, f"{name}.")
            continue
        text = json.dumps(value, default=str) if isinstance(value, list | tuple) else str(value)
        flat[name] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 1] + "…"
    return flat


def metric_key(key: str) -> str:
    """An MLflow-safe key: '@' reads '_at_', other characters MLflow refuses become '_'."""
    return _KEY.sub("_", key.replace("@", "_at_"))


def _warn(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        stderr.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def _reader() -> tuple[MlflowClient, str] | None:
    """A client on the configured store, or None when the default store was never written."""
    s = settings()
    uri = s.resolved_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        if s.tracking_uri is None:
            return None
        # A store named on purpose that is not there: most likely a mistyped path.
        raise PinlabDataError(
            f"no MLflow store at {uri} (the file does not exist); check PINLAB_TRACKING_URI or "
            "--tracking-uri"
        )
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        client = _client(uri)
        # One cheap read, so a store that is no store (a damaged database, a retired
        # file store) is named here, not taken for a missing run or left to crash.
        client.search_experiments(max_results=1)
    except (httpx.HTTPError, MlflowException, SQLAlchemyError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise PinlabDataError(
            f"cannot read the MLflow store {uri} ({type(exc).__name__}: {first}); check "
            "PINLAB_TRACKING_URI or --tracking-uri"
        ) from exc
    return client, uri


def list_runs(experiment: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest runs of one experiment, or of all, newest first."""
    reader = _reader()
    if reader is None:
        return []
    client, uri = reader
    experiments = list(client.search_experiments())
    if experiment is not None:
        experiments = [e for e in experiments if e.name == experiment]
        if not experiments:
            raise PinlabDataError(f"no experiment {experiment!r} in {uri}")
    names = {e.experiment_id: e.name for e in experiments}
    runs = client.search_runs(
        list(names), max_results=limit, order_by=["attributes.start_time DESC"]
    )
    return [_summary(run, names) for run in runs]


def show_run(run_id: str) -> dict[str, Any]:
    """One run's params, metrics, tags, artifacts and child runs."""
    client, run = _get(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    names = {experiment.experiment_id: experiment.name}
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return {
        **_summary(run, names),
        "params": dict(sorted(run.data.params.items())),
        "tags": dict(sorted(run.data.tags.items())),
        "artifacts": [a.path for a in client.list_artifacts(run.info.run_id)],
        "children": [_summary(child, names) for child in children],
    }


def compare_runs(run_a: str, run_b: str) -> dict[str, Any]:
    """Two runs' params and metrics side by side; `differs` marks keys whose values differ."""
    a, b = _get(run_a)[1], _get(run_b)[1]

    def side_by_side(left: Mapping[str, Any], right: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [
            {"key": k, "a": left.get(k), "b": right.get(k), "differs": left.get(k) != right.get(k)}
            for k in sorted(set(left) | set(right))
        ]

    return {
        "a": {"run_id": a.info.run_id, "name": a.info.run_name},
        "b": {"run_id": b.info.run_id, "name": b.info.run_name},
        "params": side_by_side(a.data.params, b.data.params),
        "metrics": side_by_side(a.data.metrics, b.data.metrics),
    }


def _get(run_id: str) -> tuple[MlflowClient, Run]:
    from mlflow.exceptions import MlflowException

    reader = _reader()
    if reader is None:
        raise PinlabDataError(
            f"no tracked runs yet ({settings().resolved_tracking_uri()}); run a command first"
        )
    client, uri = reader
    try:
        return client, client.get_run(run_id)
    except MlflowException as exc:
        raise PinlabDataError(
            f"no run {run_id!r} in {uri}; `pinlab runs list` shows the run ids"
        ) from exc


def _summary(run: Run, experiments: Mapping[str, str]) -> dict[str, Any]:
    info, tags = run.info, run.data.tags
    end = info.end_time or None
    return {
        "run_id": info.run_id,
        "name": info.run_name,
        "experiment": experiments.get(info.experiment_id, info.experiment_id),
        "status": info.status,
        "start": datetime.fromtimestamp(info.start_time / 1000, UTC).isoformat(timespec="seconds"),
        "seconds": None if end is None else round((end - info.start_time) / 1000, 2),
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "run_dir": tags.get("pinlab.run_dir"),
        "metrics": dict(sorted(run.data.metrics.items())),
    }
