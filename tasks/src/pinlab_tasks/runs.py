"""The run directory: where every artifact of a run lives, and `run.json`, its record."""

from __future__ import annotations

import fcntl
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pinlab_data import (
    PinlabDataError,
    RunPaths,
    dataset_fingerprint,
    make_directory,
    read_json_object,
    run_data_dir,
    write_json_atomic,
)
from pinlab_tasks._output import log
from pinlab_tasks.provenance import provenance

DATA_CHANGED_FIX = "restore it, or train again into a new --run"
"""What to do when a run's dataset changed since its steps read it."""

INCOMPLETE = "INCOMPLETE.json"
"""Marks a directory that a stopped command had begun to change: what, when, which files."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RunLayout(RunPaths):
    """Paths inside one run directory (`RunPaths`; nothing a run writes lies outside it), and
    its record."""

    def read_record(self) -> dict[str, Any]:
        marker = incomplete(self.root)
        if marker is not None:
            log.warning(
                "run %s is marked incomplete: `%s` was stopped at %s; rerun that command to "
                "complete it (%s lists the files it had changed)",
                self.root, marker.get("command"), marker.get("stopped_at"), INCOMPLETE,
            )  # fmt: skip
        if not self.record.is_file():
            if (self.root / "dataset.json").is_file():
                raise PinlabDataError(
                    f"{self.root} is a pinlab dataset, not a run; train on it into a run with "
                    f"`pinlab train ... --data {self.root} --run RUN` (or `pinlab demo`)"
                )
            raise PinlabDataError(
                f"{self.root} is not a pinlab run (no run.json); make one with `pinlab demo` "
                "or `pinlab train ... --run DIR`"
            )
        return read_json_object(self.record, "remove it")

    def data_dir(self) -> Path:
        """The dataset the run's steps read; for a run moved with its data/ inside, that."""
        data = self.read_record().get("data_dir")
        if not data:
            raise PinlabDataError(f"run {self.root} records no dataset; train into it with --data")
        return run_data_dir(Path(data), self.root)

    def trained_data_dir(self) -> Path:
        """`data_dir()`, refused where it changed since the run's steps read it: what measures
        a model reads this, so no model is measured on data it was not split on."""
        data = self.data_dir()
        self.check_dataset(data, fix=DATA_CHANGED_FIX)
        return data

    def check_dataset(
        self,
        data_dir: Path | None,
        fix: str = "a run holds one dataset, so pass a new --run for this one",
    ) -> None:
        """Refuse `data_dir` where the run's steps read another dataset, or this folder before
        it changed: a run holds one dataset, so every model in it is evaluated, searched and
        served on the data it was trained on (`data_dir()` names one dataset only). None (a
        step given no dataset) passes."""
        if data_dir is None or not self.record.is_file() or not data_dir.is_dir():
            return
        record = self.read_record()
        before, where = record.get("dataset_fingerprint"), record.get("data_dir")
        if not before or not where:
            return
        now = dataset_fingerprint(data_dir)
        if now == before:
            return
        if Path(where) == data_dir.resolve():
            raise PinlabDataError(
                f"{data_dir} changed since the steps of {self.root} read it (dataset "
                f"fingerprint {before[:12]}, now {now[:12]}); {fix}"
            )
        raise PinlabDataError(
            f"{self.root} holds steps that read {where} (dataset fingerprint {before[:12]}), "
            f"not {data_dir} ({now[:12]}); {fix}"
        )

    def log_step(self, command: str, config: dict[str, Any], data_dir: Path | None = None) -> None:
        """Append a step with its resolved config to run.json (created on first use).

        The record keeps the provenance of the process that created it, every step's seed,
        and the fingerprint of the dataset a step read; a step on another dataset is refused
        (`check_dataset`).
        """
        make_directory(self.root)
        # Processes that share the run (`bench generative --workers`) take turns, so no step
        # read before another's write is lost.
        with (self.root / "run.json.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._append_step(command, config, data_dir)

    def _append_step(self, command: str, config: dict[str, Any], data_dir: Path | None) -> None:
        self.check_dataset(data_dir)
        record = self.read_record() if self.record.is_file() else _new_record()
        step: dict[str, Any] = {"command": command, "at": utc_now(), "config": config}
        if data_dir is not None:
            record["data_dir"] = str(data_dir.resolve())
            if data_dir.is_dir():
                step["dataset_fingerprint"] = dataset_fingerprint(data_dir)
                record["dataset_fingerprint"] = step["dataset_fingerprint"]
        if isinstance(config.get("seed"), int):
            record.setdefault("seeds", {})[command] = config["seed"]
        if sys.argv != record.get("argv"):  # a later command adding to this run
            step["argv"] = list(sys.argv)
        record.setdefault("steps", []).append(step)
        write_json_atomic(self.record, record)
        marker = incomplete(self.root)
        if marker is not None and marker.get("command") == command:
            (self.root / INCOMPLETE).unlink()  # the stopped command has now run to its end


def check_output_folder(
    folder: Path, ours: Callable[[str], bool], option: str, command: str
) -> None:
    """Refuse an output folder that is a file, or that holds files `command` did not write
    (`ours` knows its names; dot files pass): in a dataset's folder its files would change the
    fingerprint under every run trained on it, in a run's or the user's they would mix in."""
    if folder.exists() and not folder.is_dir():
        raise PinlabDataError(f"{option} {folder} is a file; pass a folder")
    foreign = sorted(
        p.name for p in folder.glob("*") if not (p.name.startswith(".") or ours(p.name))
    )
    if foreign:
        raise PinlabDataError(
            f"{option} {folder} holds {', '.join(foreign[:3])}{', ...' * (len(foreign) > 3)}, "
            f"which {command} did not write; pass a new or empty folder, or an earlier {option}"
        )


def check_output_file(out: Path, earlier: Callable[[Path], bool], what: str) -> None:
    """Refuse `--out FILE` where it is a folder, or an existing file that `earlier` does not
    recognise as an earlier `what` (this command's own output): replacing any other file could
    destroy what a run, logs or the user keep there, as `report RUN --out RUN/run.json` once
    replaced the run's manifest with HTML."""
    if out.is_dir():
        raise PinlabDataError(f"{out} is a directory; pass a file name to --out")
    if out.exists() and not earlier(out):
        raise PinlabDataError(
            f"--out {out} exists and is not an earlier {what}, so it is not replaced; pass a "
            "new file name (or move that file away)"
        )


def trained_seed(record: Path, retrain: str) -> int:
    """The split seed a model's train.json records (`split_seed`, else `seed`)."""
    trained = read_json_object(record, f"rerun `{retrain}`")
    seed = trained.get("split_seed", trained.get("seed"))
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise PinlabDataError(f"{record} records no seed; rerun `{retrain}`")
    return seed


def incomplete(root: Path) -> dict[str, Any] | None:
    """The marker a stopped command left in `root`, if any."""
    path = root / INCOMPLETE
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"command": None, "stopped_at": None}
    return marker if isinstance(marker, dict) else {"command": None, "stopped_at": None}


def mark_incomplete(root: Path, command: str, reason: str, changed: list[str]) -> None:
    """Record in `root` that `command` stopped part-way after changing the files `changed`.

    Every file a command writes is renamed into place whole, so none is torn; the marker says
    that the set of files may be half a run's (a model trained, its evaluation missing).
    """
    marker = {"command": command, "stopped_at": utc_now(), "reason": reason, "changed": changed}
    write_json_atomic(root / INCOMPLETE, marker)


def _new_record() -> dict[str, Any]:
    facts = provenance()
    del facts["seeds"], facts["dataset_fingerprint"]  # kept per step, below
    return {
        "created": utc_now(),
        "argv": facts.pop("argv"),
        "python": facts.pop("python"),
        "platform": facts.pop("platform"),
        "provenance": facts,
        "seeds": {},
        "steps": [],
    }


def new_run_dir(runs_dir: Path, prefix: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = runs_dir / f"{prefix}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = runs_dir / f"{prefix}-{stamp}-{n}"
    return path
