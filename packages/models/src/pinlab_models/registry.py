"""Recommenders by name: each registers a config type, a builder and a checkpoint loader."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from pinlab_models._recommenders import CHECKPOINT_KIND, MatrixFactorization, Popularity
from pinlab_models._runtime import load_checkpoint
from pinlab_models.contracts import MFConfig, PinlabModelError, PopularityConfig, Recommender


@dataclass(frozen=True)
class RecommenderSpec:
    name: str
    summary: str
    config_type: type[BaseModel]
    build: Callable[[Any], Recommender]
    from_checkpoint: Callable[[dict[str, Any]], Recommender]


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
        summary="Matrix factorisation in PyTorch, full/sampled softmax or BPR loss.",
        config_type=MFConfig,
        build=MatrixFactorization,
        from_checkpoint=MatrixFactorization.from_checkpoint,
    )
)
