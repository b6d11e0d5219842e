"""Units of the CLI package that need no trained model: run records, --set parsing, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pinlab_data import PinlabDataError
from pinlab_tasks._output import metrics_table
from pinlab_tasks.commands.train import parse_settings
from pinlab_tasks.runs import RunLayout, new_run_dir


def test_run_record_accumulates_steps(tmp_path: Path) -> None:
    run = RunLayout(tmp_path / "run")
    run.log_step("train visual", {"seed": 3}, data_dir=tmp_path / "data")
    run.log_step("index build", {"model_id": "cnn-x"})
    record = json.loads(run.record.read_text())
    assert [s["command"] for s in record["steps"]] == ["train visual", "index build"]
    assert record["steps"][0]["config"] == {"seed": 3}
    assert run.data_dir() == (tmp_path / "data").resolve()


def test_a_directory_without_a_record_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(PinlabDataError, match="not a pinlab run"):
        RunLayout(tmp_path).data_dir()
    (tmp_path / "dataset.json").write_text("{}")  # a dataset passed where a run goes
    with pytest.raises(PinlabDataError, match=r"is a pinlab dataset, not a run; train on it"):
        RunLayout(tmp_path).data_dir()
    (tmp_path / "dataset.json").unlink()
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(PinlabDataError, match="not valid JSON"):
        RunLayout(tmp_path).read_record()


def test_new_run_dirs_never_collide(tmp_path: Path) -> None:
    first = new_run_dir(tmp_path, "demo")
    first.mkdir()
    assert new_run_dir(tmp_path, "demo") != first


def test_set_values_parse_as_json_or_strings() -> None:
    assert parse_settings(["dim=32", "loss=softmax", "lr=0.5", "flag=true"]) == {
        "dim": 32,
        "loss": "softmax",
        "lr": 0.5,
        "flag": True,
    }
    with pytest.raises(PinlabDataError, match="KEY=VALUE"):
        parse_settings(["dim"])
    # Both were accepted: the last of two silently won; 'inf' became an infinite rate.
    with pytest.raises(PinlabDataError, match=r"^--set lr is given twice; give it once$"):
        parse_settings(["lr=0.1", "lr=0.2"])
    for raw in ("inf", "-Infinity", "NaN", "nan"):
        with pytest.raises(PinlabDataError, match=f"^--set lr={raw} is not a finite number"):
            parse_settings([f"lr={raw}"])


def test_metrics_table_has_a_column_per_metric() -> None:
    table = metrics_table("t", {"a": {"ndcg@10": 0.5}, "b": {"ndcg@10": 0.25, "hr@10": 1.0}})
    assert [c.header for c in table.columns] == ["", "ndcg@10", "hr@10"]
    assert table.row_count == 2


@pytest.mark.parametrize(
    ("given", "spin"),
    [({}, "1000"), ({"GOMP_SPINCOUNT": "5"}, "5"), ({"OMP_WAIT_POLICY": "PASSIVE"}, None)],
)
def test_openmp_threads_spin_briefly_unless_the_user_chose(
    given: dict[str, str], spin: str | None
) -> None:
    """Set on import, before torch loads OpenMP; a user's own wait policy is left alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = "import os, pinlab_tasks, torch; print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env | given, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(spin)
