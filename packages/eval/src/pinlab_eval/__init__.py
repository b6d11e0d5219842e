"""pinlab_eval: ranking and retrieval metrics under named protocols."""

from pinlab_eval._ranking import (
    catalogue_coverage,
    evaluate_ranking,
    hit_rate_at_k,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    taste_recovery,
    top_k,
)
from pinlab_eval._retrieval import evaluate_retrieval
from pinlab_eval.contracts import (
    Csr,
    Float64Array,
    Metrics,
    RankingReport,
    RetrievalReport,
    Scorer,
)

__all__ = [
    "Csr",
    "Float64Array",
    "Metrics",
    "RankingReport",
    "RetrievalReport",
    "Scorer",
    "catalogue_coverage",
    "evaluate_ranking",
    "evaluate_retrieval",
    "hit_rate_at_k",
    "map_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "recall_at_k",
    "taste_recovery",
    "top_k",
]
