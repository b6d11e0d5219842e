"""Recommenders by name: each registers a config type, a builder and a checkpoint loader."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from pinlab_models._cold_start import HybridRecommender
from pinlab_models._ensemble import Ensemble
from pinlab_models._ials import ImplicitALS
from pinlab_models._linear import ItemItem, item_item_builder
from pinlab_models._recommenders import CHECKPOINT_KIND, MatrixFactorization, Popularity
from pinlab_models._runtime import load_checkpoint
from pinlab_models._sequential import SASRec
from pinlab_models._two_tower import TwoTower
from pinlab_models.contracts import (
    BPRConfig,
    DLAEConfig,
    EASEConfig,
    EnsembleConfig,
    HybridConfig,
    IALSConfig,
    ItemKNNConfig,
    MFConfig,
    PinlabModelError,
    PopularityConfig,
    Recommender,
    RP3BetaConfig,
    SASRecConfig,
    TwoTowerConfig,
)


@dataclass(frozen=True)
class RecommenderSpec:
    name: str
    summary: str
    config_type: type[BaseModel]
    build: Callable[[Any], Recommender]
    from_checkpoint: Callable[[dict[str, Any]], Recommender]
    tune_grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    """Settings `pinlab bench recsys` searches on the validation split (never on test)."""
    uses_item_features: bool = False
    """Reads `TrainContext.item_features` (text or image embeddings per item)."""


_REGISTRY: dict[str, RecommenderSpec] = {}


def register(spec: RecommenderSpec) -> None:
    if spec.name in _REGISTRY:
        raise PinlabModelError(f"recommender {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def recommender_names() -> list[str]:
    return sorted(_REGISTRY)


def recommender_spec(name: str) -> RecommenderSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PinlabModelError(
            f"unknown recommender {name!r}; registered: {', '.join(recommender_names())}"
        ) from None


def build_recommender(name: str, config: Mapping[str, Any] | None = None) -> Recommender:
    """Build a registered recommender; `config` overrides its defaults and is validated."""
    spec = recommender_spec(name)
    try:
        cfg = spec.config_type.model_validate(dict(config or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise PinlabModelError(f"bad {name} setting {field!r}: {first['msg']}") from None
    return spec.build(cfg)


def load_recommender(path: Path) -> Recommender:
    payload = load_checkpoint(path, CHECKPOINT_KIND)
    return recommender_spec(str(payload["name"])).from_checkpoint(payload)


register(
    RecommenderSpec(
        name="popularity",
        summary="Most-engaged items first; the baseline every model must beat.",
        config_type=PopularityConfig,
        build=Popularity,
        from_checkpoint=Popularity.from_checkpoint,
    )
)
register(
    RecommenderSpec(
        name="mf",
        summary="Matrix factorisation in PyTorch, BPR (LearnBPR) or full/sampled softmax loss.",
        config_type=MFConfig,
        build=MatrixFactorization,
        from_checkpoint=MatrixFactorization.from_checkpoint,
        tune_grid={"dim": [64, 200]},
    )
)
register(
    RecommenderSpec(
        name="bpr",
        summary="BPR-MF: matrix factorisation with the pairwise BPR loss (Rendle et al., 2009).",
        config_type=BPRConfig,
        build=lambda cfg: MatrixFactorization(cfg, name="bpr"),
        from_checkpoint=MatrixFactorization.from_checkpoint,
        tune_grid={"l2": [1e-3, 3e-3]},
    )
)
register(
    RecommenderSpec(
        name="ease",
        summary="EASE: closed-form item-item weights with a zero diagonal (Steck, 2019).",
        config_type=EASEConfig,
        build=item_item_builder("ease"),
        from_checkpoint=ItemItem.from_checkpoint,
        tune_grid={"l2": [100.0, 250.0, 500.0, 1000.0, 2000.0]},
    )
)
register(
    RecommenderSpec(
        name="dlae",
        summary="Denoising linear autoencoder, closed form, with data-adaptive normalisation.",
        config_type=DLAEConfig,
        build=item_item_builder("dlae"),
        from_checkpoint=ItemItem.from_checkpoint,
        tune_grid={
            "l2": [250.0, 500.0],
            "dropout": [0.5, 0.65, 0.8],
            "user_norm": [0.0, 0.5],
        },
    )
)
register(
    RecommenderSpec(
        name="itemknn",
        summary="Item-based nearest neighbours, cosine similarity with shrinkage.",
        config_type=ItemKNNConfig,
        build=item_item_builder("itemknn"),
        from_checkpoint=ItemItem.from_checkpoint,
        tune_grid={"neighbours": [50, 100, 200, 400], "shrink": [0.0, 10.0, 50.0]},
    )
)
register(
    RecommenderSpec(
        name="rp3beta",
        summary="RP3beta: item-user-item random walks damped by popularity (Paudel et al., 2017).",
        config_type=RP3BetaConfig,
        build=item_item_builder("rp3beta"),
        from_checkpoint=ItemItem.from_checkpoint,
        tune_grid={"alpha": [0.6, 0.8, 1.0], "beta": [0.2, 0.4, 0.6]},
    )
)
register(
    RecommenderSpec(
        name="ials",
        summary="Implicit ALS with conjugate-gradient (or exact) solves, in PyTorch.",
        config_type=IALSConfig,
        build=ImplicitALS,
        from_checkpoint=ImplicitALS.from_checkpoint,
        tune_grid={"dim": [64, 128], "l2": [50.0, 100.0], "alpha": [5.0, 10.0]},
    )
)
register(
    RecommenderSpec(
        name="sasrec",
        summary="SASRec: causal transformer over item sequences; dense all-action loss option.",
        config_type=SASRecConfig,
        build=SASRec,
        from_checkpoint=SASRec.from_checkpoint,
    )
)
register(
    RecommenderSpec(
        name="two-tower",
        summary="Two-tower retrieval: id + MiniLM item text, in-batch softmax with logQ.",
        config_type=TwoTowerConfig,
        build=TwoTower,
        from_checkpoint=TwoTower.from_checkpoint,
        uses_item_features=True,
    )
)
register(
    RecommenderSpec(
        name="ensemble",
        summary="Blend of standardised member scores (default: DLAE and iALS).",
        config_type=EnsembleConfig,
        build=Ensemble,
        from_checkpoint=Ensemble.from_checkpoint,
        tune_grid={"weights": [(0.8, 0.2), (0.7, 0.3), (0.6, 0.4), (0.5, 0.5), (0.4, 0.6)]},
    )
)
register(
    RecommenderSpec(
        name="hybrid",
        summary="Cold start: item vectors from item features (+ ids when warm), item dropout.",
        config_type=HybridConfig,
        build=HybridRecommender,
        from_checkpoint=HybridRecommender.from_checkpoint,
        tune_grid={"item_dropout": [0.3, 0.6]},
        uses_item_features=True,
    )
)
