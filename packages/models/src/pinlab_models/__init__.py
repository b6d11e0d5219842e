"""pinlab_models: image encoders, recommenders and their training."""

from pinlab_models._align import (
    ImageTextModel,
    load_image_text_model,
    train_alignment,
    zero_shot_labels,
)
from pinlab_models._cold_start import HybridRecommender
from pinlab_models._encoder import CNNEncoder, augment, supcon_loss, train_encoder
from pinlab_models._encoders import (
    build_network,
    builtin_archs,
    check_arch,
    register_encoder_arch,
)
from pinlab_models._ensemble import Ensemble
from pinlab_models._ials import ImplicitALS
from pinlab_models._linear import ItemItem, interaction_matrix
from pinlab_models._recipes import (
    ProxyAnchorLoss,
    nt_xent_loss,
    product_augment,
    train_with_recipe,
)
from pinlab_models._recommenders import MatrixFactorization, Popularity
from pinlab_models._runtime import resolve_device, seed_everything
from pinlab_models._sequential import SASRec
from pinlab_models._text import TextEncoder
from pinlab_models._two_tower import TwoTower
from pinlab_models.contracts import (
    AlignConfig,
    BPRConfig,
    Device,
    DLAEConfig,
    EASEConfig,
    EncoderConfig,
    EnsembleConfig,
    EpochRecord,
    FitReport,
    HybridConfig,
    IALSConfig,
    ImageEncoder,
    ItemKNNConfig,
    MFConfig,
    PinlabModelError,
    PopularityConfig,
    Recipe,
    RecipeConfig,
    Recommender,
    RP3BetaConfig,
    SASRecConfig,
    Scorer,
    TrainContext,
    TwoTowerConfig,
    Validator,
)
from pinlab_models.registry import (
    RecommenderSpec,
    build_recommender,
    load_recommender,
    recommender_names,
    recommender_spec,
    register,
)

__all__ = [
    "AlignConfig",
    "BPRConfig",
    "CNNEncoder",
    "DLAEConfig",
    "Device",
    "EASEConfig",
    "EncoderConfig",
    "Ensemble",
    "EnsembleConfig",
    "EpochRecord",
    "FitReport",
    "HybridConfig",
    "HybridRecommender",
    "IALSConfig",
    "ImageEncoder",
    "ImageTextModel",
    "ImplicitALS",
    "ItemItem",
    "ItemKNNConfig",
    "MFConfig",
    "MatrixFactorization",
    "PinlabModelError",
    "Popularity",
    "PopularityConfig",
    "ProxyAnchorLoss",
    "RP3BetaConfig",
    "Recipe",
    "RecipeConfig",
    "Recommender",
    "RecommenderSpec",
    "SASRec",
    "SASRecConfig",
    "Scorer",
    "TextEncoder",
    "TrainContext",
    "TwoTower",
    "TwoTowerConfig",
    "Validator",
    "augment",
    "build_network",
    "build_recommender",
    "builtin_archs",
    "check_arch",
    "interaction_matrix",
    "load_image_text_model",
    "load_recommender",
    "nt_xent_loss",
    "product_augment",
    "recommender_names",
    "recommender_spec",
    "register",
    "register_encoder_arch",
    "resolve_device",
    "seed_everything",
    "supcon_loss",
    "train_alignment",
    "train_encoder",
    "train_with_recipe",
    "zero_shot_labels",
]
