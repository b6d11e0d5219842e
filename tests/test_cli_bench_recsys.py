"""`pinlab bench recsys` through the real CLI, on a small MovieLens-format dataset."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
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


def test_bench_recsys_searches_on_validation_and_reports_seeds(
    capsys: pytest.CaptureFixture[str], ratings: Path, tmp_path: Path
) -> None:
    code, result, err = cli(
        capsys, "bench", "recsys", "--data", str(ratings), "--models", "popularity,ease,rp3beta",
        "--seeds", "2", "--trials", "4", "--run", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, err
    assert result["protocol"] == {"name": "stratified", "seed": 42, "ratio": 0.75,
                                  "stratify_by": "item", "valid_ratio": 0.9}  # fmt: skip
    assert result["seeds"] == [0, 1] and result["split_seeds"] == [42, 43]
    rows = {row["model"]: row for row in result["results"]}
    assert set(rows) == {"popularity", "ease", "rp3beta"}
    for row in rows.values():
        for key in ("ndcg@10", "hr@10", "precision@10", "recall@10", "map_all@10", "ndcg@20"):
            values = row["per_seed"][key]
            assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
            assert row["metrics"][key] == pytest.approx(sum(values) / 2)
            assert row["std"][key] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
        assert row["fit_seconds"] >= 0 and row["fit_peak_mb"] >= 0
        assert len(row["search"]) == 2
    # EASE's space was searched on validation, the defaults first, and its best trial refitted.
    for search, settings in zip(rows["ease"]["search"], rows["ease"]["settings"], strict=True):
        assert search["space"]["l2"] == {"kind": "float", "low": 1.0, "high": 1e5, "log": True}
        trials = search["trials"]
        assert len(trials) == 4 and trials[0]["params"] == {"l2": 500.0}
        best = max(trials, key=lambda t: t["value"])
        assert search["valid_value"] == best["value"] and settings == best["params"]
        assert search["boundary"] == []
    # Splits differ between seeds, so the repeated runs are not copies of each other.
    assert rows["ease"]["per_seed"]["ndcg@10"][0] != rows["ease"]["per_seed"]["ndcg@10"][1]
    pairs = {(c["a"], c["b"]) for c in result["comparisons"]}
    assert len(pairs) == 3 and all(c["metric"] == "ndcg@10" for c in result["comparisons"])
    saved = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert saved["results"] == result["results"]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["steps"][-1]["config"]["seeds"] == 2
    import optuna

    studies = optuna.study.get_all_study_names(f"sqlite:///{tmp_path / 'run' / 'optuna.db'}")
    assert {"ease-seed0", "ease-seed1", "rp3beta-seed1"} <= set(studies)
    arrays = np.load(tmp_path / "run" / "user_metrics.npz")
    assert arrays["ease/ndcg@10"].mean() == pytest.approx(
        np.mean([np.mean(arrays["ease/ndcg@10"][arrays["ease/seed"] == r]) for r in (0, 1)]),
        abs=0.05,
    )


def test_bench_recsys_flags_a_choice_on_the_edge_of_its_range(
    capsys: pytest.CaptureFixture[str], ratings: Path, tmp_path: Path
) -> None:
    code, result, err = cli(
        capsys, "bench", "recsys", "--data", str(ratings), "--models", "itemknn",
        "--trials", "12", "--run", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, err
    (row,) = result["results"]
    (search,) = row["search"]
    space = search["space"]
    expected = [
        name
        for name, value in search["chosen"].items()
        if name in space
        and (value <= space[name]["low"] + 0.02 * (space[name]["high"] - space[name]["low"])
             or value >= space[name]["high"] - 0.02 * (space[name]["high"] - space[name]["low"]))
        and not space[name]["log"]
    ]  # fmt: skip
    assert set(expected) <= set(search["boundary"]) and row["boundary"] == search["boundary"]


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


def test_bench_recsys_no_refit_measures_the_validation_fit(
    capsys: pytest.CaptureFixture[str], ratings: Path, tmp_path: Path
) -> None:
    from pinlab_data import interaction_log, load_dataset
    from pinlab_eval import evaluate_holdout, protocol_spec
    from pinlab_models import HistoryUpdatable, TrainContext, build_recommender
    from pinlab_tasks.recsys import split_for

    code, result, err = cli(
        capsys, "bench", "recsys", "--data", str(ratings), "--models", "popularity,ease",
        "--protocol", "leave-last-out", "--trials", "0", "--no-refit",
        "--run", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, err
    assert result["refit"] is False
    rows = {row["model"]: row for row in result["results"]}
    # Popularity has no per-user histories to swap: it is refitted all the same.
    assert rows["ease"]["refitted"] is False and rows["popularity"]["refitted"] is True
    # EASE fitted on the validation's training part, given the test's histories, by hand.
    split = split_for(interaction_log(load_dataset(ratings)), protocol_spec("leave-last-out"))
    ease = build_recommender("ease")
    ease.fit(split.valid.train, TrainContext(run_dir=tmp_path / "hand", seed=0, progress=False))
    assert isinstance(ease, HistoryUpdatable)
    ease.update_histories(split.test.train)
    by_hand = evaluate_holdout(ease, split.test).means()["ndcg@10"]
    assert rows["ease"]["metrics"]["ndcg@10"] == pytest.approx(by_hand, rel=1e-6)
    refitted = build_recommender("ease")
    refitted.fit(split.test.train, TrainContext(run_dir=tmp_path / "re", seed=0, progress=False))
    assert evaluate_holdout(refitted, split.test).means()["ndcg@10"] != pytest.approx(by_hand)


def test_bench_recsys_holds_a_set_setting_fixed_while_it_searches_the_rest(
    capsys: pytest.CaptureFixture[str], ratings: Path, tmp_path: Path
) -> None:
    code, result, err = cli(
        capsys, "bench", "recsys", "--data", str(ratings), "--models", "rp3beta,ease",
        "--trials", "3", "--set", "rp3beta.alpha=0.3", "--set", "ease.l2=50",
        "--run", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, err
    assert result["fixed"] == {"rp3beta": {"alpha": 0.3}, "ease": {"l2": 50}}
    rows = {row["model"]: row for row in result["results"]}
    (search,) = rows["rp3beta"]["search"]
    # alpha is out of the searched space; beta is still searched, alpha kept in every trial.
    assert "alpha" not in search["space"] and "beta" in search["space"]
    assert len({t["params"]["beta"] for t in search["trials"]}) == 3
    assert rows["rp3beta"]["settings"][0]["alpha"] == 0.3
    # EASE's only searched setting is fixed: one fit of the given value, nothing searched.
    (ease,) = rows["ease"]["search"]
    assert ease["space"] == {} and len(ease["trials"]) == 1
    assert rows["ease"]["settings"] == [{"l2": 50}]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["steps"][-1]["config"]["fixed"] == result["fixed"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "dropout=0.5"], "--set expects MODEL.KEY=VALUE, got 'dropout'"),
        (["--models", "ease", "--set", "hstu.dropout=0.5"], "settings are given for 'hstu'"),
        (["--models", "ease", "--set", "ease.l2=-1"], "bad ease setting 'l2'"),
        (
            ["--models", "ease,sasrec-ultra"],
            "unknown model 'sasrec-ultra'; registered: bert4rec, bpr",
        ),
        (["--protocol", "random"], "bad protocol 'random'"),
        (["--negatives", "10"], "`negatives` is a setting of the leave-last-out protocol"),
        (["--metric", "ndgc@10"], "bad validation metric 'ndgc@10'"),
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
    assert not (tmp_path / "r" / "run.json").exists()  # bad input records no run


@pytest.mark.slow
def test_bench_recsys_on_movielens_100k_reaches_the_target(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The README's 3-seed run, on its first seed (0.4959 there): one seed keeps CI in time."""
    source = shared_datasets() / "ml-100k"
    if not (source / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at {source} (set PINLAB_TEST_DATA)")
    code, _, err = cli(
        capsys, "data", "load", "movielens", str(source), "--out", str(tmp_path / "ds")
    )
    assert code == 0, err
    code, result, err = cli(
        capsys, "bench", "recsys", "--data", str(tmp_path / "ds"), "--seeds", "1",
        "--models", "popularity,ease,dlae,ials,ensemble", "--run", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, err
    rows = {row["model"]: row["metrics"] for row in result["results"]}
    best = max(rows.values(), key=lambda m: m["ndcg@10"])
    # The issue asks 0.49 (mean over 3 seeds: 0.4914). The search budget is in seconds, so a
    # loaded CI machine runs fewer trials: the guard leaves that much room, no more.
    assert best["ndcg@10"] >= 0.487 and best["precision@10"] >= 0.42
    learned = [name for name in rows if name != "popularity"]
    assert all(rows[n]["ndcg@10"] > rows["popularity"]["ndcg@10"] for n in learned)


@pytest.mark.slow
def test_bench_recsys_peer_implicit_reports_ratios_or_names_the_extra(
    capsys: pytest.CaptureFixture[str], ratings: Path, tmp_path: Path
) -> None:
    code, result, err = cli(
        capsys, "bench", "recsys", "--data", str(ratings), "--models", "popularity",
        "--peers", "implicit", "--trials", "3", "--run", str(tmp_path / "run"),
    )  # fmt: skip
    if importlib.util.find_spec("implicit") is None:
        assert code == 2 and "uv sync --extra implicit" in result["error"]
        return
    assert code == 0, err
    assert {row["model"] for row in result["results"]} == {"popularity", "ials"}
    (peer,) = result["peers"]
    assert peer["peer"].startswith("implicit ")
    assert peer["settings"] == {
        k: v for k, v in rows_by_model(result)["ials"]["settings"][0].items()
        if k in ("dim", "l2", "alpha", "iterations")
    }  # fmt: skip
    assert peer["ours_over_peer"]["fit_seconds"] > 0
    assert 0 <= peer["metrics"]["ndcg@10"] <= 1


def rows_by_model(result: dict[str, Any]) -> dict[str, Any]:
    return {row["model"]: row for row in result["results"]}


def test_train_eval_and_bench_give_the_same_numbers_for_the_same_settings(
    capsys: pytest.CaptureFixture[str], ratings: Path, tmp_path: Path
) -> None:
    models = ("popularity", "ease", "bpr")
    for model in models:
        code, _, err = cli(
            capsys, "train", "recommender", "--data", str(ratings), "--model", model,
            "--run", str(tmp_path / "run"), "--seed", "0",
        )  # fmt: skip
        assert code == 0, err
    code, evaluated, err = cli(capsys, "eval", "recommender", "--run", str(tmp_path / "run"))
    assert code == 0, err
    assert evaluated["protocol"] == "leave-last-out"
    code, bench, err = cli(
        capsys, "bench", "recsys", "--data", str(ratings), "--protocol", "leave-last-out",
        "--models", ",".join(models), "--trials", "0", "--seed", "0",
        "--run", str(tmp_path / "bench"),
    )  # fmt: skip
    assert code == 0, err
    for row in bench["results"]:
        for metric in ("ndcg@10", "hr@10", "ndcg@20"):
            assert evaluated["models"][row["model"]][metric] == pytest.approx(
                row["per_seed"][metric][0], rel=1e-6
            ), (row["model"], metric)
