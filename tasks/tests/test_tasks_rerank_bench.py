"""`pinlab bench rerank` end to end on a small synthetic world, and its parts by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pinlab_data import SynthConfig, write_synth
from pinlab_tasks.cli import run
from pinlab_tasks.report import build_report
from pinlab_tasks.rerank_bench import PRICES, TRADEOFFS, Lists, hit_calibration, hits, pick


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rerank") / "world"
    write_synth(out, SynthConfig(num_pins=300, num_users=60, num_categories=4, seed=5))
    return out


def bench(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    code = run(["bench", "rerank", *args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


def test_bench_rerank_frontier(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, payload, err = bench(
        ["--data", str(world), "--run", str(tmp_path / "run"), "--candidates", "30"], capsys
    )
    assert code == 0, err
    assert payload["by"] == "creator_group" and payload["protected"] == "emerging"
    frontier = payload["frontier"]
    assert set(frontier) == {
        "mmr",
        "dpp",
        "category_pairs",
        "calibrated",
        "exposure",
        "exposure_dithered",
        "exposure_boost",
    }
    base = {m: rows[0] for m, rows in frontier.items()}
    # Trade-off 0 is the base ranking for every re-ranker: the same numbers.
    ndcg = {m: row["ndcg@10"]["mean"] for m, row in base.items()}
    assert len(set(ndcg.values())) == 1, ndcg
    assert [r["tradeoff"] for r in frontier["dpp"]] == list(TRADEOFFS)
    assert [r["tradeoff"] for r in frontier["category_pairs"]] == list(PRICES)
    # Re-ranking buys what it is for: diversity, calibration, the protected group's share.
    last = {m: rows[-1] for m, rows in frontier.items()}
    for method in ("mmr", "dpp", "category_pairs"):
        assert (
            last[method]["category_diversity"]["mean"] > base[method]["category_diversity"]["mean"]
        )
    assert (
        last["calibrated"]["miscalibration"]["mean"] < base["calibrated"]["miscalibration"]["mean"]
    )
    share = [r["protected_exposure_share"]["mean"] for r in frontier["exposure"]]
    assert share[-1] > 2 * share[0]  # as far as the candidates hold emerging pins
    reference = base["exposure"]["protected_reference_share"]["mean"]
    assert 0 < reference < 1  # the emerging creators' merit from the world's truth
    chosen = payload["chosen"]
    assert set(chosen) == set(frontier)
    for method, choice in chosen.items():
        assert choice["relative_ndcg_loss"]["mean"] is not None, method
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "rerank.json").read_text())["frontier"] == frontier
    assert (run_dir / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    steps = json.loads((run_dir / "run.json").read_text())["steps"]
    assert steps[-1]["command"] == "bench rerank"
    # The report lays it out: the choices (with their per-seed settings) and the frontier.
    report = build_report(run_dir)
    assert report.kind == "bench rerank" and report.sections == ["chosen", "frontier"]
    assert report.plots == 1
    for method, choice in chosen.items():
        per_seed = ", ".join(map(str, choice["tradeoff_per_seed"]))
        assert f"<td>{method}</td><td>{per_seed}</td>" in report.html


def test_bench_rerank_unknown_column(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(["bench", "rerank", "--data", str(world), "--by", "genre", "--run", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "'genre' is not a pin column" in err and "creator_group" in err and "category" in err


def test_pick_takes_the_most_gain_inside_the_budget() -> None:
    def point(ndcg: float, diversity: float) -> dict[str, float | None]:
        return {"ndcg@10": ndcg, "category_diversity": diversity}

    points = {0.0: point(0.5, 0.3), 0.1: point(0.498, 0.4), 0.2: point(0.49, 0.6)}
    assert pick(points, "dpp") == 0.1  # 0.2 loses 2%, past DPP's 1%
    assert pick({0.0: point(0.5, 0.3), 0.1: point(0.3, 0.9)}, "dpp") == 0.0


def test_hit_calibration_by_hand() -> None:
    # Two users, three candidates each, best first; user 0 holds out items 7 and 9, user 1 item 4.
    lists = Lists(
        users=np.array([0, 1]),
        candidates=np.array([[7, 8, 9], [4, 5, 6]]),
        scores=np.array([[0.9, 0.5, 0.1], [0.8, 0.4, 0.2]]),
        relevant=(np.array([0, 2, 3]), np.array([7, 9, 4])),
        history=(np.array([0, 0, 0]), np.array([], dtype=np.int64)),
    )
    assert hits(lists).tolist() == [[True, False, True], [True, False, False]]
    probability = hit_calibration(lists)
    # Sorted by score: 0.1 hit, 0.2 miss, 0.4 miss, 0.5 miss, 0.8 hit, 0.9 hit. The isotonic
    # fit pools the first four (1 hit in 4: 0.25, centred at score 0.3), then 0.8 and 0.9 at 1
    # (centred at 0.85); in between a straight line, outside the two centres it clips.
    got = probability(np.array([[0.1, 0.45, 0.85], [0.0, 2.0, 0.3]]))
    between = 0.25 + (0.45 - 0.3) / (0.85 - 0.3) * (1.0 - 0.25)
    np.testing.assert_allclose(got, [[0.25, between, 1.0], [0.25, 1.0, 0.25]])
    # Strictly rising between the centres: a price never outweighs a better score for free.
    inside = probability(np.linspace(0.31, 0.84, 50))
    assert (np.diff(inside) > 0).all()
