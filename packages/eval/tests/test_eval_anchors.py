"""Published anchors: found by loose dataset names, matched on every protocol setting."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_eval import ANCHORS, ProtocolSpec, anchors_for, user_metrics

MS_STRATIFIED = ProtocolSpec(name="stratified", stratify_by="item")
METRIC_NAME = re.compile(r"^[a-z_]+@\d+$")


class Zeros:
    def score(self, users: Int64Array) -> Float32Array:
        return np.zeros((len(users), 3), dtype=np.float32)


@pytest.mark.parametrize("name", ["ml-100k", "MovieLens 100K", "movielens_100k", "ML100K"])
def test_microsoft_recommenders_benchmark_under_any_spelling(name: str) -> None:
    anchors = anchors_for(name, MS_STRATIFIED)
    assert [a.model for a in anchors] == ["BiVAE", "BPR", "LightGCN", "NCF", "SAR"]
    bivae = anchors[0]
    assert bivae.metrics["ndcg@10"] == pytest.approx(0.475, abs=5e-4)
    assert bivae.metrics["precision@10"] == pytest.approx(0.412, abs=5e-4)
    assert "recommenders" in bivae.source


def test_other_settings_or_datasets_find_nothing() -> None:
    assert anchors_for("ml-100k", ProtocolSpec(name="stratified", stratify_by="user")) == []
    assert anchors_for("ml-100k", ProtocolSpec(name="stratified", ratio=0.8)) == []
    assert anchors_for("ml-100k", "temporal") == []
    assert anchors_for("netflix", "stratified") == []


def test_the_seed_does_not_matter() -> None:
    assert anchors_for("ml-100k", ProtocolSpec(name="stratified", seed=1)) == anchors_for(
        "ml-100k", MS_STRATIFIED
    )


def test_full_ranking_and_sampled_negatives_are_told_apart() -> None:
    full = anchors_for("ml-1m", ProtocolSpec(name="leave-last-out"))
    sampled = anchors_for("ml-1m", ProtocolSpec(name="leave-last-out", negatives=100))
    assert {a.model for a in full} >= {"SASRec (BCE, 1 negative)", "gSASRec (gBCE, t=0.75)"}
    assert [(a.model, a.metrics) for a in sampled] == [
        ("SASRec", {"hr@10": 0.8245, "ndcg@10": 0.5905})
    ]
    assert len(anchors_for("movielens-1m", "leave-last-out")) == len(full) + len(sampled)
    assert "Table III" in sampled[0].source


@pytest.mark.parametrize(
    "name", ["beauty", "Amazon Beauty", "amazon-games", "video-games", "Video", "steam"]
)
def test_the_sasrec_paper_covers_its_sequence_benchmarks(name: str) -> None:
    """`Video` is the name `data load sequences` gives SASRec's own release, Video.txt."""
    sampled = ProtocolSpec(name="leave-last-out", negatives=100)
    assert [a.model for a in anchors_for(name, sampled)] == ["SASRec"]


@pytest.mark.parametrize(("name", "key"), [("Beauty", "beauty"), ("Toys_and_Games", "toys")])
def test_the_s3rec_amazon_files_get_their_full_ranking_anchors(name: str, key: str) -> None:
    """`data load sequences` names a dataset by its file: Beauty.txt, Toys_and_Games.txt."""
    full = anchors_for(name, ProtocolSpec(name="leave-last-out"))
    models = {a.model for a in full}
    assert {"ICLRec", "ICSRec", "SASRec, sampled softmax (256 negatives)"} <= models
    iclrec = next(a for a in full if a.model == "ICLRec")
    expected = {"beauty": (0.0744, 0.0403), "toys": (0.0834, 0.0480)}[key]
    assert (iclrec.metrics["hr@10"], iclrec.metrics["ndcg@10"]) == expected
    assert all("full ranking" in a.note for a in full)


def test_every_anchor_uses_metric_names_our_evaluation_produces() -> None:
    target = InteractionLog(
        users=np.array([0], dtype=np.int64),
        items=np.array([1], dtype=np.int64),
        timestamps=np.zeros(1, dtype=np.int64),
        weights=np.ones(1, dtype=np.float32),
        user_ids=np.arange(1, dtype=np.int64),
        item_ids=np.arange(3, dtype=np.int64),
    )
    ours = user_metrics(Zeros(), target, None, ks=(1, 5, 10, 20)).means()
    for anchor in ANCHORS:
        for name, value in anchor.metrics.items():
            assert METRIC_NAME.match(name) and name in ours, (anchor.model, name)
            assert value is None or 0 < value < 1, (anchor.model, name)
        assert anchor.source
