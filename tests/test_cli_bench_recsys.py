"""`pinlab bench recsys` through the real CLI, on a small MovieLens-format dataset."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import shared_datasets
from pinlab_data import write_movielens_like
from pinlab_tasks.cli import run


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = run([*args, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


@pytest.fixture(scope="module")
def ratings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench-recsys")
    source = write_movielens_like(root / "ml-like", rows=6000, seed=0)
    assert run(["data", "load", "movielens", str(source), "--out", str(root / "ds")]) == 0
    return root / "ds"


def test_bench_recsys_tunes_on_validation_and_reports_every_model(
    capsys: pytest.CaptureFixture[str], ratings: Path, tmp_path: Path
) -> None:
    code, result, err = cli(
        capsys, "bench", "recsys", "--data", str(ratings), "--models", "popularity,ease,rp3beta",
        "--run", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, err
    assert result["protocol"] == {"name": "stratified", "seed": 42, "ratio": 0.75,
                                  "stratify_by": "item"}  # fmt: skip
    rows = {row["model"]: row for row in result["results"]}
    assert set(rows) == {"popularity", "ease", "rp3beta"}
    for row in rows.values():
        for key in ("ndcg@10", "hr@10", "precision@10", "recall@10", "map@10", "ndcg@20"):
            assert 0.0 <= row["metrics"][key] <= 1.0
        assert row["fit_seconds"] >= 0 and row["peak_rss_mb"] > 0
    # EASE's grid was searched on validation and its best point is what was fitted.
    tuned = rows["ease"]["tuned"]
    assert tuned["grid_points"] == 5 and tuned["settings"]["l2"] in (100, 250, 500, 1000, 2000)
    assert result["comparison"]["metric"] == "ndcg@10"
    saved = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert saved["results"] == result["results"]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["steps"][-1]["config"]["protocol"]["name"] == "stratified"


def test_bench_recsys_leave_last_out_with_sampled_negatives(
    capsys: pytest.CaptureFixture[str], ratings: Path, tmp_path: Path
) -> None:
    code, result, err = cli(
        capsys, "bench", "recsys", "--data", str(ratings), "--models", "popularity,itemknn",
        "--protocol", "leave-last-out", "--negatives", "50", "--run", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, err
    assert result["protocol"]["negatives"] == 50
    assert all(0 <= row["metrics"]["hr@10"] <= 1 for row in result["results"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "ease,sasrec-ultra"], "unknown model 'sasrec-ultra'; registered: bpr"),
        (["--protocol", "random"], "bad protocol 'random'"),
        (["--negatives", "10"], "`negatives` is a setting of the leave-last-out protocol"),
    ],
)
def test_bench_recsys_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str],
    ratings: Path,
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    code, result, _ = cli(
        capsys, "bench", "recsys", "--data", str(ratings), "--run", str(tmp_path / "r"), *args
    )
    assert code == 2
    assert message in result["error"]


@pytest.mark.slow
def test_bench_recsys_reaches_the_issue_targets_on_movielens_100k(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = shared_datasets() / "ml-100k"
    if not (source / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at {source} (set PINLAB_TEST_DATA)")
    code, _, err = cli(
        capsys, "data", "load", "movielens", str(source), "--out", str(tmp_path / "ds")
    )
    assert code == 0, err
    code, result, err = cli(
        capsys, "bench", "recsys", "--data", str(tmp_path / "ds"),
        "--models", "popularity,ease,dlae,ials,ensemble", "--run", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, err
    rows = {row["model"]: row["metrics"] for row in result["results"]}
    best = max(rows.values(), key=lambda m: m["ndcg@10"])
    assert best["ndcg@10"] >= 0.49 and best["precision@10"] >= 0.42
    learned = [name for name in rows if name != "popularity"]
    assert all(rows[n]["ndcg@10"] > rows["popularity"]["ndcg@10"] for n in learned)


@pytest.mark.slow
def test_bench_recsys_peer_implicit_reports_ratios_or_names_the_extra(
    capsys: pytest.CaptureFixture[str], ratings: Path, tmp_path: Path
) -> None:
    code, result, err = cli(
        capsys, "bench", "recsys", "--data", str(ratings), "--models", "popularity",
        "--peers", "implicit", "--run", str(tmp_path / "run"),
    )  # fmt: skip
    if importlib.util.find_spec("implicit") is None:
        assert code == 2 and "uv sync --extra implicit" in result["error"]
        return
    assert code == 0, err
    assert {row["model"] for row in result["results"]} == {"popularity", "ials"}
    (peer,) = result["peers"]
    assert peer["peer"].startswith("implicit ")
    assert peer["settings"] == {
        k: v for k, v in rows_by_model(result)["ials"]["tuned"]["settings"].items()
        if k in ("dim", "l2", "alpha", "iterations")
    }  # fmt: skip
    assert peer["ours_over_peer"]["fit_seconds"] > 0
    assert 0 <= peer["metrics"]["ndcg@10"] <= 1


def rows_by_model(result: dict[str, Any]) -> dict[str, Any]:
    return {row["model"]: row for row in result["results"]}
