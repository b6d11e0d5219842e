"""Recommenders by name: each registers a config type, a builder and a checkpoint loader."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from pinlab_models._bert4rec import BERT4Rec
from pinlab_models._cold_start import HybridRecommender
from pinlab_models._ensemble import Ensemble
from pinlab_models._hstu import HSTU
from pinlab_models._ials import ImplicitALS
from pinlab_models._linear import ItemItem, item_item_builder
from pinlab_models._mult_vae import MultVae
from pinlab_models._recommenders import MatrixFactorization, Popularity
from pinlab_models._registries import add_unique
from pinlab_models._runtime import RECOMMENDER_CHECKPOINT, load_checkpoint
from pinlab_models._sequential import SASRec
from pinlab_models._two_tower import TwoTower
from pinlab_models.contracts import (
    BERT4RecConfig,
    BPRConfig,
    Choice,
    DLAEConfig,
    EASEConfig,
    EnsembleConfig,
    FloatRange,
    GSASRecConfig,
    HSTUConfig,
    HybridConfig,
    IALSConfig,
    IntRange,
    ItemKNNConfig,
    MFConfig,
    MultVaeConfig,
    PinlabModelError,
    PopularityConfig,
    Recommender,
    RP3BetaConfig,
    SASRecConfig,
    SearchParam,
    Simplex,
    TwoTowerConfig,
)


def data_parallel(config: Any) -> str | None:
    """For `RecommenderSpec.single_process`: every config steps through `Steps`."""
    return None


def one_step(config: Any) -> str | None:
    """The default `RecommenderSpec.single_process`: a fit with no epochs to share out."""
    return "it is fitted in one step, not in epochs of gradient steps"


def _learn_bpr(config: Any) -> str | None:
    if getattr(config, "loss", "bpr") == "bpr":
        return (
            "LearnBPR is sequential per-sample SGD (use --set loss=softmax for Adam steps that can)"
        )
    return None


@dataclass(frozen=True)
class RecommenderSpec:
    name: str
    summary: str
    config_type: type[BaseModel]
    build: Callable[[Any], Recommender]
    from_checkpoint: Callable[[dict[str, Any]], Recommender]
    search_space: Mapping[str, SearchParam] = field(default_factory=dict)
    """Settings `pinlab bench recsys` searches on the validation split (never on test)."""
    epoch_field: str | None = None
    """The config field counting training passes: early-stopped on validation, then fixed."""
    members: Callable[[Any], Sequence[str]] | None = None
    """For a blend: its members' names, given its config; they are tuned first and their
    validated settings reach it through the config's `member_settings`."""
    of_fitted: Callable[[Any, Sequence[Recommender]], Recommender] | None = None
    """For a blend: itself over members already fitted, so a search over its own settings
    (weights) fits each member once, not once per trial."""
    uses_item_features: bool = False
    """Reads `TrainContext.item_features` (text or image embeddings per item)."""
    max_items: int | None = None
    """It holds items x items dense matrices: above this catalogue size `bench recsys` leaves
    it out of its default models (naming it in --models still runs it)."""
    single_process: Callable[[Any], str | None] = one_step
    """Why a config of it cannot train data-parallel under torchrun (`pinlab train ...
    --nproc-per-node N`), or None when it can: `data_parallel` for a model whose epochs hand
    their batches to `Steps` (tests/test_models_parallel.py checks every spec says true)."""

    def __post_init__(self) -> None:
        fields = self.config_type.model_fields
        named = [*self.search_space, *([self.epoch_field] if self.epoch_field else [])]
        if self.members is not None:
            named.append("member_settings")
        if (self.members is None) != (self.of_fitted is None):
            raise PinlabModelError(
                f"recommender {self.name!r}: a blend declares both "
                "`members` and `of_fitted`, anything else neither"
            )
        unknown = [f for f in named if f not in fields]
        if unknown:
            raise PinlabModelError(
                f"recommender {self.name!r} names {unknown[0]!r}, which "
                f"{self.config_type.__name__} does not have"
            )


_REGISTRY: dict[str, RecommenderSpec] = {}

DENSE_ITEM_ITEM_LIMIT = 20_000
"""Dense item-item models past this many items need over 3 GB per float64 matrix and minutes
per closed-form fit on 2 cores; sparse neighbourhoods or factor models pay there instead."""


def register(spec: RecommenderSpec) -> None:
    add_unique(_REGISTRY, "recommender", spec.name, spec)


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


def check_data_parallel(name: str, config: Mapping[str, Any] | None = None) -> None:
    """Refuse, with the reason, a model and settings that cannot train data-parallel."""
    spec = recommender_spec(name)
    reason = spec.single_process(spec.config_type.model_validate(dict(config or {})))
    if reason is not None:
        raise PinlabModelError(
            f"{name} cannot train data-parallel: {reason}; train it in one process (drop "
            "--nproc-per-node and --nnodes)"
        )


def load_recommender(path: Path) -> Recommender:
    return _from_payload(load_checkpoint(path, RECOMMENDER_CHECKPOINT))


def _from_payload(payload: dict[str, Any]) -> Recommender:
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
        search_space={
            "loss": Choice(values=("bpr", "softmax")),
            "dim": IntRange(low=16, high=512, log=True),
            "lr": FloatRange(low=1e-3, high=0.3, log=True),
            "l2": FloatRange(low=1e-5, high=1e-1, log=True),
        },
        epoch_field="epochs",
        single_process=_learn_bpr,
    )
)
register(
    RecommenderSpec(
        name="bpr",
        summary="BPR-MF: matrix factorisation with the pairwise BPR loss (Rendle et al., 2009).",
        config_type=BPRConfig,
        build=lambda cfg: MatrixFactorization(cfg, name="bpr"),
        from_checkpoint=MatrixFactorization.from_checkpoint,
        search_space={
            "dim": IntRange(low=16, high=512, log=True),
            "lr": FloatRange(low=1e-3, high=0.3, log=True),
            "l2": FloatRange(low=1e-5, high=1e-1, log=True),
        },
        epoch_field="epochs",
        single_process=_learn_bpr,
    )
)
register(
    RecommenderSpec(
        name="ease",
        summary="EASE: closed-form item-item weights with a zero diagonal (Steck, 2019).",
        config_type=EASEConfig,
        build=item_item_builder("ease"),
        from_checkpoint=ItemItem.from_checkpoint,
        search_space={"l2": FloatRange(low=1.0, high=1e5, log=True)},
        max_items=DENSE_ITEM_ITEM_LIMIT,
    )
)
register(
    RecommenderSpec(
        name="dlae",
        summary="Denoising linear autoencoder, closed form, with data-adaptive normalisation.",
        config_type=DLAEConfig,
        build=item_item_builder("dlae"),
        from_checkpoint=ItemItem.from_checkpoint,
        search_space={
            "l2": FloatRange(low=1.0, high=1e5, log=True),
            "dropout": FloatRange(low=0.0, high=0.95),
            "user_norm": FloatRange(low=0.0, high=1.0),
            "item_norm": FloatRange(low=0.0, high=1.0),
        },
        max_items=DENSE_ITEM_ITEM_LIMIT,
    )
)
register(
    RecommenderSpec(
        name="itemknn",
        summary="Item-based nearest neighbours, cosine similarity with shrinkage.",
        config_type=ItemKNNConfig,
        build=item_item_builder("itemknn"),
        from_checkpoint=ItemItem.from_checkpoint,
        search_space={
            "neighbours": IntRange(low=5, high=2000, log=True),
            "shrink": FloatRange(low=0.0, high=1000.0),
        },
        max_items=DENSE_ITEM_ITEM_LIMIT,
    )
)
register(
    RecommenderSpec(
        name="rp3beta",
        summary="RP3beta: item-user-item random walks damped by popularity (Paudel et al., 2017).",
        config_type=RP3BetaConfig,
        build=item_item_builder("rp3beta"),
        from_checkpoint=ItemItem.from_checkpoint,
        search_space={
            "alpha": FloatRange(low=0.05, high=3.0),
            "beta": FloatRange(low=0.0, high=1.5),
            "neighbours": IntRange(low=5, high=2000, log=True),
        },
        max_items=DENSE_ITEM_ITEM_LIMIT,
    )
)
register(
    RecommenderSpec(
        name="ials",
        summary="Implicit ALS with conjugate-gradient (or exact) solves, in PyTorch.",
        config_type=IALSConfig,
        build=ImplicitALS,
        from_checkpoint=ImplicitALS.from_checkpoint,
        search_space={
            "dim": IntRange(low=8, high=512, log=True),
            "l2": FloatRange(low=1e-3, high=1e4, log=True),
            "alpha": FloatRange(low=0.01, high=1000.0, log=True),
        },
        epoch_field="iterations",
        single_process=lambda config: "ALS solves least squares; it takes no gradient steps",
    )
)
register(
    RecommenderSpec(
        name="sasrec",
        summary="SASRec: causal transformer over item sequences; dense all-action loss option.",
        config_type=SASRecConfig,
        build=SASRec,
        from_checkpoint=SASRec.from_checkpoint,
        search_space={
            "dropout": FloatRange(low=0.0, high=0.7),
            "lr": FloatRange(low=1e-4, high=1e-2, log=True),
        },
        epoch_field="epochs",
        single_process=data_parallel,
    )
)
register(
    RecommenderSpec(
        name="gsasrec",
        summary="gSASRec: SASRec with gBCE over 256 sampled negatives (Petrov & Macdonald, 2023).",
        config_type=GSASRecConfig,
        build=lambda cfg: SASRec(cfg, name="gsasrec"),
        from_checkpoint=SASRec.from_checkpoint,
        search_space={
            "dropout": FloatRange(low=0.0, high=0.7),
            "lr": FloatRange(low=1e-4, high=1e-2, log=True),
            "gbce_t": FloatRange(low=0.0, high=1.0),
        },
        epoch_field="epochs",
        single_process=data_parallel,
    )
)
register(
    RecommenderSpec(
        name="bert4rec",
        summary="BERT4Rec: bidirectional transformer trained on masked items (Sun et al., 2019).",
        config_type=BERT4RecConfig,
        build=BERT4Rec,
        from_checkpoint=BERT4Rec.from_checkpoint,
        search_space={
            "dropout": FloatRange(low=0.0, high=0.7),
            "lr": FloatRange(low=1e-4, high=1e-2, log=True),
            "mask_prob": FloatRange(low=0.05, high=0.6),
        },
        epoch_field="epochs",
        single_process=data_parallel,
    )
)
register(
    RecommenderSpec(
        name="hstu",
        summary="HSTU-style generative recommender: gated pointwise attention, time bias.",
        config_type=HSTUConfig,
        build=HSTU,
        from_checkpoint=HSTU.from_checkpoint,
        search_space={
            "dropout": FloatRange(low=0.0, high=0.7),
            "lr": FloatRange(low=1e-4, high=1e-2, log=True),
        },
        epoch_field="epochs",
        single_process=data_parallel,
    )
)
register(
    RecommenderSpec(
        name="two-tower",
        summary="Two-tower retrieval: id + MiniLM item text, in-batch softmax with logQ.",
        config_type=TwoTowerConfig,
        build=TwoTower,
        from_checkpoint=TwoTower.from_checkpoint,
        search_space={
            "lr": FloatRange(low=1e-4, high=3e-2, log=True),
            "temperature": FloatRange(low=0.01, high=0.5, log=True),
            "weight_decay": FloatRange(low=1e-8, high=1e-3, log=True),
        },
        epoch_field="epochs",
        uses_item_features=True,
        single_process=data_parallel,
    )
)
register(
    RecommenderSpec(
        name="ensemble",
        summary="Blend of standardised member scores (default: DLAE, iALS and BPR).",
        config_type=EnsembleConfig,
        build=lambda cfg: Ensemble(cfg, build_member=build_recommender),
        from_checkpoint=lambda payload: Ensemble.from_checkpoint(payload, _from_payload),
        search_space={"weights": Simplex()},
        members=lambda cfg: cfg.members,
        of_fitted=Ensemble.of_fitted,
        max_items=DENSE_ITEM_ITEM_LIMIT,
        single_process=lambda config: "a blend fits its members one after another",
    )
)
register(
    RecommenderSpec(
        name="hybrid",
        summary="Cold start: item vectors from item features (+ ids when warm), item dropout.",
        config_type=HybridConfig,
        build=HybridRecommender,
        from_checkpoint=HybridRecommender.from_checkpoint,
        search_space={
            "item_dropout": FloatRange(low=0.0, high=0.9),
            "lr": FloatRange(low=1e-4, high=3e-2, log=True),
        },
        epoch_field="epochs",
        uses_item_features=True,
        single_process=data_parallel,
    )
)
register(
    RecommenderSpec(
        name="mult-vae",
        summary="Mult-VAE: variational autoencoder of user rows, multinomial likelihood.",
        config_type=MultVaeConfig,
        build=MultVae,
        from_checkpoint=MultVae.from_checkpoint,
        search_space={
            "lr": FloatRange(low=1e-4, high=1e-2, log=True),
            "dropout": FloatRange(low=0.0, high=0.8),
            "anneal_cap": FloatRange(low=0.0, high=1.0),
            "latent_dim": IntRange(low=16, high=512, log=True),
        },
        epoch_field="epochs",
        single_process=data_parallel,
    )
)
# pinlab new: recommender registrations go above this line (`pinlab new recommender NAME`)
