"""The public surface of pinlab_eval: the Scorer Protocol, reports, names and imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np

import pinlab_eval
from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_eval import RankingReport, RetrievalReport, Scorer, evaluate_ranking

SOURCE = Path(pinlab_eval.__file__).parent
METRIC_NAME = re.compile(r"^[a-z_]+(@(\d+|r))?$")


class TableScorer:
    """The smallest Scorer: no base class, just a `score` method over a fixed matrix."""

    def __init__(self, table: Float32Array) -> None:
        self.table = table

    def score(self, users: Int64Array) -> Float32Array:
        return self.table[users]


def test_a_plain_class_with_score_is_a_scorer() -> None:
    scorer: Scorer = TableScorer(np.eye(3, dtype=np.float32))  # mypy checks the Protocol here
    assert isinstance(scorer, Scorer)
    assert not isinstance(object(), Scorer)
    log = InteractionLog(
        users=np.array([0, 1, 2], dtype=np.int64),
        items=np.array([0, 1, 2], dtype=np.int64),
        timestamps=np.zeros(3, dtype=np.int64),
        weights=np.ones(3, dtype=np.float32),
        user_ids=np.arange(3, dtype=np.int64),
        item_ids=np.arange(3, dtype=np.int64),
    )
    # each user scores its own item highest, so every metric is perfect at k = 1
    report = evaluate_ranking(scorer, log, None, ks=(1,))
    assert report.metrics == {
        "recall@1": 1.0,
        "ndcg@1": 1.0,
        "hr@1": 1.0,
        "mrr@1": 1.0,
        "precision@1": 1.0,
        "map@1": 1.0,
        "map_all@1": 1.0,
        "coverage@1": 1.0,
        "gini@1": 0.0,  # each item recommended exactly once: equal exposure
    }


def test_reports_round_trip_through_json() -> None:
    ranking = RankingReport(protocol="p", num_users=2, num_items=3, metrics={"ndcg@10": 0.5})
    retrieval = RetrievalReport(protocol="q", num_queries=4, metrics={"map@r": 0.25})
    assert RankingReport.model_validate_json(ranking.model_dump_json()) == ranking
    assert RetrievalReport.model_validate_json(retrieval.model_dump_json()) == retrieval
    assert RankingReport(protocol="p", num_users=0, num_items=0).metrics == {}


def test_metric_names_are_lower_case_name_at_k() -> None:
    scorer = TableScorer(np.random.default_rng(0).random((4, 6)).astype(np.float32))
    log = InteractionLog(
        users=np.array([0, 3], dtype=np.int64),
        items=np.array([5, 2], dtype=np.int64),
        timestamps=np.zeros(2, dtype=np.int64),
        weights=np.ones(2, dtype=np.float32),
        user_ids=np.arange(4, dtype=np.int64),
        item_ids=np.arange(6, dtype=np.int64),
    )
    names = list(evaluate_ranking(scorer, log, None).metrics)
    names += list(
        pinlab_eval.evaluate_retrieval(
            np.eye(2, dtype=np.float32)[[0, 0, 1, 1]], np.array([0, 0, 1, 1])
        ).metrics
    )
    assert names
    assert all(METRIC_NAME.match(name) for name in names), names


def test_all_lists_exactly_the_public_names() -> None:
    # Its order is ruff's (RUF022: constants, classes, then functions, each sorted).
    assert len(set(pinlab_eval.__all__)) == len(pinlab_eval.__all__)
    for name in pinlab_eval.__all__:
        assert hasattr(pinlab_eval, name), name


def test_imports_only_data_numpy_pydantic_and_matplotlib() -> None:
    # matplotlib draws the embedding maps (_plots.py), scipy fits the linear probe
    # (_visual_protocols.py); no torch, no models.
    allowed = {"pinlab_data", "pinlab_eval", "numpy", "scipy", "pydantic", "matplotlib"}
    allowed.add("__future__")
    stdlib = {"collections", "typing", "dataclasses", "math", "io", "pathlib"}
    for path in SOURCE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed | stdlib, f"{path.name} imports {roots}"
