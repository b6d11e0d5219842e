"""`pinlab sim run` and `pinlab eval ope` through the CLI: logs written and valued, the same seed
the same logs, bad logs and bad targets refused with exit 2, unsupported targets reported."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pinlab_tasks.cli import run

TINY = ["--users", "60", "--items", "20", "--rounds", "400", "--stationary", "--seed", "3"]


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = run([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epsilon-greedy run on a tiny stationary world; tests copy its logs to change them."""
    root = tmp_path_factory.mktemp("sim")
    assert run(["sim", "run", "--policy", "epsilon-greedy", *TINY, "--run", str(root / "eps")]) == 0
    return root / "eps"


def test_sim_run_logs_and_eval_ope_values_a_target(
    logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = json.loads((logged / "sim.json").read_text())
    assert record["logged_rows"] == 400 * 3 and record["logger_dist"]
    assert json.loads((logged / "run.json").read_text())["steps"][0]["command"] == "sim run"
    code, payload = _cli(
        ["eval", "ope", "--logs", str(logged / "logs"), "--policy", "softmax",
         "--set", "temperature=0.5"],
        capsys,
    )  # fmt: skip
    assert code == 0, payload
    assert payload["truth_per_impression"] > 0 and payload["target_settings"] == {
        "temperature": 0.5
    }
    by_name = {row["name"]: row for row in payload["estimates"]}
    assert set(by_name) == {"dm", "ips", "snips", "dr", "switch-dr", "dr-os", "pseudo-inverse"}
    for row in by_name.values():
        assert row["supported"] and row["ci_low"] <= row["value"] <= row["ci_high"]
        assert row["relative_error"] >= 0


def test_same_seed_same_logs(
    logged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    again = tmp_path / "again"
    code, _ = _cli(["sim", "run", "--policy", "epsilon-greedy", *TINY, "--run", str(again)], capsys)
    assert code == 0
    first = pq.read_table(logged / "logs" / "feedback.parquet")
    assert first.equals(pq.read_table(again / "logs" / "feedback.parquet"))


def test_a_target_where_the_logger_never_acts_is_unsupported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _cli(["sim", "run", "--policy", "greedy", *TINY, "--run", str(tmp_path)], capsys)
    assert code == 0
    code, payload = _cli(
        ["eval", "ope", "--logs", str(tmp_path / "logs"), "--policy", "softmax"], capsys
    )
    assert code == 0, payload
    by_name = {row["name"]: row for row in payload["estimates"]}
    assert by_name["dm"]["value"] is not None  # the direct method needs no support
    for name in ("ips", "snips", "dr", "switch-dr", "dr-os"):
        row = by_name[name]
        assert not row["supported"] and row["value"] is None and row["unsupported_mass"] > 0.5
        assert "unsupported" in row["note"]


def _broken(logs: Path, tmp_path: Path, change: Any) -> Path:
    out = tmp_path / "logs"
    shutil.copytree(logs, out)
    (out / "logger_dist.npy").unlink()  # its own check would also fire; the table's is tested
    table = pq.read_table(out / "feedback.parquet")
    pq.write_table(change(table), out / "feedback.parquet")
    return out


def _set(table: pa.Table, column: str, rows: list[int], value: Any) -> pa.Table:
    values = table.column(column).to_pylist()
    for row in rows:
        values[row] = value
    index = table.column_names.index(column)
    return table.set_column(index, column, pa.array(values, type=table.schema.field(column).type))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda t: _set(t, "pscore", [4, 9], 0.0),
            r"pscore not in \(0, 1\] at 2 row\(s\) \(rows 4, 9",
        ),
        (lambda t: _set(t, "pscore", [7], 1.5), r"pscore not in \(0, 1\] at 1 row\(s\) \(rows 7"),
        (lambda t: _set(t, "action", [11], 999), r"outside the catalogue \[0, 20\).*rows 11"),
        (lambda t: t.drop_columns(["pscore"]), "pscore"),
    ],
)
def test_bad_logs_exit_2_naming_the_rows(
    logged: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: Any,
    message: str,
) -> None:
    logs = _broken(logged / "logs", tmp_path, change)
    code, payload = _cli(["eval", "ope", "--logs", str(logs), "--policy", "greedy"], capsys)
    assert code == 2, payload
    assert re.search(message, payload["error"]), payload["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "linucb"], "learns as it acts"),
        (["--policy", "reinforce"], "--train-logs"),
        (["--policy", "nope"], "unknown policy 'nope'"),
        (["--policy", "softmax", "--set", "temperature"], "KEY=VALUE"),
        (["--policy", "softmax", "--set", "temp=0.5"], "temp"),
    ],
)
def test_bad_targets_exit_2(
    logged: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, payload = _cli(["eval", "ope", "--logs", str(logged / "logs"), *args], capsys)
    assert code == 2 and message in payload["error"], payload


def test_logs_without_their_world_exit_2(
    logged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs"
    shutil.copytree(logged / "logs", logs)
    (logs / "world.npz").unlink()
    code, payload = _cli(["eval", "ope", "--logs", str(logs), "--policy", "greedy"], capsys)
    assert code == 2 and "world.npz" in payload["error"]


def test_reinforce_trains_on_other_logs_and_runs(
    logged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, payload = _cli(
        ["sim", "run", "--policy", "reinforce", "--train-logs", str(logged / "logs"), *TINY,
         "--run", str(tmp_path), "--set", "epochs=2"],
        capsys,
    )  # fmt: skip
    assert code == 0, payload
    assert payload["policy"] == "reinforce" and payload["logged_rows"] == 1200


def test_any_dataset_with_a_fitted_model_as_the_truth(
    logged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without truth.npz, a second fitted model (ease) is the truth; users and items are cut
    to the most active and popular."""
    data = tmp_path / "data"
    shutil.copytree(next((logged / "world").iterdir()), data)
    (data / "truth.npz").unlink()
    code, payload = _cli(
        ["sim", "run", "--policy", "linucb", "--data", str(data), "--users", "40", "--items",
         "15", "--rounds", "200", "--no-log", "--run", str(tmp_path / "run")],
        capsys,
    )  # fmt: skip
    assert code == 0, payload
    assert "ease" in payload["world"]["truth"]
    assert (payload["world"]["users"], payload["world"]["items"]) == (40, 15)
    assert payload["rounds"] == 200 and "logs" not in payload


def test_a_policy_without_propensities_cannot_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, payload = _cli(
        ["sim", "run", "--policy", "neural-linear", *TINY, "--run", str(tmp_path)], capsys
    )
    assert code == 2 and "--no-log" in payload["error"]


@pytest.mark.parametrize(
    ("command", "size", "message"),
    [
        (["sim", "run", "--policy", "greedy"], ["--items", "10"], "--items 10 does not fit"),
        (["sim", "run", "--policy", "greedy"], ["--users", "3"], "--users 3 does not fit"),
        (["bench", "ope"], ["--users", "600000"], "--users 600000 does not fit"),
    ],
)
def test_a_synthetic_world_out_of_range_is_named_by_its_option(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    size: list[str],
    message: str,
) -> None:
    """It used to name SynthConfig's field (num_pins) the user never typed."""
    code, payload = _cli([*command, *size, "--rounds", "10", "--run", str(tmp_path)], capsys)
    assert code == 2 and payload["error"].startswith(message), payload
    assert payload["error"].endswith("; change it, or pass --data DIR")


def test_eval_ope_out_replaces_an_earlier_result_and_no_other_file(
    logged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--out LOGS/feedback.json` once replaced the logs' manifest with the result."""
    logs = tmp_path / "logs"
    shutil.copytree(logged / "logs", logs)
    ope = ["eval", "ope", "--logs", str(logs), "--policy", "greedy", "--out"]
    for kept in (logs / "feedback.json", logged / "run.json"):
        before = kept.read_bytes()
        code, payload = _cli([*ope, str(kept)], capsys)
        assert code == 2 and "is not an earlier eval ope result" in payload["error"], payload
        assert kept.read_bytes() == before
    code, payload = _cli([*ope, str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in payload["error"]  # was an exit 1 on the rename
    result = tmp_path / "ope.json"
    for _ in range(2):  # the second replaces the first
        code, payload = _cli([*ope, str(result)], capsys)
        assert code == 0 and json.loads(result.read_text()) == payload


def test_reinforce_never_trains_on_the_logs_it_is_valued_on_or_replaces(
    logged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(logged / "logs", copy)
    ope = ["eval", "ope", "--logs", str(logged / "logs"), "--policy", "reinforce"]
    for train in (logged / "logs", copy):  # the folder itself, or a copy of it
        code, payload = _cli([*ope, "--train-logs", str(train)], capsys)
        assert code == 2 and "are the logs being evaluated" in payload["error"], payload
    run_dir = tmp_path / "run"
    shutil.copytree(logged, run_dir)
    before = (run_dir / "logs" / "feedback.parquet").read_bytes()
    sim = ["sim", "run", "--policy", "reinforce", *TINY, "--run", str(run_dir)]
    code, payload = _cli([*sim, "--train-logs", str(run_dir / "logs")], capsys)
    assert code == 2 and "which this run replaces with its own" in payload["error"], payload
    assert (run_dir / "logs" / "feedback.parquet").read_bytes() == before
