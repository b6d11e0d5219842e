"""The `cornac` peer of `bench recsys`: Cornac's BPR on our split, or a message naming the extra."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pinlab_data import PinlabDataError, interaction_log, load_dataset, write_movielens_like
from pinlab_eval import ProtocolSpec, apply_protocol
from pinlab_tasks import benchmarks
from pinlab_tasks.cli import run


def test_cornac_peer_names_the_extra_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cornac" else real(name, *a)
    )
    with pytest.raises(PinlabDataError, match="--extra cornac"):
        benchmarks._require_cornac()


@pytest.mark.slow
def test_cornac_peer_ranks_the_same_split_with_the_benchmark_settings(tmp_path: Path) -> None:
    pytest.importorskip("cornac")
    source = write_movielens_like(tmp_path / "ml-like", rows=3000, seed=0)
    assert run(["data", "load", "movielens", str(source), "--out", str(tmp_path / "ds")]) == 0
    split = apply_protocol(
        interaction_log(load_dataset(tmp_path / "ds")), ProtocolSpec(name="stratified")
    )
    row = benchmarks.cornac_peer(split, {"fit_seconds": 1.0}, {"ndcg@10": 0.2}, seed=0)
    assert row["peer"].startswith("cornac ")
    assert row["settings"] == benchmarks.CORNAC_BPR_SETTINGS
    assert 0 < row["metrics"]["ndcg@10"] <= 1
    assert row["ours_over_peer"]["ndcg@10"] == pytest.approx(
        0.2 / row["metrics"]["ndcg@10"], rel=1e-3
    )
